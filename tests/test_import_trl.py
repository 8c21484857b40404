"""The TRL importer on runs made by TRL 1.16's own trainers (tests/fixtures/trl, made by
tests/fixtures/make_fixtures.py trl): the mode (trainer, scaling, IS level, window) is read from what the
run saved, and each key feeds a policyshift key only under the meaning it has in that mode."""

import json
from pathlib import Path

import pytest

from policyshift import keys as K
from policyshift.analysis.ingest import import_logs
from policyshift.analysis.ingest.trl import read_model_card, read_training_args

FIXTURES = Path(__file__).parent / "fixtures" / "trl"


def imported(run: str):
    result = import_logs([str(FIXTURES / run)])
    scalars = [s for s in result.sources if s["kind"] == "trl scalars"]
    assert len(scalars) == 1
    return result, scalars[0]


def log(run: str) -> dict[int, dict]:
    state = json.loads((FIXTURES / run / "checkpoint-4" / "trainer_state.json").read_text())
    return {e["step"]: e for e in state["log_history"] if "loss" in e and "train_runtime" not in e}


def test_saved_files_name_the_trainer_and_its_settings():
    assert read_model_card(FIXTURES / "rloo" / "README.md") == "RLOO" and read_model_card(FIXTURES / "dpo" / "README.md") == "DPO"
    cls, args = read_training_args(FIXTURES / "grpo_batch_seq" / "checkpoint-4" / "training_args.bin")
    assert cls == "GRPOConfig" and args["scale_rewards"] == "batch" and args["importance_sampling_level"] == "sequence"
    assert args["beta"] == 0.04 and args["num_generations"] == 4
    assert read_training_args(FIXTURES / "grpo_default" / "README.md") is None  # not a torch.save archive


def test_grpo_default_keys_fed_with_their_meaning():
    result, source = imported("grpo_default")
    assert source["mode"]["trainer"] == "GRPO" and source["mode"]["settings"]["scale_rewards"] == "group"
    logged = log("grpo_default")
    for step, entry in logged.items():
        row = result.history[step]
        assert row[K.SCORE_MEAN] == entry["reward"] and row[K.ENTROPY] == entry["entropy"]
        assert row[K.GROUP_ZERO_SPREAD_FRAC] == entry["frac_reward_zero_std"]  # group-scaled: a share of groups
        assert row[K.CLIP_FRAC] == entry["clip_ratio/region_mean"] and row[K.CLIP_FRAC_LOW] == entry["clip_ratio/low_mean"]
        assert row[K.EOS_RATE] == pytest.approx(1 - entry["completions/clipped_ratio"])
        assert not any(key.startswith("kl/") for key in row)  # beta = 0: TRL logs no kl
    # eval_ keys: evaluation, shown, never fed
    assert "eval_reward" in source["shown"] and source["meanings"]["eval_reward"].startswith("evaluation")
    assert "eval_reward" not in source["mapped"] and source["unknown"] == []
    # the eval at steps 2 and 4 rewrote those steps' completions parquet with evaluation completions
    assert sorted({c["step"] for c in result.completions}) == [1, 3]
    assert sum("written by the evaluation" in n for n in result.notes) == 2


def test_batch_scaled_sequence_is_run_shows_what_changed_meaning():
    result, source = imported("grpo_batch_seq")
    assert source["mapped"]["kl"] == K.KL_K3_TOKEN_MEAN  # GRPO, beta 0.04: per-token k3
    for key in ("frac_reward_zero_std", "clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean"):
        assert key in source["shown"] and key not in source["mapped"], key
    assert "0/1 flag" in source["meanings"]["frac_reward_zero_std"] and "sequences" in source["meanings"]["clip_ratio/region_mean"]
    assert all(K.GROUP_ZERO_SPREAD_FRAC not in row and K.CLIP_FRAC not in row for row in result.history.values())


