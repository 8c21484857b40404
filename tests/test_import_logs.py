"""`policyshift analyze --logs`: other trainers' scalar logs and logged completions, mapped with their
meaning. A real tiny TRL GRPOTrainer run (checkpoints, trainer_state.json, TensorBoard, completions
parquet) is made in the test setup; verl and OpenRLHF, which need GPUs/Ray to install, are fixtures
built from the formats their source writes (cited at each fixture)."""

import json
import shutil
from pathlib import Path

import pytest

from policyshift.analysis.ingest import LogImportError, import_logs
from policyshift.analysis.runlog import load_run
from policyshift.cli import main
from test_analyze import error_line


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory):
    pytest.importorskip("trl")
    from trl_run import run_grpo

    return run_grpo(tmp_path_factory.mktemp("trl"))


def analyze(trl_run, out, *extra):
    return main(["analyze", str(trl_run["grpo"]), "--reference", str(trl_run["sft"]), "--prompts", str(trl_run["prompts"]),
                 "--reward-function", "tiny:good_fraction", "--max-new-tokens", "8", "--out", str(out), *extra])


@pytest.mark.slow
def test_analyze_a_real_trl_grpo_run(trl_run, tmp_path, capsys):
    out = tmp_path / "trl_analyzed"
    assert analyze(trl_run, out) == 0, capsys.readouterr().err
    run = load_run(out)
    assert [(c["step"], Path(c["path"]).name) for c in run.config["analysis"]["checkpoints"]] == [(2, "checkpoint-2"), (4, "checkpoint-4")]
    assert [r["step"] for r in run.history if any(k.startswith("fixed/") for k in r)] == [0, 2, 4]
    assert [r["step"] for r in run.history] == [0, 1, 2, 3, 4]  # the run directory's own logs, imported without --logs
    assert run.history[0]["fixed/kl/k1_seq_mean"] == pytest.approx(0.0, abs=1e-5)  # the reference against itself
    assert run.history[2]["fixed/kl/exact_seq_mean"] > run.history[0]["fixed/kl/exact_seq_mean"]  # lr 1e-3: GRPO moved the policy
    assert all(isinstance(r["score"], float) and len(r["token_k3"]) == r["length"] for r in run.samples)
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_trl_logs_and_completions_imported_with_their_meaning(trl_run, tmp_path, capsys):
    out = tmp_path / "with_logs"
    assert analyze(trl_run, out, "--logs", str(trl_run["grpo"])) == 0, capsys.readouterr().err
    run = load_run(out)
    state = json.loads((trl_run["grpo"] / "checkpoint-4" / "trainer_state.json").read_text())
    logged = {e["step"]: e for e in state["log_history"] if "reward" in e}
    rows = {r["step"]: r for r in run.history}
    assert sorted(logged) == [1, 2, 3, 4]
    for step, entry in logged.items():
        row = rows[step]
        assert row["trl/reward"] == entry["reward"] and row["reward/score_mean"] == entry["reward"]
        assert row["kl/k3_token_mean"] == entry["kl"]  # TRL's kl: a per-token k3 mean ...
        assert "kl/seq_mean" not in row and "kl/token_mean" not in row  # ... so not the sequence KL nor a k1 the detectors read
        assert row["response/eos_rate"] == pytest.approx(1 - entry["completions/clipped_ratio"])
        assert row["group/zero_spread_frac"] == entry["frac_reward_zero_std"]  # groups with equal rewards, as policyshift's
        assert row["trl/completions/min_length"] == entry["completions/min_length"]  # shown as logged, no policyshift key
    source = run.config["analysis"]["imported"][0]
    assert source["mapped"]["kl"] == "kl/k3_token_mean" and "completions/min_length" in source["shown"]
    assert "rewards/good/mean" in source["shown"]  # per reward function, by pattern
    # TensorBoard's copy of the same log is recognized and not read twice
    assert len(run.config["analysis"]["imported"]) == 1 and any("TensorBoard events repeat" in n for n in run.config["analysis"]["skipped"])
    # completions: every parquet row, its reward column as the score, token lengths by the policy's tokenizer
    import pandas as pd

    parquet = pd.concat(pd.read_parquet(p) for p in sorted((trl_run["grpo"] / "completions").glob("*.parquet")))
    assert len(run.completions) == len(parquet) and {c["step"] for c in run.completions} == {1, 2, 3, 4}
    assert [c["score"] for c in run.completions] == pytest.approx(parquet["good"].tolist())
    assert all(c["length"] == len(c["completion"].split()) for c in run.completions)  # word-level tokenizer: one token per word
    assert [d["step"] for d in run.distributions] == [1, 2, 3, 4]
    page = (out / "report.html").read_text()
    from test_report import panel_html

    assert "kl/k3_token_mean" in panel_html(page, "panel-8") and "shown as logged" in panel_html(page, "panel-8")
    assert "Training completions" in page and "No data yet" not in panel_html(page, "panel-3")


