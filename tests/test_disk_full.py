"""Disk full (ENOSPC) during a checkpoint and during a metrics write: one line (exit 2), the run directory stays
resumable, and the resumed run equals the uninterrupted one (metrics and final weights)."""

import errno
import os

import pytest
import torch
import yaml
from safetensors.torch import load_file

from policyshift.cli import main
from policyshift.rundir import run_state
from tiny import assert_same_metrics, rows


def write_config(world, tmp_path, out):
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"policy": world["policy"]}, "data": {"prompts": world["prompts"]},
        "reward": {"function": "tiny:good_fraction"}, "rollout": {"batch_size": 8, "max_new_tokens": 6},
        "ppo": {"num_minibatches": 2}, "analysis": {"num_prompts": 2, "every": 2}, "tracking": {"tensorboard": True},
        "train": {"steps": 4, "save_every": 1, "output_dir": str(out)}}))
    return path


@pytest.fixture(scope="module")
def reference(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    assert main(["train", "--config", str(write_config(tiny_world, tmp, tmp / "ref"))]) == 0
    return tmp / "ref"


def assert_same_run(ref, run):
    assert_same_metrics(rows(ref / "metrics.jsonl"), rows(run / "metrics.jsonl"))
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def resume_and_compare(ref, run, capsys):
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert run_state(run).kind == "finished"
    assert_same_run(ref, run)


def test_disk_full_during_a_metrics_write(tiny_world, tmp_path, reference, capsys, monkeypatch):
    import policyshift.tracking.jsonl as jsonl

    real = jsonl.append_jsonl

    def torn_then_full(path, row):  # the disk fills in the middle of step 3's metrics line
        if path.name == "metrics.jsonl" and row.get("step") == 3:
            with open(path, "a") as f:
                f.write('{"step": 3, "reward/sco')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, row)

    monkeypatch.setattr(jsonl, "append_jsonl", torn_then_full)
    run = tmp_path / "run"
    assert main(["train", "--config", str(write_config(tiny_world, tmp_path, run))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "resumable from step-2" in err[-1], err[-1]
    assert not any("warning" in line and "jsonl" in line for line in err)  # not disabled and trained on without a record
    assert run_state(run).kind == "resumable" and run_state(run).step == 2
    monkeypatch.setattr(jsonl, "append_jsonl", real)
    resume_and_compare(reference, run, capsys)


def test_disk_full_during_a_metrics_write_through_the_fault_hook(tiny_world, tmp_path, reference, capsys, monkeypatch):
    monkeypatch.setenv("POLICYSHIFT_FAULT", "disk_full_in_metrics:2")
    run = tmp_path / "run"
    assert main(["train", "--config", str(write_config(tiny_world, tmp_path, run))]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("policyshift train: error: ") and "No space left on device" in line and "step-1" in line, line
    monkeypatch.delenv("POLICYSHIFT_FAULT")
    resume_and_compare(reference, run, capsys)


def test_disk_full_during_a_checkpoint(tiny_world, tmp_path, reference, capsys, monkeypatch):
    monkeypatch.setenv("POLICYSHIFT_FAULT", "disk_full_in_checkpoint:3")
    run = tmp_path / "run"
    assert main(["train", "--config", str(write_config(tiny_world, tmp_path, run))]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device" in line and "step-2 is intact" in line, line
    assert run_state(run).kind == "resumable" and not list((run / "checkpoints").glob(".tmp-*"))
    monkeypatch.delenv("POLICYSHIFT_FAULT")
    resume_and_compare(reference, run, capsys)


def test_disk_full_before_the_first_checkpoint_leaves_nothing(tiny_world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POLICYSHIFT_FAULT", "disk_full_in_checkpoint:1")
    run = tmp_path / "run"
    assert main(["train", "--config", str(write_config(tiny_world, tmp_path, run))]) == 2
    assert "No space left on device" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not run.exists()
