"""A run read while it is written, and `analyze`'s inputs checked before its first expensive step (#28):
a torn last line of any JSONL is skipped with one `warning:` line (report, analyze --logs, the report page);
a policyshift checkpoint whose manifest is not written yet is skipped as "being written"; a checkpoint that
cannot load is found before the reference samples anything; no finding's text formats a missing number."""

import json
import math
import shutil
from pathlib import Path

import pytest

from policyshift.analysis import analyze as analyze_module
from policyshift.analysis.analyze import AnalyzeSettings, analyze
from policyshift.analysis.detectors import DETECTORS, DetectorThresholds, run_detectors
from policyshift.analysis.discover import DiscoveryError, find_checkpoints
from policyshift.analysis.findings import Finding
from policyshift.analysis.runlog import load_run
from policyshift.cli import main
from policyshift.manifest import write_manifest
from policyshift.runfiles import read_jsonl
from test_detectors import make_history

SHORT = ["--max-new-tokens", "4", "--max-prompt-length", "32"]


def torn(path: Path, rows: list[dict], half: str = '{"step": 99, "reward/sco') -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + half)  # the writer is mid-line: no newline yet


# ---------------------------------------------------------------- torn last lines


def test_read_jsonl_notes_a_torn_last_line_and_a_bad_middle_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n{"step": 3, "x"')
    notes: list[str] = []
    assert [r["step"] for r in read_jsonl(path, notes)] == [1, 2]
    assert len(notes) == 2 and "line 2 is not JSON" in notes[0] and "line 4 is half-written" in notes[1]
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]  # without a notes list: the same rows, silently


def test_report_of_a_run_being_written(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  steps: 100\n")
    torn(run / "metrics.jsonl", [{"step": s, "reward/score_mean": 0.1 * s, "kl/token_mean": 0.01} for s in range(1, 6)])
    torn(run / "samples.jsonl", [{"step": 0, "prompt_id": 0, "prompt": "p", "response": "r", "model": "reference"}], '{"step": 5, "pro')
    assert main(["report", str(run)]) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("policyshift report: warning: ") and "half-written" in line for line in lines), lines
    assert out.strip().endswith("report.html")
    page = (run / "report.html").read_text()
    assert "half-written" in page and "step 5 / 100" in page  # the five whole rows are read, the torn sixth noted
    assert load_run(run).last_step == 5


def test_analyze_logs_torn_line_is_a_warning_not_an_error(tmp_path):
    from policyshift.analysis.ingest import import_logs

    log = tmp_path / "verl.jsonl"  # verl's file logger: {"step": N, "data": {...}} per line
    torn(log, [{"step": s, "data": {"critic/score/mean": 0.1 * s}} for s in range(1, 4)], '{"step": 4, "data": {"critic/sc')
    imported = import_logs([str(log)])
    assert sorted(imported.history) == [1, 2, 3]
    assert any("half-written" in n and "verl.jsonl:4" in n for n in imported.notes), imported.notes


# ---------------------------------------------------------------- checkpoints being written


def _policyshift_run(tmp_path: Path, policy: Path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  steps: 4\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)))  # final/ = step 5
    for step in (2, 4):
        shutil.copytree(policy, run / "checkpoints" / f"step-{step}" / "policy")
        (run / "checkpoints" / f"step-{step}" / "trainer_state.json").write_text(json.dumps({"step": step}))
        write_manifest(run / "checkpoints" / f"step-{step}")
    return run


