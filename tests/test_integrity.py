"""Checkpoint integrity: every checkpoint and final/ carry a manifest (sizes + SHA-256) written last;
a resume verifies the newest checkpoint and falls back, naming the bad file, to the newest one that
verifies; none intact → one line, exit 2; old checkpoints without a manifest resume after a load
check; `policyshift verify RUN_DIR` checks without training."""

import json
import os
import shutil
import warnings

import pytest

from policyshift import PPOConfig, PPOTrainer
from policyshift.checkpoint import CheckpointError, list_checkpoints, restore_newest_intact
from policyshift.cli import main
from policyshift.manifest import MANIFEST, IntegrityError, check_dir, verify_manifest, write_manifest
from tiny import rows


# ---- the manifest on its own ------------------------------------------------------------------------
def test_manifest_lists_every_file_and_detects_each_change(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub" / "b.json").write_text("{}")
    write_manifest(tmp_path)
    listed = json.loads((tmp_path / MANIFEST).read_text())["files"]
    # sha256("abc"): the FIPS 180-2 test vector
    assert listed["a.bin"] == {"size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    assert set(listed) == {"a.bin", "sub/b.json"}
    assert verify_manifest(tmp_path) == 2
    (tmp_path / "a.bin").write_bytes(b"abd")  # same size, other bytes
    with pytest.raises(IntegrityError, match="a.bin does not match its SHA-256"):
        verify_manifest(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"ab")
    with pytest.raises(IntegrityError, match="a.bin has 2 bytes, the manifest says 3"):
        verify_manifest(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "extra.pt").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="extra.pt is not in the manifest"):
        verify_manifest(tmp_path)
    (tmp_path / "extra.pt").unlink()
    (tmp_path / "sub" / "b.json").unlink()
    with pytest.raises(IntegrityError, match="b.json is missing"):
        verify_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(IntegrityError, match="manifest.json is unreadable"):
        verify_manifest(tmp_path)


# ---- a real run's checkpoints -----------------------------------------------------------------------
def run_config(world, out, steps=3, **train):
    return PPOConfig.from_dict({
        "model": {"policy": world["policy"]}, "data": {"prompts": world["prompts"]},
        "reward": {"function": "tiny:good_fraction"}, "rollout": {"batch_size": 8, "max_new_tokens": 6},
        "ppo": {"num_minibatches": 2, "lr": 3e-3}, "analysis": {"num_prompts": 0}, "tracking": {"tensorboard": False},
        "train": {"steps": steps, "save_every": 1, "keep_last_n": 5, "output_dir": str(out), "num_threads": 1, **train}})


@pytest.fixture(scope="module")
def finished_run(tiny_world, tmp_path_factory):
    """3 steps, a checkpoint after each: step-1, step-2, step-3 and final/."""
    out = tmp_path_factory.mktemp("integrity") / "run"
    trainer = PPOTrainer(run_config(tiny_world, out))
    trainer.train()
    trainer.close()
    return out


def test_every_checkpoint_and_final_carry_a_manifest_of_all_their_files(finished_run):
    for d in [*list_checkpoints(finished_run), finished_run / "final"]:
        assert check_dir(d) == (len(json.loads((d / MANIFEST).read_text())["files"]), True)
    listed = json.loads((finished_run / "checkpoints" / "step-3" / MANIFEST).read_text())["files"]
    for name in ("trainer_state.json", "optimizer.pt", "rng.pt", "policy/model.safetensors", "policy/config.json"):
        assert name in listed


def flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 64, len(data) - 32):  # inside the tensor data, past the safetensors header
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated weights": ("policy/model.safetensors", truncate),
    "flipped bytes in the weights": ("policy/model.safetensors", flip_bytes),
    "rng.pt deleted": ("rng.pt", lambda p: p.unlink()),
    "invalid JSON in trainer_state.json": ("trainer_state.json", lambda p: p.write_text("{ not json")),
    "random bytes in optimizer.pt": ("optimizer.pt", lambda p: p.write_bytes(os.urandom(p.stat().st_size))),
    "another checkpoint's weights copied in": ("policy/model.safetensors",
                                               lambda p: shutil.copy(p.parents[2] / "step-1" / "policy" / "model.safetensors", p)),
}


