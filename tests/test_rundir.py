"""The run directory: one owner (a lock that a dead process does not hold), one state (fresh,
started, resumable, finished) that decides what start/resume/overwrite do; overwrite removes what a
run writes and only that; a run that died before its first checkpoint can be run again."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from policyshift import PPOTrainer
from policyshift.cli import main
from policyshift.manifest import MANIFEST
from policyshift.rundir import LOCK, RunDirError, RunLock, prepare_run_dir, run_state
from test_integrity import run_config
from tiny import rows


def fake_run(path, final=True, step=3):
    """The files a run writes (content irrelevant here), plus a user's own files that must survive."""
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "distributions.jsonl", "findings.jsonl", "report.html", "tracking.json"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("x\n")
    (path / "checkpoints" / f"step-{step}").mkdir(parents=True)
    (path / "checkpoints" / f"step-{step}" / "trainer_state.json").write_text(json.dumps({"step": step}))
    (path / "checkpoints" / f"step-{step}" / MANIFEST).write_text("{}")
    (path / "tb").mkdir()
    if final:
        (path / "final").mkdir()
        (path / "final" / MANIFEST).write_text("{}")
    (path / "notes.txt").write_text("mine")
    (path / "data").mkdir()
    (path / "data" / "prompts.jsonl").write_text("{}\n")


def test_states(tmp_path):
    assert run_state(tmp_path).kind == "fresh"
    (tmp_path / "config.yaml").write_text("x")  # a user's config kept in the directory is not a run
    assert run_state(tmp_path).kind == "fresh"
    (tmp_path / "samples.jsonl").write_text("x")
    assert run_state(tmp_path).kind == "started"
    fake_run(tmp_path / "r", final=False)
    assert (run_state(tmp_path / "r").kind, run_state(tmp_path / "r").step) == ("resumable", 3)
    (tmp_path / "r" / "final").mkdir()  # final/ without its manifest: killed while writing it
    assert run_state(tmp_path / "r").kind == "resumable"
    (tmp_path / "r" / "final" / MANIFEST).write_text("{}")
    assert run_state(tmp_path / "r").kind == "finished"


def test_overwrite_removes_what_a_run_writes_and_only_that(tmp_path):
    fake_run(tmp_path)
    with pytest.raises(RunDirError, match=r"already holds a run \(finished at step 3\); use --resume .* --train.overwrite true"):
        prepare_run_dir(tmp_path, overwrite=False)
    assert (tmp_path / "final").is_dir()  # refused: nothing changed
    prepare_run_dir(tmp_path, overwrite=True).release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "notes.txt"]
    assert (tmp_path / "data" / "prompts.jsonl").is_file()


def test_a_run_that_died_before_its_first_checkpoint_starts_over(tmp_path):
    (tmp_path / "samples.jsonl").write_text('{"step": 0}\n')
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="has no checkpoint to resume from"):
        prepare_run_dir(tmp_path, overwrite=False, resume=True)
    with pytest.warns(UserWarning, match="stopped before its first checkpoint; starting it over"):
        prepare_run_dir(tmp_path, overwrite=False).release()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_empty_output_dir_is_refused(tmp_path, capsys, tiny_world, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunDirError, match="train.output_dir is empty"):
        prepare_run_dir("", overwrite=False)
    code = main(["train", "--model.policy", tiny_world["policy"], "--data.prompts", tiny_world["prompts"],
                 "--reward.function", "tiny:good_fraction", "--train.output_dir", ""])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "policyshift train: error: train.output_dir is empty; name the directory the run writes to"
    assert list(tmp_path.iterdir()) == []