@pytest.mark.slow
def test_logs_of_another_run_are_refused(trl_run, tmp_path, capsys):
    other = tmp_path / "other_run"
    shutil.copytree(trl_run["grpo"] / "checkpoint-4", other / "checkpoint-4")
    state = json.loads((other / "checkpoint-4" / "trainer_state.json").read_text())
    for entry in state["log_history"]:
        if "reward" in entry:
            entry["reward"] += 0.5
    (other / "checkpoint-4" / "trainer_state.json").write_text(json.dumps(state))
    out = tmp_path / "mixed"
    code = main(["analyze", str(trl_run["grpo"]), "--reference", str(trl_run["sft"]), "--prompts", str(trl_run["prompts"]),
                 "--logs", str(other / "checkpoint-4" / "trainer_state.json"), "--out", str(out)])
    assert code == 2 and "different runs" in error_line(capsys) and not out.exists()


# ---------------------------------------------------------------- verl and OpenRLHF fixtures


def verl_file_log(path: Path, torn: bool = False) -> Path:
    """verl's file logger: verl/utils/tracking.py FileLogger (trainer.logger=['file'], VERL_FILE_LOGGER_PATH),
    verl 0.5/0.6: json.dumps({"step": step, "data": data}) per line; keys from ray_trainer.py compute_data_metrics."""
    lines = [json.dumps({"step": s, "data": {"critic/score/mean": 0.1 * s, "critic/score/max": 1.0, "critic/score/min": 0.0,
                                             "actor/ppo_kl": 0.01, "actor/kl_loss": 0.02 * s, "actor/entropy": 2.0 - 0.1 * s,
                                             "response_length/mean": 20.0 + s, "response_length/clip_ratio": 0.25,
                                             "actor/pg_clipfrac": 0.05, "custom/thing": 7.0}}) for s in range(1, 6)]
    path.write_text("\n".join(lines) + ("\n" + lines[0][:25] if torn else "") + "\n")
    return path


def verl_dump(directory: Path) -> Path:
    """verl's rollout dump: ray_trainer.py _dump_generations (trainer.rollout_data_dir), verl 0.5/0.6:
    {global_step}.jsonl, one json.dumps(entry) per line with input, output, gts, score, step and reward_extra_info keys."""
    directory.mkdir(parents=True)
    for step in (1, 2):
        (directory / f"{step}.jsonl").write_text("".join(
            json.dumps({"input": f"q{i}", "output": "good " * (i + step), "gts": "x", "score": float(i * step), "step": step, "acc": 1.0}) + "\n"
            for i in range(3)))
    return directory


