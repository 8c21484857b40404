"""`policyshift analyze`: checkpoint discovery on real directories built with save_pretrained, the
fixed-prompt aggregates by hand, a policyshift run's own samples reproduced from its checkpoints,
a real TRL GRPOTrainer run analyzed, bad input in one line, `--fail-on`."""

import json
import math
import shutil
from pathlib import Path

import pytest

import tiny
from policyshift import PPOTrainer
from policyshift.analysis.discover import DiscoveryError, find_checkpoints
from policyshift.analysis.probe import fixed_prompt_metrics
from policyshift.analysis.runlog import load_run
from policyshift.cli import main
from test_train import config


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# ---------------------------------------------------------------- fixed-prompt aggregates


def test_fixed_prompt_metrics_by_hand():
    rows = [
        {"seq_kl": 0.6, "seq_k3": 0.5, "seq_exact_kl": 0.4, "length": 2, "eos": True, "score": 1.0, "gold_score": 0.0,
         "entropy_mean": 1.0, "rep_ngram_rate": 0.0, "ref_logprob_mean": -1.0, "tokens": ["a", "b"]},
        {"seq_kl": 0.3, "seq_k3": 0.1, "seq_exact_kl": 0.2, "length": 4, "eos": False, "score": 3.0, "gold_score": 2.0,
         "entropy_mean": 2.5, "rep_ngram_rate": 0.5, "ref_logprob_mean": -3.0, "tokens": ["a", "b", "a", "b"]},
    ]
    m = fixed_prompt_metrics(rows)
    assert m["kl/k1_token_mean"] == pytest.approx(0.9 / 6) and m["kl/k1_seq_mean"] == pytest.approx(0.45)
    assert m["kl/k3_token_mean"] == pytest.approx(0.6 / 6) and m["kl/exact_seq_mean"] == pytest.approx(0.3)
    assert m["kl/token_mean"] == m["kl/k1_token_mean"] and m["kl/seq_mean"] == m["kl/k1_seq_mean"]
    assert m["reward/score_mean"] == 2.0 and m["reward/score_std"] == pytest.approx(math.sqrt(2.0))  # unbiased, as torch.std
    assert m["reward/gold_mean"] == 1.0 and m["reward/score_min"] == 1.0 and m["reward/score_max"] == 3.0
    assert m["policy/entropy"] == pytest.approx((1.0 * 2 + 2.5 * 4) / 6)  # token-weighted, not a mean of row means
    assert m["response/length_mean"] == 3.0 and m["response/eos_rate"] == 0.5 and m["response/rep_ngram_rate"] == 0.25
    assert m["response/distinct_2"] == pytest.approx(2 / 4)  # bigrams ab | ab ba ab: {ab, ba} of 4
    assert m["response/ref_logprob_mean"] == -2.0


def test_fixed_prompt_metrics_leave_out_what_rows_lack():
    m = fixed_prompt_metrics([{"seq_kl": 0.2, "length": 2, "score": None, "tokens": ["a"]}])
    assert "kl/k3_token_mean" not in m and "reward/score_mean" not in m and m["kl/seq_mean"] == 0.2


# ---------------------------------------------------------------- discovery


@pytest.fixture(scope="module")
def saved(tiny_world):
    """One real saved policy and one saved sequence classifier, copied into each layout."""
    root = tiny_world["root"] / "saved_models"
    if not root.exists():
        tiny.make_policy(root / "classifier", tiny_world["tokenizer"], head="classifier")
    return {"policy": Path(tiny_world["policy"]), "classifier": root / "classifier"}


def place(src: Path, dst: Path, trainer_step: int | None = None) -> Path:
    shutil.copytree(src, dst)
    if trainer_step is not None:  # what HF Trainer writes beside the weights (TRL: the same Trainer)
        (dst / "trainer_state.json").write_text(json.dumps({"global_step": trainer_step, "log_history": []}))
    return dst