def test_lock_blocks_a_live_owner_and_not_a_dead_one(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from policyshift.rundir import _process_start

        deadline = time.time() + 10
        while _process_start(sleeper.pid) is None and time.time() < deadline:
            time.sleep(0.05)
        (tmp_path / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "start": _process_start(sleeper.pid)}))
        with pytest.raises(RunDirError, match=f"is in use by process {sleeper.pid} on"):
            prepare_run_dir(tmp_path, overwrite=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = prepare_run_dir(tmp_path, overwrite=False)  # its owner is dead: the lock is stale
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK).exists()
    # a reused pid: a live process (pid 1) that started at another time than the lock's owner
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "start": "not-its-start-time"}))
    RunLock(tmp_path).acquire().release()


@pytest.fixture(scope="module")
def finished(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("rundir") / "run"
    trainer = PPOTrainer(run_config(tiny_world, out, steps=2))
    trainer.train()
    trainer.close()
    trainer.run_lock.release()
    return out


def snapshot(path):
    return {str(p): p.stat().st_mtime_ns for p in path.rglob("*")}


def test_finished_run_asked_for_fewer_or_equal_steps_changes_nothing(finished, capsys):
    assert run_state(finished).kind == "finished"
    before = snapshot(finished)
    assert main(["train", "--resume", str(finished), "--train.steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"policyshift train: error: {finished} is already at step 2; train.steps 1 would go back; "
                   "nothing changed (pass --train.steps N with N > 2 to extend it)"]
    assert main(["train", "--resume", str(finished)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{finished} is finished at step 2; nothing changed (pass --train.steps N with N > 2 to extend it)")
    assert snapshot(finished) == before
    assert not (finished / LOCK).exists()


def test_finished_run_extended_with_more_steps(finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert main(["train", "--resume", "auto", "--config", str(run / "config.yaml"), "--train.output_dir", str(run), "--train.steps", "3"]) == 0
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((run / "final" / MANIFEST).read_text())["files"]
    assert run_state(run).kind == "finished" and run_state(run).step == 3
    assert not (run / LOCK).exists()


def test_crash_before_the_first_checkpoint_then_resume_auto_and_resume_dir(tiny_world, tmp_path, capsys, monkeypatch):
    (tmp_path / "nan_reward.py").write_text("def reward(prompts, responses):\n    return [float('nan')] * len(responses)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    args = ["train", "--model.policy", tiny_world["policy"], "--data.prompts", tiny_world["prompts"], "--rollout.batch_size", "4",
            "--rollout.max_new_tokens", "4", "--analysis.num_prompts", "2", "--train.steps", "2", "--train.output_dir", str(run)]
    assert main(args + ["--reward.function", "nan_reward:reward"]) == 2  # dies at step 1, after the step-0 samples
    assert not run.exists()  # an error before the first checkpoint leaves the output directory as it was (here: absent)
    # a kill cannot clean up: the run directory is "started"
    from tiny import cli

    killed = cli(*args[1:], "--reward.function", "tiny:good_fraction", fault="kill_after_step:1")
    assert killed.returncode == -9 and run_state(run).kind == "started" and rows(run / "samples.jsonl")
    capsys.readouterr()
    assert main(args + ["--reward.function", "tiny:good_fraction", "--resume", "auto"]) == 0
    assert "stopped before its first checkpoint; starting it over" in capsys.readouterr().err
    assert [r["step"] for r in rows(run / "samples.jsonl")].count(0) == 2  # one reference sample per fixed prompt, not two runs' worth
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2]
    # --resume RUN_DIR on a run that never checkpointed starts it again too
    (run / "checkpoints").rename(tmp_path / "gone")
    (run / "final").rename(tmp_path / "gone-final")
    assert main(["train", "--resume", str(run)]) == 0
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2]


def test_lock_without_hard_links(tmp_path, monkeypatch):
    """Filesystems without hard links: the lock is created exclusively and still excludes a live owner."""
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "links not supported")

    monkeypatch.setattr(os, "link", no_links)
    lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "another-machine", "start": None}))
    with pytest.raises(RunDirError, match="in use by process 1 on another-machine"):
        RunLock(tmp_path).acquire()