def openrlhf_tensorboard(directory: Path) -> Path:
    """OpenRLHF 0.11 TensorBoard: openrlhf/trainer/ppo_trainer.py writes each status key as train/<key>
    with SummaryWriter.add_scalar at the global step."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    for step in range(1, 4):
        for key, value in {"reward": 0.2 * step, "kl": 0.01 * step, "response_length": 30.0, "policy_loss": 0.1, "mystery": 1.0}.items():
            writer.add_scalar(f"train/{key}", value, step)
    writer.close()
    return directory


def test_verl_file_log_mapped_with_meaning(tmp_path):
    imported = import_logs([str(verl_file_log(tmp_path / "verl.jsonl", torn=True))])
    row = imported.history[3]
    assert row["reward/score_mean"] == pytest.approx(0.3) and row["response/length_mean"] == 23.0
    assert row["response/eos_rate"] == 0.75 and row["ppo/clip_frac"] == 0.05
    assert row["verl/actor/ppo_kl"] == 0.01 and not any(k.startswith("kl/") for k in row)  # old→new KL is not KL to the reference
    # no saved config beside the log: loss_agg_mode unknown, so actor/entropy may be per sequence: shown, not fed
    assert "policy/entropy" not in row and row["verl/actor/entropy"] == pytest.approx(1.7)
    source = imported.sources[0]
    assert "actor/ppo_kl" in source["shown"] and "actor/kl_loss" in source["shown"] and source["unknown"] == ["custom/thing"]
    assert "actor/entropy" in source["shown"] and "no saved config" in source["meanings"]["actor/entropy"]
    assert row["verl/custom/thing"] == 7.0  # unknown keys are kept
    assert len(imported.notes) == 1 and "half-written" in imported.notes[0] and ":6:" in imported.notes[0]


def test_verl_rollout_dump_and_openrlhf_tensorboard(tmp_path):
    imported = import_logs([str(verl_dump(tmp_path / "rollouts")), str(openrlhf_tensorboard(tmp_path / "tb"))])
    assert [(c["step"], c["score"]) for c in imported.completions] == [(1, 0.0), (1, 1.0), (1, 2.0), (2, 0.0), (2, 2.0), (2, 4.0)]
    assert imported.completions[0]["rewards"] == {"acc": 1.0}
    assert [d["scores"] for d in imported.distributions] == [[0.0, 1.0, 2.0], [0.0, 2.0, 4.0]]
    source = imported.sources[0]
    # OpenRLHF's reward includes the length penalties when they are on, which its logs do not say: shown, not fed
    assert source["kind"] == "openrlhf scalars" and source["mapped"] == {"response_length": "response/length_mean"}
    assert "kl" in source["shown"] and "reward" in source["shown"] and source["unknown"] == ["mystery"]
    assert imported.history[2]["openrlhf/reward"] == pytest.approx(0.4) and "reward/score_mean" not in imported.history[2]
    assert "kl/token_mean" not in imported.history[2]


def test_bad_logs_are_one_line_each(tiny_world, tmp_path, capsys):
    import pandas as pd

    bad = tmp_path / "completions_00001.parquet"
    pd.DataFrame({"step": [1], "text": ["x"]}).to_parquet(bad)
    with pytest.raises(LogImportError, match="no 'prompt', 'completion' column"):
        import_logs([str(bad)])
    (tmp_path / "tb_empty").mkdir()
    with pytest.raises(LogImportError, match="no log found"):
        import_logs([str(tmp_path / "tb_empty")])
    notlog = tmp_path / "x.jsonl"
    notlog.write_text('{"a": 1}\n')
    with pytest.raises(LogImportError, match="verl's file logger"):
        import_logs([str(notlog)])
    out = tmp_path / "out"
    code = main(["analyze", tiny_world["policy"], "--reference", tiny_world["policy"], "--prompts", tiny_world["prompts"],
                 "--logs", str(bad), "--out", str(out)])
    assert code == 2 and "completions_00001.parquet" in error_line(capsys) and not out.exists()


def test_analyze_with_verl_logs_fail_on(tiny_world, tmp_path, capsys):
    """Logs beside checkpoints: a verl run's layout, its file log; --fail-on gates on the findings."""
    run = tmp_path / "verl_run"
    shutil.copytree(tiny_world["policy"], run / "global_step_5" / "actor" / "huggingface")
    log = verl_file_log(tmp_path / "verl.jsonl")
    out = tmp_path / "out"
    base = ["analyze", str(run), "--reference", tiny_world["policy"], "--prompts", tiny_world["prompts"], "--max-new-tokens", "6",
            "--logs", str(log), "--out", str(out)]
    assert main(base) == 0, capsys.readouterr().err
    loaded = load_run(out)
    assert [r["step"] for r in loaded.history] == [0, 1, 2, 3, 4, 5] and "fixed/kl/exact_seq_mean" in loaded.history[-1]
    assert loaded.history[-1]["reward/score_mean"] == pytest.approx(0.5)  # step 5: the log's row and the checkpoint's merged
    capsys.readouterr()
    code = main(base + ["--fail-on", "warning"])
    findings = load_run(out)
    from policyshift.analysis.report import run_findings

    expected = [f for f in run_findings(findings)[0] if f.severity in ("warning", "critical")]
    assert code == (3 if expected else 0)
    if expected:
        err = capsys.readouterr().err.strip().splitlines()
        assert sum(line.startswith(("warning ", "critical ")) for line in err) == len(expected)


@pytest.mark.slow
def test_score_completions_colours_those_at_checkpoint_steps(trl_run, tmp_path, capsys):
    out = tmp_path / "scored"
    assert analyze(trl_run, out, "--logs", str(trl_run["grpo"]), "--score-completions") == 0, capsys.readouterr().err
    run = load_run(out)
    # logged at step 3 = sampled before update 3 by checkpoint-2; checkpoint-4's samples (step 5) were never logged
    at_ckpt = [c for c in run.completions if c["step"] == 3]
    assert at_ckpt and all(len(c["tokens"]) == len(c["token_log_ratio"]) == len(c["completion"].split()) for c in at_ckpt)
    assert all(c["scored_by_checkpoint_step"] == 2 for c in at_ckpt)
    assert all("tokens" not in c for c in run.completions if c["step"] in (1, 2, 4))  # no checkpoint sampled them: no π to compare
    assert any(abs(x) > 1e-4 for c in at_ckpt for x in c["token_log_ratio"]) and all(
        c["seq_kl"] == pytest.approx(sum(c["token_log_ratio"]), abs=1e-3) for c in at_ckpt)
    cost = run.config["analysis"]["completions_scored"]
    assert cost["completions"] == len(at_ckpt) and cost["seconds"] > 0
    assert 'class="tok"' in (out / "report.html").read_text().split('id="panel-9"')[1]