def test_rloo_kl_is_k1_and_its_zero_std_share_is_not_fed():
    result, source = imported("rloo")
    assert source["mode"]["trainer"] == "RLOO"
    assert source["mapped"]["kl"] == K.KL_K1_TOKEN_MEAN
    assert {"frac_reward_zero_std", "clip_ratio/region_mean", "clip_ratio/low_mean"} <= set(source["shown"])
    assert "after the KL penalty" in source["meanings"]["frac_reward_zero_std"]


def test_rloo_log_without_card_or_args_is_ambiguous_and_shown():
    result, source = imported("rloo_no_card")
    assert source["mode"]["trainer"] is None and source["mode"]["family"] == "GRPO or RLOO"
    for key in ("kl", "frac_reward_zero_std", "clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean"):
        assert key in source["shown"] and key not in source["mapped"], key
    assert source["mapped"]["reward"] == K.SCORE_MEAN and source["mapped"]["entropy"] == K.ENTROPY  # the same in both trainers
    assert all(not any(k.startswith("kl/") for k in row) for row in result.history.values())


@pytest.mark.parametrize("run", ["dpo", "sft"])
def test_teacher_forced_entropy_is_not_policy_entropy(run):
    result, source = imported(run)
    assert source["mode"]["trainer"] == run.upper()
    assert "entropy" in source["shown"] and "teacher-forced" in source["meanings"]["entropy"]
    assert all(K.ENTROPY not in row for row in result.history.values()) and source["mapped"] == {}


def test_window_averaged_log_and_weighted_reward_columns():
    result, source = imported("grpo_multi")
    assert source["mode"]["logging_steps"] == 2 and "mean of the 2 steps" in source["meanings"]["reward"]
    assert sorted(s for s in result.history if K.SCORE_MEAN in result.history[s]) == [2, 4]
    assert source["unknown"] == ["mean_words"]  # a reward function's log_metric scalar: kept, not given a meaning
    rows = [r for r in result.completions if r["step"] == 4]
    assert rows and all(set(r["rewards"]) == {"upbeat", "short"} and set(r["extra"]) == {"n_words"} for r in rows)
    for r in rows:  # reward_weights [1.0, 0.5]; the log_extra column and the advantage are not summed in
        assert r["score"] == pytest.approx(r["rewards"]["upbeat"] + 0.5 * r["rewards"]["short"])
    assert [r["group"] for r in rows] == ["4:0"] * 4 + ["4:1"] * 4  # num_generations = 4 consecutive rows
    assert all(r["sampled_before_update"] == 4 for r in rows)
    assert any("log_extra columns kept beside the score" in n for n in result.notes)


def test_parquet_alone_finds_its_run_and_a_foreign_parquet_is_not_scored(tmp_path):
    import pandas as pd

    parquet = FIXTURES / "grpo_multi" / "completions" / "completions_00004.parquet"
    result = import_logs([str(parquet)])
    assert all(r["score"] is not None and "n_words" in r["extra"] for r in result.completions)
    alone = tmp_path / "completions_00001.parquet"
    pd.read_parquet(parquet).to_parquet(alone)
    result = import_logs([str(alone)])
    assert all(r["score"] is None for r in result.completions)  # which columns are rewards is not established
    assert any("not established" in n for n in result.notes)


def test_null_values_are_listed(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    state = json.loads((FIXTURES / "grpo_default" / "checkpoint-4" / "trainer_state.json").read_text())
    state["log_history"][0]["rewards/upbeat/mean"] = None  # TRL logs None when every value of the window was NaN
    state["log_history"][0]["note"] = "text"
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps(state))
    result = import_logs([str(run)])
    source = result.sources[0]
    assert source["not_numbers"]["rewards/upbeat/mean"] == {"kind": "null", "steps": [1]}
    assert source["not_numbers"]["note"]["kind"] == "str"
    assert any("not numbers" in n and "rewards/upbeat/mean" in n for n in result.notes)