def test_checkpoint_without_its_manifest_is_skipped_as_being_written(tiny_world, tmp_path):
    policy = Path(tiny_world["policy"])
    run = _policyshift_run(tmp_path, policy)
    shutil.copytree(policy, run / "final")  # final/ written in place, its manifest not yet
    found, notes = find_checkpoints(run)
    assert [c.step for c in found] == [2, 4]
    assert len(notes) == 1 and "final" in notes[0] and "being written" in notes[0]
    write_manifest(run / "final")  # the trainer finishes: final/ counts (as the last logged step)
    found, notes = find_checkpoints(run)
    assert [c.step for c in found] == [2, 4, 5] and not notes
    # a run from before manifests (none anywhere, no live lock): its directories are complete as they are
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for manifest in old.rglob("manifest.json"):
        manifest.unlink()
    assert [c.step for c in find_checkpoints(old)[0]] == [2, 4, 5] and not find_checkpoints(old)[1]
    # ... unless its trainer holds the lock: then final/ is still being written
    (old / ".policyshift.lock").write_text("{}")
    assert any("being written" in n for n in find_checkpoints(old)[1])
    # final/ given as the PATH itself while it is written: one line
    (run / "final" / "manifest.json").unlink()
    with pytest.raises(DiscoveryError, match="being written"):
        find_checkpoints(run / "final")


def _sharded(policy: Path, out: Path) -> Path:
    """The tiny policy saved the way a large one is: several safetensors shards and the index naming them."""
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(policy).save_pretrained(out, max_shard_size="40KB")
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*-of-*.safetensors"))) > 1
    return out


def test_hf_trl_and_verl_checkpoints_being_written_are_skipped(tiny_world, tmp_path):
    """One rule for every layout analyze reads: a checkpoint whose last-written file is not there yet is skipped with a
    note, never loaded half-written. save_pretrained writes the shards, then the index; the HF Trainer writes
    trainer_state.json after the model; verl writes latest_checkpointed_iteration.txt after the step's save."""
    policy = Path(tiny_world["policy"])
    run = tmp_path / "trl"
    whole = _sharded(policy, run / "checkpoint-1")
    (whole / "trainer_state.json").write_text(json.dumps({"global_step": 1, "log_history": []}))
    for step in (2, 3, 4):
        shutil.copytree(whole, run / f"checkpoint-{step}")
    (run / "checkpoint-2" / "model.safetensors.index.json").unlink()  # the shards are written, the index not yet
    (run / "checkpoint-2" / "trainer_state.json").unlink()
    next((run / "checkpoint-3").glob("model-*.safetensors")).unlink()  # the index names a shard that is not there
    (run / "checkpoint-4" / "trainer_state.json").unlink()  # the model is saved, the optimizer and trainer state not yet
    shutil.copytree(policy, run / "tmp-checkpoint-5")  # transformers 4.36-4.38's staging directory, renamed when complete
    found, notes = find_checkpoints(run)
    assert [c.step for c in found] == [1], notes
    assert len(notes) == 4 and all("(being written by its training run); skipped" in n for n in notes), notes
    why = {Path(n.split(":")[0]).name: n for n in notes}
    assert "no index yet" in why["checkpoint-2"] and "not there yet" in why["checkpoint-3"]
    assert "no trainer_state.json yet" in why["checkpoint-4"] and "staging directory" in why["tmp-checkpoint-5"]
    with pytest.raises(DiscoveryError, match=r"no index yet \(being written by its training run\): analyze it once its run has written it"):
        find_checkpoints(run / "checkpoint-2")  # given as the PATH itself
    # a run whose checkpoint-N directories never carry trainer_state.json (save_pretrained by hand) is read as it is
    manual = tmp_path / "manual"
    for step in (1, 2):
        shutil.copytree(policy, manual / f"checkpoint-{step}")
    assert [c.step for c in find_checkpoints(manual)[0]] == [1, 2]

    verl = tmp_path / "verl"
    for step in (2, 4):
        shutil.copytree(policy, verl / f"global_step_{step}" / "actor" / "huggingface")
    (verl / "latest_checkpointed_iteration.txt").write_text("2")  # step 4's actor is saved, its critic and data.pt not yet
    found, notes = find_checkpoints(verl)
    assert [c.step for c in found] == [2] and len(notes) == 1 and "global_step_4 is past latest_checkpointed_iteration.txt (2)" in notes[0]
    (verl / "latest_checkpointed_iteration.txt").write_text("4")
    assert [c.step for c in find_checkpoints(verl)[0]] == [2, 4] and not find_checkpoints(verl)[1]