def damaged_copy(finished_run, tmp_path, step, name, how):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    how(run / "checkpoints" / f"step-{step}" / name)
    return run


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_falls_back_to_the_newest_intact_checkpoint(finished_run, tiny_world, tmp_path, case):
    name, how = DAMAGE[case]
    run = damaged_copy(finished_run, tmp_path, 3, name, how)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = PPOTrainer(run_config(tiny_world, run, steps=4), resume=True)
    damaged = [str(w.message) for w in caught if "is damaged" in str(w.message)]
    assert len(damaged) == 1 and name in damaged[0] and "step-3" in damaged[0], damaged
    assert trainer.resumed_from.name == "step-2" and trainer.step == 2
    assert (run / "checkpoints" / "damaged-step-3").is_dir()  # kept for inspection, out of the way of the next save
    trainer.train()
    trainer.close()
    # the fallback continued the same run: steps 3 and 4 redone from step-2 reproduce the original step 3
    original, resumed = rows(finished_run / "metrics.jsonl"), rows(run / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert resumed[2]["reward/score_mean"] == pytest.approx(original[2]["reward/score_mean"], abs=1e-6)
    assert check_dir(run / "checkpoints" / "step-3")[1]


def test_no_intact_checkpoint_is_one_line_and_exit_2(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for ckpt in list_checkpoints(run):
        (ckpt / "rng.pt").unlink()
    code = main(["train", "--resume", str(run), "--train.steps", "5"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(err) == 1, err
    assert "no checkpoint in" in err[0] and "is intact (3 checked; newest:" in err[0] and "step-3/rng.pt is missing" in err[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2", "step-3"]  # nothing moved


def test_checkpoint_without_manifest_resumes_after_a_load_check(finished_run, tiny_world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for ckpt in list_checkpoints(run):
        (ckpt / MANIFEST).unlink()
    truncate(run / "checkpoints" / "step-3" / "policy" / "model.safetensors")  # a legacy checkpoint damaged: caught by loading
    with pytest.warns(UserWarning) as caught:
        trainer = PPOTrainer(run_config(tiny_world, run, steps=4), resume=True)
    messages = [str(w.message) for w in caught]
    assert any("step-3/policy/model.safetensors does not load" in m for m in messages), messages
    assert any("step-2 has no manifest" in m and "files load" in m for m in messages), messages
    assert trainer.resumed_from.name == "step-2"
    trainer.close()


def test_a_verified_checkpoint_that_does_not_fit_the_model_is_named_not_skipped(finished_run, tiny_world, tmp_path):
    import tiny

    wider = tmp_path / "wider"
    tiny.make_policy(wider, tiny_world["tokenizer"], n_embd=64)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = run_config(tiny_world, run, steps=4)
    cfg.model.policy = str(wider)
    with pytest.raises(CheckpointError, match="step-3 does not load .*size mismatch.*its files are intact"):
        PPOTrainer(cfg, resume=True)


class OtherProcessFails:
    """A 2-process group seen from the main process: the other process cannot load step-3 (its
    answer is appended to every gather; from_main reads element 0, the main process's)."""

    world_size, is_main, loading = 2, True, None

    def gather_objects(self, items):
        return items + ["step-3 does not load on process 1" if self.loading == "step-3" else None]


def test_a_load_error_on_any_process_rejects_the_checkpoint_for_all(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    group = OtherProcessFails()
    tried = []

    def restore(ckpt):
        tried.append(ckpt.name)
        group.loading = ckpt.name
        return {"step": int(ckpt.name.split("-")[1])}

    # files that verify but do not load somewhere: not damage, the same error on every process
    with pytest.raises(CheckpointError, match="step-3 does not load on process 1; its files are intact"):
        restore_newest_intact(run, restore, group)
    for ckpt in list_checkpoints(run):  # without manifests a load error is all there is: fall back
        (ckpt / MANIFEST).unlink()
    tried.clear()
    with pytest.warns(UserWarning, match="step-3 is damaged: step-3 does not load on process 1"):
        ckpt, state = restore_newest_intact(run, restore, group)
    assert tried == ["step-3", "step-2"] and ckpt.name == "step-2" and state == {"step": 2}


# ---- policyshift verify -----------------------------------------------------------------------------
def test_verify_command_checks_every_checkpoint_and_final(finished_run, tmp_path, capsys):
    assert main(["verify", str(finished_run)]) == 0
    out = capsys.readouterr().out
    for name in ("step-1", "step-2", "step-3", "final"):
        assert f"{name}: ok" in out, out
    run = damaged_copy(finished_run, tmp_path, 2, "optimizer.pt", lambda p: p.write_bytes(os.urandom(p.stat().st_size)))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["verify", str(run)]) == 2
    captured = capsys.readouterr()
    assert "step-2: DAMAGED" in captured.out and "step-3: ok" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "1 of 4" in err[0] and "step-2/optimizer.pt does not match" in err[0]
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*")}  # verify changes nothing
    assert main(["verify", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_critic_free_checkpoints_list_what_exists_and_fall_back(tiny_world, tmp_path):
    """A critic-free estimator saves no critic/: the manifest lists the files there are, nothing assumed."""
    cfg = run_config(tiny_world, tmp_path / "run", steps=2)
    cfg.algorithm.advantage, cfg.rollout.num_generations = "grpo", 2
    trainer = PPOTrainer(cfg)
    trainer.train()
    trainer.close()
    listed = json.loads((tmp_path / "run" / "checkpoints" / "step-2" / MANIFEST).read_text())["files"]
    assert not any(name.startswith("critic/") for name in listed) and "policy/model.safetensors" in listed
    (tmp_path / "run" / "checkpoints" / "step-2" / "rng.pt").unlink()
    cfg.train.steps = 3
    with pytest.warns(UserWarning, match="step-2 is damaged: .*step-2/rng.pt is missing"):
        resumed = PPOTrainer(cfg, resume=True)
    assert resumed.resumed_from.name == "step-1"
    resumed.close()


def test_a_manifest_that_cannot_be_written_fails_the_save_and_keeps_the_previous_checkpoint(tiny_world, tmp_path, monkeypatch):
    """The manifest is written in the background: its failure (disk full) surfaces at the next wait —
    here the end of train() — as one CheckpointError naming the intact previous checkpoint."""
    import errno

    import policyshift.checkpoint as checkpoint

    real = checkpoint.write_manifest

    def full_at_step_2(root):
        if root.name == ".tmp-step-2":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(root)

    monkeypatch.setattr(checkpoint, "write_manifest", full_at_step_2)
    trainer = PPOTrainer(run_config(tiny_world, tmp_path / "run", steps=2))
    with pytest.raises(CheckpointError, match="cannot write checkpoint step-2 .*No space left on device.*; step-1 is intact"):
        trainer.train()
    trainer.close()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-1"]


@pytest.mark.slow
def test_two_processes_agree_on_the_fallback(ddp_run_saved_every_step, tmp_path):
    """Under `accelerate launch` (2 processes, gloo): the newest checkpoint damaged, both processes
    continue from the same older one and reproduce the step they redo."""
    from test_distributed import launch
    from tiny import assert_same_metrics

    shutil.copytree(ddp_run_saved_every_step, tmp_path / "run")  # a finished 2-process run, a checkpoint at every step (conftest.py)
    original = rows(tmp_path / "run" / "metrics.jsonl")
    (tmp_path / "run" / "checkpoints" / "step-4" / "rng.pt").unlink()  # DDP: every process reads these same files
    resumed = launch("--resume", str(tmp_path / "run"), "--train.steps", "5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    damaged = [line for line in resumed.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and "step-4/rng.pt is missing" in damaged[0]  # said once, by the main process
    assert "from step-3" in resumed.stderr
    after = rows(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5]
    assert_same_metrics(original, after[:4])  # step 4 redone from step-3 by both processes: the same numbers
