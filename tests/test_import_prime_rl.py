"""The prime-rl importer on a run directory written in the format prime-rl's source writes (commit 559b447;
tests/fixtures/prime_rl_fixtures.py cites the lines; the episode records are made by verifiers 0.4.0): metrics.jsonl
lines merged per step, the mismatch KL fed to the training–inference mismatch detector, the trained batch's traces
as completions, and the run found by `policyshift analyze RUN_DIR`."""

import json
import shutil
from pathlib import Path

import pytest

from policyshift import keys as K
from policyshift.analysis.detectors import run_detectors
from policyshift.analysis.ingest import LogImportError, import_logs

FIXTURES = Path(__file__).parent / "fixtures" / "prime_rl"
RUN = FIXTURES / "mismatch" / "outputs" / "run_default"


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_lines_merged_per_step_and_fed_only_by_meaning():
    result = import_logs([str(RUN / "metrics.jsonl")])
    assert sorted(result.history) == [1, 2, 3]
    logged = {}
    for row in _lines(RUN / "metrics.jsonl"):
        logged.setdefault(row["step"], {}).update(row)
    for step, row in result.history.items():
        assert row[K.ENGINE_KL_K3] == logged[step]["mismatch_kl/all/mean"]
        assert row[K.GRAD_NORM] == logged[step]["optim/grad_norm"] and row[K.LR] == logged[step]["optim/lr"]
        # trainer and orchestrator lines of the same step land in one row, every key kept as logged
        assert row["prime_rl/train/agg/effective/agent/reward/mean"] == logged[step]["train/agg/effective/agent/reward/mean"]
        assert "prime_rl/time" not in row  # the line's wall clock, not a metric
        assert K.ENTROPY not in row and "prime_rl/entropy/all/mean" in row  # shown, not fed
        assert K.ENGINE_LOGPROB_DIFF_MAX not in row  # mismatch_kl/all/max is a k3 term, not a |Δ log π|
    source = result.sources[0]
    assert source["unknown"] == [] and source["mapped"]["mismatch_kl/all/mean"] == K.ENGINE_KL_K3


def test_trained_batch_traces_are_the_completions():
    result = import_logs([str(FIXTURES / "healthy")])
    assert len(result.completions) == 36 and {c["step"] for c in result.completions} == {1, 2, 3}  # 3 groups × 4 per step
    episode = _lines(FIXTURES / "healthy" / "outputs" / "run_default" / "rollouts" / "step_1" / "train" / "effective" / "traces.jsonl")[0]
    trace, first = episode["traces"][0], result.completions[0]
    assert first["prompt"] == trace["nodes"][0]["message"]["content"] and first["completion"] == trace["nodes"][1]["message"]["content"]
    assert first["score"] == pytest.approx(sum(r["score"] * r["weight"] for r in trace["rewards"].values()))  # verifiers' Trace.reward
    assert first["length"] == sum(trace["nodes"][1]["mask"]) and first["group"] == episode["group"]["id"] + ":agent"
    assert first["policy_span"] == [0, 1] and first["sampled_before_update"] == 1
    means = {s: sum(c["score"] for c in result.completions if c["step"] == s) / 12 for s in (1, 2, 3)}
    assert all(result.history[s][K.SCORE_MEAN] == pytest.approx(m) for s, m in means.items())


def test_eval_and_all_traces_are_not_training_samples():
    step = RUN / "rollouts" / "step_1"
    for path in (step / "eval" / "effective" / "traces.jsonl", step / "train" / "all" / "traces.jsonl"):
        result = import_logs([str(path)])
        assert result.completions == [] and "not read as training completions" in result.notes[0]
    assert len(import_logs([str(step / "train" / "effective" / "traces.jsonl")]).completions) == 12


@pytest.mark.parametrize("run, expected", [("healthy", set()), ("mismatch", {("rollout_mismatch", "critical")})])
def test_mismatch_reaches_the_detector(run, expected):
    imported = import_logs([str(FIXTURES / run)])
    history = [dict(values, step=step) for step, values in sorted(imported.history.items())]
    found = {(f.detector, f.severity) for f in run_detectors(history, [], distributions=imported.distributions)}
    assert {key for key in found if key[1] != "info"} == expected
    assert ("no_reference_kl", "info") in found  # no KL to the reference in this run


def test_a_foreign_metrics_file_is_one_error_or_its_own_trainers(tmp_path):
    bad = tmp_path / "metrics.jsonl"
    bad.write_text(json.dumps({"step": 1, "kl": 0.1}) + "\n")
    with pytest.raises(LogImportError, match="neither verl's file logger"):  # the next format taking a .jsonl says what it expected
        import_logs([str(bad)])
    verl = tmp_path / "verl" / "metrics.jsonl"  # a verl experiment named "metrics": read as verl's file log
    verl.parent.mkdir()
    verl.write_text(json.dumps({"step": 1, "data": {"critic/score/mean": 0.5}}) + "\n")
    result = import_logs([str(verl)])
    assert result.history[1][K.SCORE_MEAN] == 0.5 and result.sources[0]["kind"] == "verl scalars"


def test_analyze_finds_the_run_its_weights_and_completions(tiny_world, tmp_path, capsys):
    from policyshift.analysis.runlog import load_run, read_jsonl
    from policyshift.cli import main

    run = tmp_path / "run_default"
    shutil.copytree(RUN, run)
    for step in (1, 3):
        shutil.copytree(tiny_world["policy"], run / "checkpoints" / f"step_{step}" / "weight")
        (run / "checkpoints" / f"step_{step}" / "STABLE").touch()
    out = tmp_path / "out"
    assert main(["analyze", str(run), "--reference", tiny_world["policy"], "--max-new-tokens", "4", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    err = capsys.readouterr().err
    assert "logs: imported from the run directory" in err and "training* prompts" in err
    loaded = load_run(out)
    assert {1, 3} <= {r["step"] for r in loaded.history if any(k.startswith("fixed/") for k in r)}
    assert loaded.history[-1][K.ENGINE_KL_K3] == pytest.approx(_lines(RUN / "metrics.jsonl")[-4]["mismatch_kl/all/mean"])
    assert len(read_jsonl(out / "completions.jsonl")) == 36