def test_discovers_trainer_layouts(saved, tmp_path):
    trl = tmp_path / "trl"
    place(saved["policy"], trl / "checkpoint-20", 20)
    place(saved["policy"], trl / "checkpoint-10", 10)
    ckpts, notes = find_checkpoints(trl)
    assert [(c.step, c.path.name) for c in ckpts] == [(10, "checkpoint-10"), (20, "checkpoint-20")] and not notes
    assert ckpts[0].layout.startswith("HF Trainer")

    verl = tmp_path / "verl"
    place(saved["policy"], verl / "global_step_5" / "actor" / "huggingface")
    shards = verl / "global_step_9" / "actor"
    shards.mkdir(parents=True)
    (shards / "model_world_size_2_rank_0.pt").write_bytes(b"")
    ckpts, notes = find_checkpoints(verl)
    assert [c.step for c in ckpts] == [5] and ckpts[0].layout == "verl HF export"
    assert len(notes) == 1 and "global_step_9" in notes[0] and "verl.model_merger merge" in notes[0]

    openrlhf = tmp_path / "openrlhf"
    place(saved["policy"], openrlhf / "global_step7_hf")
    assert [c.step for c in find_checkpoints(openrlhf)[0]] == [7]

    ours = tmp_path / "ours"
    for step in (2, 4):
        place(saved["policy"], ours / "checkpoints" / f"step-{step}" / "policy")
        place(saved["classifier"], ours / "checkpoints" / f"step-{step}" / "critic")  # a critic is not a policy
    ckpts, _ = find_checkpoints(ours)
    assert [(c.step, c.layout) for c in ckpts] == [(2, "policyshift checkpoint"), (4, "policyshift checkpoint")]

    plain = place(saved["policy"], tmp_path / "plain")
    ckpts, _ = find_checkpoints(plain)
    assert [(c.path, c.step) for c in ckpts] == [(plain, None)]

    final = place(saved["policy"], tmp_path / "trl_final", 30)  # output_dir after save_model + save_state
    place(saved["policy"], final / "checkpoint-15", 15)
    assert [c.step for c in find_checkpoints(final)[0]] == [15, 30]