def test_analyze_skips_a_checkpoint_being_written_with_a_warning(tiny_world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_world["policy"], run / "checkpoint-1")
    _sharded(Path(tiny_world["policy"]), run / "checkpoint-2")
    (run / "checkpoint-2" / "model.safetensors.index.json").unlink()
    assert main(["analyze", str(run), "--reference", tiny_world["policy"], "--prompts", tiny_world["prompts"], "--out", str(tmp_path / "out"),
                 *SHORT]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "checkpoint-2" in line]
    assert len(lines) == 1 and lines[0].startswith("policyshift analyze: warning: ") and "being written" in lines[0], err
    assert out.startswith("1 checkpoints analyzed")


# ---------------------------------------------------------------- inputs checked before the reference samples


def test_no_loadable_checkpoint_is_found_before_the_reference_is_loaded(tiny_world, tmp_path, monkeypatch):
    policy = Path(tiny_world["policy"])
    bad = tmp_path / "ckpts"
    shutil.copytree(policy, bad / "checkpoint-1")
    shutil.copytree(policy, bad / "checkpoint-2")
    (bad / "checkpoint-1" / "config.json").write_text("{not json")  # a config that does not parse
    weights = bad / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut in half: the header promises more bytes
    loaded = []
    monkeypatch.setattr(analyze_module, "load_reference", lambda *a, **k: loaded.append(a) or pytest.fail("the reference was loaded"))
    settings = AnalyzeSettings(prompts=tiny_world["prompts"], max_new_tokens=4)
    with pytest.raises(DiscoveryError) as info:
        analyze([str(bad)], tiny_world["policy"], tmp_path / "out", settings)
    message = str(info.value)
    assert "no checkpoint can be analyzed" in message and "checkpoint-1" in message and "checkpoint-2" in message
    assert "model.safetensors is damaged" in message and not loaded and not (tmp_path / "out").exists()


def test_analyze_notes_are_warning_lines(tiny_world, tmp_path, capsys):
    policy = Path(tiny_world["policy"])
    ckpts = tmp_path / "ckpts"
    shutil.copytree(policy, ckpts / "checkpoint-1")
    shutil.copytree(policy, ckpts / "checkpoint-2")
    (ckpts / "checkpoint-2" / "config.json").write_text("{not json")
    assert main(["analyze", str(ckpts), "--reference", tiny_world["policy"], "--prompts", tiny_world["prompts"], "--out", str(tmp_path / "out"),
                 *SHORT]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "checkpoint-2" in line and "skipped" in line]
    assert len(err) == 1 and err[0].startswith("policyshift analyze: warning: skipped: "), err


# ---------------------------------------------------------------- no "nan" in a finding's text


def test_no_finding_formats_a_missing_number():
    # the KL runs away with no reward logged at all: it used to say "+nanσ over the second half"
    history = make_history(n=60, kl__seq_mean=lambda p: 2 + 40 * p, reward__score_mean=None, reward__gold_mean=None)
    findings = run_detectors(history, [])
    runaway = [f for f in findings if f.detector == "kl_runaway"]
    assert runaway and "no reward logged" in runaway[0].message
    # every detector, on every history with one metric missing or null: no nan/inf in any text
    base = make_history(n=60, kl__seq_mean=lambda p: 2 + 40 * p, response__length_mean=lambda p: 10 + 80 * p)
    for key in sorted({k for row in base for k in row if k != "step"}):
        for missing in ("drop", None, math.nan):
            rows = [{k: v for k, v in r.items() if k != key} if missing == "drop" else {**r, key: missing} for r in base]
            for f in run_detectors(rows, [], DetectorThresholds()):
                assert not any(w in f.message.replace("n/a", "") for w in ("nan", "inf ", "inf)", "infσ")), (key, f.message)
    assert DETECTORS  # the registry the loop ran


def test_finding_text_never_shows_nan_whoever_writes_it():
    f = Finding("x", "warning", 1, f"reward moved {math.nan:+.2f}σ, {math.inf:.0%} of {-math.inf:.3g}; information, nanoseconds", {})
    assert f.message == "reward moved n/aσ, n/a% of n/a; information, nanoseconds"