def test_score_texts_matches_the_sampled_logprobs(tiny_world):
    """Scoring a sampled response as text gives back the rollout's own log π − log π_ref (word-level tokens
    re-tokenize exactly)."""
    import torch

    from policyshift.analysis.probe import score_texts
    from policyshift.config import RolloutConfig
    from policyshift.models import PolicyAndCritic, freeze, load_causal_lm, load_tokenizer
    from policyshift.rollout import generate_rollout

    tok = load_tokenizer(tiny_world["policy"])
    ref = freeze(load_causal_lm(tiny_world["policy"]))
    policy = freeze(load_causal_lm(tiny_world["policy"]))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = ["good dog", "the cat sits on", "a"]
    ro = generate_rollout(PolicyAndCritic(policy), ref, tok, prompts, RolloutConfig(max_new_tokens=6), 16, torch.Generator().manual_seed(0))
    texts = [" ".join(tok.decode([t]) for t in ro.response_ids[i, : n].tolist()) for i, n in enumerate(ro.lengths.tolist())]
    scored = score_texts(policy, ref, tok, prompts, texts, 1.0, 2, 16)
    for i, n in enumerate(ro.lengths.tolist()):
        expected = (ro.logprobs - ro.ref_logprobs)[i, :n].tolist()
        assert scored[i][1] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_trl_tensorboard_events_read_with_tensorboards_reader(trl_run, tmp_path):
    """The TRL run's own TensorBoard events (HF Trainer's callback, tags train/<key>), without trainer_state.json."""
    imported = import_logs([str(trl_run["grpo"] / "runs")])
    state = json.loads((trl_run["grpo"] / "checkpoint-4" / "trainer_state.json").read_text())
    logged = {e["step"]: e for e in state["log_history"] if "reward" in e}
    # the events' output_dir holds the model card and training_args.bin: GRPO, so its kl is the per-token k3
    assert imported.sources[0]["kind"] == "trl scalars" and imported.sources[0]["mapped"]["kl"] == "kl/k3_token_mean"
    assert imported.sources[0]["mode"]["trainer"] == "GRPO"
    for step, entry in logged.items():
        assert imported.history[step]["reward/score_mean"] == pytest.approx(entry["reward"], rel=1e-6)  # float32 in the events
        assert imported.history[step]["kl/k3_token_mean"] == pytest.approx(entry["kl"], rel=1e-6)
    # events copied away from their run: GRPO or RLOO cannot be told, so kl (k3 or k1) is shown, not fed
    alone = tmp_path / "events"
    shutil.copytree(next((trl_run["grpo"] / "runs").iterdir()), alone)
    imported = import_logs([str(alone)])
    assert "kl" in imported.sources[0]["shown"] and "kl/k3_token_mean" not in imported.history[1]


def test_analyze_writes_findings_jsonl_in_the_training_runs_schema(tiny_world, tmp_path, capsys):
    """`analyze` logs its verdicts where a training run logs its own (findings.jsonl, one row per finding the report
    shows, the same keys the live analysis writes), so a downstream tool reads both the same way."""
    from policyshift.analysis.findings import LOG_KEYS
    from policyshift.analysis.report import run_findings
    from policyshift.runfiles import FINDINGS_FILE

    run = tmp_path / "verl_run"
    shutil.copytree(tiny_world["policy"], run / "global_step_12" / "actor" / "huggingface")
    # response length 20 → 86 tokens over 12 steps: length_drift must fire (end/start ≈ 3.7: critical)
    log = tmp_path / "verl.jsonl"
    log.write_text("".join(json.dumps({"step": s, "data": {"critic/score/mean": 0.5, "response_length/mean": 20.0 + 6 * (s - 1)}}) + "\n"
                           for s in range(1, 13)))
    out = tmp_path / "out"
    assert main(["analyze", str(run), "--reference", tiny_world["policy"], "--prompts", tiny_world["prompts"], "--max-new-tokens", "6",
                 "--logs", str(log), "--out", str(out)]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / FINDINGS_FILE).read_text().splitlines()]
    assert rows and all(list(row) == ["logged_at_step", *LOG_KEYS] for row in rows)
    assert {row["logged_at_step"] for row in rows} == {12}
    expected = run_findings(load_run(out))[0]
    assert [(r["detector"], r["severity"], r["step"], r["message"]) for r in rows] == [(f.detector, f.severity, f.step, f.message) for f in expected]
    length = next(r for r in rows if r["detector"] == "length_drift")
    assert length["severity"] == "critical" and length["evidence"]["length_start"] < 30 and length["evidence"]["length_end"] > 70
