import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A saved tokenizer, policy (2-layer GPT-2) and prompt file shared by the tests."""
    root = tmp_path_factory.mktemp("world")
    tok = tiny.make_tokenizer(root / "policy")
    tiny.make_policy(root / "policy", tok)
    prompts = tiny.write_prompts(root / "prompts.jsonl")
    return {"root": root, "policy": str(root / "policy"), "prompts": str(prompts), "tokenizer": tok}
