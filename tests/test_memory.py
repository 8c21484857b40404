"""Memory options end to end (docs/guides/scale-out.md#memory-batch-length-vocabulary): a run with tiny forward
micro-batches and logit chunks logs the same metrics as the run that takes everything at once; with
rollout.exact_kl false the exact-KL/entropy metrics are absent (not zero) while the fixed-prompt samples
still carry them; bad sizes are one-line errors."""

import pytest

from policyshift import PPOConfig, PPOTrainer
from policyshift.cli import main
from policyshift.config import ConfigError, validate
from tiny import rows

EXACT_KEYS = ("kl/exact_token_mean", "kl/exact_seq_mean", "policy/entropy", "loss/entropy")


def config(world, out, rollout=(), **sections):
    base = {
        "model": {"policy": world["policy"]},
        "data": {"prompts": world["prompts"]},
        "reward": {"function": "tiny:good_fraction"},
        "rollout": {"batch_size": 8, "max_new_tokens": 8, **dict(rollout)},
        "ppo": {"lr": 3e-3, "num_minibatches": 2, "grad_accum_steps": 2, "epochs": 2},
        "analysis": {"every": 2, "num_prompts": 3},
        "train": {"steps": 2, "output_dir": str(out), "save_every": 0, "seed": 0},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return PPOConfig.from_dict(base)


@pytest.mark.parametrize("model", [{}, {"share_critic_backbone": True}], ids=["critic", "shared_backbone"])
def test_chunked_run_logs_the_same_metrics_as_the_unchunked_one(tiny_world, tmp_path, model):
    ppo = {"ent_coef": 0.01}  # the entropy bonus: its gradient goes through the chunked path too
    whole = PPOTrainer(config(tiny_world, tmp_path / "whole", model=model, ppo=ppo)).train()
    small = {"forward_batch_size": 3, "logit_chunk_size": 5}  # uneven on purpose: last micro-batch 2 rows, chunks straddle rows
    chunked = PPOTrainer(config(tiny_world, tmp_path / "chunked", rollout=small, model=model, ppo=ppo)).train()
    assert len(whole) == len(chunked) == 2
    for a, b in zip(whole, chunked):
        assert set(a) == set(b)
        for key in a:
            # value/clip_frac counts err_clipped > err_unclipped, which for an unclipped token compares
            # old + (new − old) with new: a float-rounding tie that 1e-8 changes in the weights flip
            if not key.startswith(("time/", "perf/")) and key != "value/clip_frac":
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
    assert all(k in whole[-1] for k in EXACT_KEYS) and whole[-1]["kl/exact_token_mean"] > 0
    samples = [r for r in rows(tmp_path / "chunked" / "samples.jsonl")]
    assert [r["response"] for r in samples] == [r["response"] for r in rows(tmp_path / "whole" / "samples.jsonl")]


def test_exact_kl_off_drops_its_metrics_but_not_the_probes(tiny_world, tmp_path):
    history = PPOTrainer(config(tiny_world, tmp_path / "run", rollout={"exact_kl": False})).train()
    for record in history:
        assert not set(EXACT_KEYS) & set(record)
        assert "kl/k3_token_mean" in record and "loss/policy" in record
    samples = rows(tmp_path / "run" / "samples.jsonl")
    assert {r["step"] for r in samples} == {0, 2}
    assert all(r["seq_exact_kl"] > -1e-6 and r["entropy_mean"] > 0 for r in samples)  # step 0: the reference against itself, 0 up to rounding
    assert any(r["seq_exact_kl"] > 0 for r in samples if r["step"] == 2)  # the policy moved away from the reference


@pytest.mark.parametrize("field, value, message", [
    ("forward_batch_size", 0, "rollout.forward_batch_size must be in [1, rollout.batch_size = 8] or null; got 0"),
    ("forward_batch_size", -2, "rollout.forward_batch_size must be in [1, rollout.batch_size = 8] or null; got -2"),
    ("forward_batch_size", 9, "rollout.forward_batch_size must be in [1, rollout.batch_size = 8] or null; got 9"),
    ("logit_chunk_size", 0, "rollout.logit_chunk_size must be in [1, rollout.batch_size × max_new_tokens = 64] or null; got 0"),
    ("logit_chunk_size", 65, "rollout.logit_chunk_size must be in [1, rollout.batch_size × max_new_tokens = 64] or null; got 65"),
])
def test_bad_sizes_are_one_line_config_errors(tiny_world, tmp_path, field, value, message):
    with pytest.raises(ConfigError) as err:
        validate(config(tiny_world, tmp_path, rollout={field: value}))
    assert str(err.value) == message
    validate(config(tiny_world, tmp_path, rollout={field: 8}))  # the boundary is fine


def test_bad_size_on_the_command_line(tiny_world, tmp_path, capsys):
    argv = ["train", "--model.policy", tiny_world["policy"], "--data.prompts", tiny_world["prompts"], "--reward.function", "tiny:good_fraction",
            "--rollout.batch_size", "4", "--rollout.logit_chunk_size", "0", "--train.output_dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1] == "policyshift train: error: rollout.logit_chunk_size must be in [1, rollout.batch_size × max_new_tokens = 192] or null; got 0"
    assert not any("Traceback" in line for line in err)


@pytest.mark.slow
def test_chunks_under_zero3_equal_ddp(tiny_world, tmp_path):
    """ZeRO-3 all-gathers the LM head's weight at every call: with several logit chunks and different real
    token counts per process, each process must still make the same number of calls (agreed_chunk_count),
    else the run deadlocks. Step 1 equals DDP's with the same chunks."""
    pytest.importorskip("deepspeed")
    from test_distributed import launch, write_config
    from test_sharded import ARGS, COMPARED, close, sharded_launch

    # 2 steps (of write_config's 4): step 1's rollout, update and probes already make the calls whose counts differ per process
    chunks = ["--rollout.logit_chunk_size", "3", "--rollout.forward_batch_size", "2", "--train.steps", "2"]
    config = write_config(tiny_world, tmp_path / "config.yaml", tmp_path / "unused")
    ddp = launch("--config", str(config), "--train.output_dir", str(tmp_path / "ddp"), *ARGS, *chunks)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    zero3 = sharded_launch("zero3", "--config", str(config), "--train.output_dir", str(tmp_path / "zero3"), *ARGS, *chunks)
    assert zero3.returncode == 0, zero3.stderr[-4000:]
    a, b = rows(tmp_path / "ddp" / "metrics.jsonl"), rows(tmp_path / "zero3" / "metrics.jsonl")
    assert len(a) == len(b) == 2
    assert not close(a[0], b[0], COMPARED, rel=1e-4), close(a[0], b[0], COMPARED, rel=1e-4)