def test_discovery_errors_name_the_path(saved, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiscoveryError, match=r"empty: no checkpoint found \(expected an HF model directory"):
        find_checkpoints(tmp_path / "empty")
    shards = tmp_path / "only_shards" / "global_step_3" / "actor"
    shards.mkdir(parents=True)
    (shards / "model_world_size_1_rank_0.pt").write_bytes(b"")
    with pytest.raises(DiscoveryError, match="no loadable checkpoint.*merge them first"):
        find_checkpoints(tmp_path / "only_shards")
    deepspeed = tmp_path / "openrlhf_ckpt" / "_actor" / "global_step4"
    deepspeed.mkdir(parents=True)
    (deepspeed / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(DiscoveryError, match="DeepSpeed shards.*--ckpt.save_hf"):
        find_checkpoints(tmp_path / "openrlhf_ckpt")
    with pytest.raises(DiscoveryError, match="no such file"):
        find_checkpoints(tmp_path / "missing")


# ---------------------------------------------------------------- a policyshift run reproduced


@pytest.fixture(scope="module")
def ppo_run(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_for_analyze")
    fixed = tiny.write_prompts(root / "fixed.jsonl", n=6, seed=5)
    out = root / "run"
    PPOTrainer(config(tiny_world, out, analysis={"every": 2, "prompts": str(fixed)}, rollout={"batch_size": 4, "max_new_tokens": 8},
                      train={"steps": 4, "save_every": 2, "seed": 3}, ppo={"num_minibatches": 1})).train()
    return out, fixed


def test_analyze_reproduces_a_policyshift_runs_samples(tiny_world, ppo_run, tmp_path, capsys):
    run_dir, fixed = ppo_run
    out = tmp_path / "analyzed"
    code = main(["analyze", str(run_dir), "--reference", tiny_world["policy"], "--prompts", str(fixed), "--reward-function", "tiny:good_fraction",
                 "--seed", "10", "--batch-size", "4", "--max-new-tokens", "8", "--out", str(out)])  # the run's train.seed + 7, its batching
    assert code == 0, capsys.readouterr().err
    own, analyzed = load_run(run_dir), load_run(out)
    assert [c["step"] for c in analyzed.config["analysis"]["checkpoints"]] == [2, 4]  # final/ is step 4 again: skipped
    from policyshift.analysis.report import run_findings

    assert len((out / "findings.jsonl").read_text().splitlines()) == len(run_findings(analyzed)[0])  # written even when empty
    assert sorted({r["step"] for r in analyzed.samples}) == [0, 2, 4]
    own_rows = {(r["step"], r["prompt_id"]): r for r in own.samples}
    assert set(own_rows) == {(r["step"], r["prompt_id"]) for r in analyzed.samples}
    for row in analyzed.samples:
        mine = own_rows[(row["step"], row["prompt_id"])]
        assert set(mine) <= set(row)  # every field the trainer logs (k3, exact KL included), plus the checkpoint path
        for key in ("response", "tokens", "length", "eos", "model", "rep_ngram_rate"):
            assert row[key] == mine[key], (row["step"], key)
        for key in ("score", "seq_kl", "seq_k3", "seq_exact_kl", "ref_logprob_mean", "entropy_mean"):
            assert row[key] == pytest.approx(mine[key], abs=1e-5), (row["step"], key)
        assert row["token_log_ratio"] == pytest.approx(mine["token_log_ratio"], abs=2e-5)
    # per-checkpoint aggregates at the checkpoint's step, named as fixed-prompt quantities
    by_step = {r["step"]: r for r in analyzed.history}
    assert by_step[0]["fixed/kl/exact_seq_mean"] == pytest.approx(0.0, abs=1e-5)
    assert by_step[4]["fixed/kl/exact_seq_mean"] > 0.05 and "kl/seq_mean" not in by_step[4]
    # `policyshift report DIR` rebuilds the report from the records
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "fixed prompts at checkpoints" in page and "policyshift · analyzed" in page


def test_report_of_a_checkpoint_only_run_fills_kl_and_shape_and_says_what_is_missing(tiny_world, ppo_run, tmp_path, capsys):
    run_dir, fixed = ppo_run
    out = tmp_path / "no_reward"
    assert main(["analyze", str(run_dir / "checkpoints"), "--reference", tiny_world["policy"], "--prompts", str(fixed),
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    from test_report import panel_html

    assert "No data yet" not in panel_html(page, "panel-1") and "No data yet" not in panel_html(page, "panel-5")
    assert "--reward or --reward-function" in panel_html(page, "panel-2")
    assert "completions_*.parquet" in panel_html(page, "panel-3")


# ---------------------------------------------------------------- bad input


SHORT = ["--max-new-tokens", "8", "--max-prompt-length", "32"]  # prompt + response fit the tiny models' 64-token context: no prompt-cut warning


def test_bad_input_one_line_and_nothing_written(tiny_world, saved, tmp_path, capsys):
    prompts = tiny_world["prompts"]
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty"), "--reference", tiny_world["policy"], "--prompts", prompts, "--out", str(out), *SHORT]) == 2
    assert "no checkpoint found" in error_line(capsys)
    assert main(["analyze", str(saved["policy"]), "--reference", str(tmp_path / "no_sft"), "--prompts", prompts, "--out", str(out), *SHORT]) == 2
    assert "--reference" in error_line(capsys)
    # a checkpoint with another vocabulary: skipped with its line; none left → one error line
    other = tmp_path / "other_vocab"
    tok = tiny.make_tokenizer(other, words=tiny.WORDS + ["extra", "words"])
    tiny.make_policy(other, tok)
    capsys.readouterr()  # save_pretrained's own progress bar (on when no earlier test turned it off) is not ours
    assert main(["analyze", str(other), "--reference", tiny_world["policy"], "--prompts", prompts, "--out", str(out), *SHORT]) == 2
    assert "vocabulary differs" in error_line(capsys)
    # a LoRA adapter whose base is gone
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone"), "peft_type": "LORA"}))
    assert main(["analyze", str(adapter), "--reference", tiny_world["policy"], "--prompts", prompts, "--out", str(out), *SHORT]) == 2
    assert "base model" in error_line(capsys) and not out.exists()
    assert not any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())


def test_lora_adapter_is_applied_to_its_base(tiny_world, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from policyshift.models import load_causal_lm

    model = get_peft_model(load_causal_lm(tiny_world["policy"]), LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "checkpoint-3")
    assert main(["analyze", str(tmp_path), "--reference", tiny_world["policy"], "--prompts", tiny_world["prompts"], "--max-new-tokens", "6",
                 "--out", str(tmp_path / "out")]) == 0
    run = load_run(tmp_path / "out")
    assert run.config["analysis"]["checkpoints"][0]["layout"] == "HF Trainer / TRL checkpoint (LoRA adapter)"
    assert {r["step"] for r in run.history} == {0, 3}
    assert run.history[1]["fixed/kl/exact_seq_mean"] > 1e-4  # the adapter moved the policy off its base


# ---------------------------------------------------------------- --fail-on


def test_fail_on_exits_3_with_one_line_per_finding(tmp_path, capsys):
    run = tmp_path / "drifting"
    run.mkdir()
    (run / "config.yaml").write_text("analysis:\n  source: policyshift analyze\n")
    lengths = [5, 6, 10, 18, 30]  # length ×6 over the checkpoints: length_drift critical
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": 10 * i, "fixed/response/length_mean": n}) + "\n" for i, n in enumerate(lengths)))
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--fail-on", "critical"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith(("critical ", "warning ")) for line in err) and any("length_drift" in line for line in err)
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    (quiet / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "fixed/response/length_mean": 5}) + "\n" for i in range(5)))
    assert main(["report", str(quiet), "--fail-on", "warning"]) == 0


def test_gao_pairs_fixed_prompt_kl_with_fixed_prompt_reward(tmp_path):
    """A training log's reward at a checkpoint's step is from other samples than the fixed prompts' KL."""
    from policyshift.analysis.report import detector_inputs, panel_gao

    raw = [{"step": 0, "fixed/kl/seq_mean": 0.0, "fixed/reward/score_mean": 1.0}]
    raw += [{"step": s, "reward/score_mean": 100.0 + s} for s in (1, 2, 3, 4)]
    raw[2].update({"fixed/kl/seq_mean": 1.0, "fixed/reward/score_mean": 2.0})
    raw[4].update({"fixed/kl/seq_mean": 4.0, "fixed/reward/score_mean": 3.0})
    history, fixed = detector_inputs(raw)
    assert fixed == {"kl/seq_mean"}  # the reward has a training log: read as logged
    assert [r.get("reward/score_mean") for r in history] == [None, 101.0, 102.0, 103.0, 104.0]
    from policyshift.analysis.runlog import RunData

    figures = {}
    panel_gao(RunData(tmp_path, history=history), figures, fixed)
    points = figures["fig-gao"]["data"][0]
    assert points["y"] == [1.0, 2.0, 3.0] and points["x"] == pytest.approx([0.0, 1.0, 2.0])


def test_labelled_runs_side_by_side(tiny_world, ppo_run, saved, tmp_path, capsys):
    run_dir, fixed = ppo_run
    other = tmp_path / "other"
    place(saved["policy"], other / "checkpoint-3", 3)  # a second "run": the reference itself at step 3
    out = tmp_path / "both"
    base = ["analyze", str(run_dir / "checkpoints"), str(other), "--reference", tiny_world["policy"], "--prompts", str(fixed),
            "--max-new-tokens", "8", "--out", str(out)]
    assert main(base + ["--label", "ppo"]) == 2 and "one label per run" in error_line(capsys)
    assert main(base + ["--label", "ppo", "--label", "same"]) == 0, capsys.readouterr().err
    ppo, same = load_run(out / "ppo"), load_run(out / "same")
    assert [r["step"] for r in ppo.history] == [0, 2, 4] and [r["step"] for r in same.history] == [0, 3]
    assert same.history[1]["fixed/kl/exact_seq_mean"] == pytest.approx(0.0, abs=1e-5)  # the reference against itself
    assert ppo.history[0] == same.history[0]  # one reference evaluation shared by both runs
    page = (out / "report.html").read_text()
    assert 'href="ppo/report.html"' in page and "same step 3" in page and "ppo step 4" in page
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()
