"""Reliability: a run killed (SIGKILL) at any point and resumed gives the same metrics as an
uninterrupted run; checkpoints are atomic; signals stop cleanly; non-finite values never reach
the weights; a full disk leaves the previous checkpoint intact."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from policyshift import PPOConfig, PPOTrainer
from policyshift.checkpoint import CheckpointError, list_checkpoints
from policyshift.cli import main
from tiny import assert_same_metrics, cli, cli_env, rows


def write_config(world, tmp_path, steps=6) -> Path:
    cfg = {
        "model": {"policy": world["policy"]}, "data": {"prompts": world["prompts"]},
        "reward": {"function": "tiny:good_fraction", "normalize": True},  # running moments must resume too
        "rollout": {"batch_size": 8, "max_new_tokens": 8},
        "ppo": {"lr": 3e-3, "num_minibatches": 2},
        "kl": {"controller": "adaptive", "target": 1.0, "horizon": 50},  # and β
        "analysis": {"every": 3, "num_prompts": 2},
        "train": {"steps": steps, "save_every": 2, "keep_last_n": 2, "num_threads": 1},
        "tracking": {"tensorboard": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# Only the killed runs are subprocesses (a SIGKILL ends the process it hits); the uninterrupted and the resumed runs
# go through the same `policyshift train` in this process: a subprocess costs ~12 CPU s of imports for a run of ~1 s.
@pytest.fixture(scope="module")
def reference_run(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    config = write_config(tiny_world, tmp)
    assert main(["train", "--config", str(config), "--train.output_dir", str(tmp / "run")]) == 0
    return config, tmp / "run"


@pytest.mark.parametrize("fault,resumes_from", [
    ("kill_after_step:3", "step-2"),  # between checkpoints: step 3's logs must be cut back
    ("kill_in_update:5", "step-4"),  # in the middle of an optimizer pass
    ("kill_in_checkpoint:4", "step-2"),  # while step-4 is being written: step-2 must still be whole
    ("kill_in_manifest:4", "step-2"),  # step-4's files written, its manifest not yet: step-4 does not count
])
def test_killed_and_resumed_run_matches_uninterrupted(reference_run, tmp_path, capfd, fault, resumes_from):
    config, ref = reference_run
    out = tmp_path / "run"
    killed = cli("--config", str(config), "--train.output_dir", str(out), fault=fault)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(out)][-1] == resumes_from
    capfd.readouterr()
    code = main(["train", "--resume", str(out)])
    err = capfd.readouterr().err
    assert code == 0, err[-3000:]
    assert f"from {resumes_from}" in err
    assert_same_metrics(rows(ref / "metrics.jsonl"), rows(out / "metrics.jsonl"))
    same = lambda p: [(r["step"], r["prompt_id"], r["response"]) for r in rows(p)]  # noqa: E731
    assert same(ref / "samples.jsonl") == same(out / "samples.jsonl")
    assert [r["step"] for r in rows(out / "distributions.jsonl")] == list(range(1, 7))
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the torn write was cleaned up by the next save
    assert (out / "final" / "config.json").is_file()


def test_sigterm_finishes_the_step_checkpoints_and_resumes(tiny_world, tmp_path, capsys):
    config = write_config(tiny_world, tmp_path, steps=400)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "policyshift", "train", "--config", str(config), "--train.output_dir", str(out)],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3):
        time.sleep(0.1)
    # while it runs, the directory is its own: a second process gets one line naming the owner
    assert main(["train", "--resume", str(out)]) == 2
    assert f"is in use by process {proc.pid} on " in capsys.readouterr().err.strip().splitlines()[-1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    steps = [r["step"] for r in rows(out / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 400
    assert list_checkpoints(out)[-1].name == f"step-{steps[-1]}"  # the stop wrote a checkpoint of its last step
    assert not (out / "final").exists()
    assert not (out / ".policyshift.lock").exists()  # released by the process that held it
    assert main(["train", "--resume", str(out), "--train.steps", str(steps[-1] + 2)]) == 0, capsys.readouterr().err[-2000:]
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == list(range(1, steps[-1] + 3))


def test_existing_run_is_refused_without_resume_or_overwrite(reference_run, capsys):
    config, ref = reference_run
    assert main(["train", "--config", str(config), "--train.output_dir", str(ref)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0] and "--resume" in err[0]


def test_resume_without_checkpoint_is_refused(tiny_world, tmp_path):
    from policyshift.rundir import RunDirError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "samples.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(RunDirError, match="has no checkpoint to resume from; start it again without resume"):
        PPOTrainer(small_config(tiny_world, tmp_path / "run"), resume=True)


def small_config(world, out, **train):
    return PPOConfig.from_dict({
        "model": {"policy": world["policy"]}, "data": {"prompts": world["prompts"]},
        "reward": {"function": "tiny:good_fraction"}, "rollout": {"batch_size": 8, "max_new_tokens": 6},
        "ppo": {"num_minibatches": 2}, "analysis": {"num_prompts": 0}, "tracking": {"tensorboard": False},
        "train": {"steps": 3, "save_every": 1, "output_dir": str(out), **train}})


def test_disk_full_during_checkpoint_keeps_the_previous_one(tiny_world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLICYSHIFT_FAULT", "disk_full_in_checkpoint:2")
    with pytest.raises(CheckpointError, match="step-1 is intact"):
        PPOTrainer(small_config(tiny_world, tmp_path / "run")).train()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-1"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    # through the CLI: one line, exit 2
    code = main(["train", "--config", str(write_config(tiny_world, tmp_path)), "--train.output_dir", str(tmp_path / "run2")])
    assert code == 2 and "No space left on device" in capsys.readouterr().err.strip().splitlines()[-1]


def test_nonfinite_gradients_never_reach_the_weights(tiny_world, tmp_path):
    trainer = PPOTrainer(small_config(tiny_world, tmp_path / "run", max_consecutive_skips=1000))
    before = [p.detach().clone() for p in trainer.models.parameters()]
    real_forward = trainer.models.forward

    def poisoned(*args, **kwargs):  # NaN values → NaN value loss → NaN gradients everywhere
        logprobs, entropy, values = real_forward(*args, **kwargs)
        return logprobs, entropy, values * float("nan")

    trainer.models.forward = poisoned
    metrics = trainer.ppo_step()
    assert metrics["optim/skipped_updates"] == 4 * 2  # every minibatch of every epoch skipped
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.models.parameters()))
    trainer.cfg.train.max_consecutive_skips = 3
    from policyshift.trainer import TrainingError

    with pytest.raises(TrainingError, match="consecutive updates had a non-finite"):
        trainer.ppo_step()


def test_nonfinite_reward_skip_drops_the_episode(tiny_world, tmp_path):
    calls = []

    def sometimes_nan(prompts, responses):
        calls.append(len(prompts))
        return [float("nan") if i == 0 else 1.0 for i in range(len(prompts))]

    cfg = small_config(tiny_world, tmp_path / "run", save_every=0)
    cfg.reward.on_nonfinite = "skip"
    h = PPOTrainer(cfg, reward=sometimes_nan).train()
    assert [r["reward/nonfinite_skipped"] for r in h] == [1, 1, 1]
    assert all(r["reward/score_mean"] == 1.0 for r in h)
    cfg2 = small_config(tiny_world, tmp_path / "run2", save_every=0)  # default: error, naming the sample
    from policyshift.rewards import RewardError

    with pytest.raises(RewardError, match="non-finite reward"):
        PPOTrainer(cfg2, reward=sometimes_nan).train()
