import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402
import torch  # noqa: E402

_TORCH_DEFAULTS = (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled())


@pytest.fixture(autouse=True)
def torch_globals_restored():
    """Process-wide torch settings a test changes go back after it: an in-process run with `train.num_threads` sets
    the thread count for the whole worker, and a later test's training then sums in another order (a 30-step RL
    run amplifies that 1-ulp difference into another outcome; the tests must not depend on which file ran before)."""
    yield
    # back to the worker's defaults, not to what this test found: a module-scoped fixture's run sets them before it
    torch.set_num_threads(_TORCH_DEFAULTS[0])
    torch.set_default_dtype(_TORCH_DEFAULTS[1])
    torch.set_grad_enabled(_TORCH_DEFAULTS[2])


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A saved tokenizer, policy (2-layer GPT-2) and prompt file shared by the tests."""
    root = tmp_path_factory.mktemp("world")
    tok = tiny.make_tokenizer(root / "policy")
    tiny.make_policy(root / "policy", tok)
    prompts = tiny.write_prompts(root / "prompts.jsonl")
    return {"root": root, "policy": str(root / "policy"), "prompts": str(prompts), "tokenizer": tok}


@pytest.fixture(scope="session")
def ddp_run_saved_every_step(tiny_world, tmp_path_factory):
    """An uninterrupted 2-process run of tests/test_distributed.py's config with a checkpoint at every step (one
    launch for two files, read only): tests/test_rank_kill.py's reference, and tests/test_integrity.py damages a copy."""
    from test_distributed import launch, write_config

    tmp = tmp_path_factory.mktemp("ddp_every_step")
    done = launch("--config", str(write_config(tiny_world, tmp / "config.yaml", tmp / "run")), "--train.save_every", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "run"
