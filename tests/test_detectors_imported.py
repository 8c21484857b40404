"""The detectors other trainers' users ask for, on the fixtures those trainers' own code wrote
(tests/fixtures/): training–inference mismatch, degenerate groups split into all-correct / all-wrong,
truncation-poisoned reward, and the notice that a run has no KL to the reference (or only old-vs-new).
Each fires where, and only where, the fixture has the problem."""

from pathlib import Path

import pytest

from policyshift import keys as K
from policyshift.analysis.detectors import run_detectors
from policyshift.analysis.ingest import import_logs

FIXTURES = Path(__file__).parent / "fixtures"


def findings(run: str):
    imported = import_logs([str(FIXTURES / run)])
    history = [dict(values, step=step) for step, values in sorted(imported.history.items())]
    return {(f.detector, f.severity): f for f in run_detectors(history, [], distributions=imported.distributions)}


@pytest.mark.parametrize("run, expected", [
    ("trl/grpo_default", set()), ("trl/grpo_batch_seq", set()), ("trl/grpo_multi", set()), ("trl/rloo", set()),
    ("trl/rloo_no_card", set()), ("trl/dpo", set()), ("trl/sft", set()), ("verl/grpo_token_mean", set()),
    ("trl/grpo_truncated", {("truncation", "critical")}),
    ("trl/grpo_all_wrong", {("all_wrong_groups", "critical")}),
    ("verl/20251202", {("rollout_mismatch", "critical"), ("all_wrong_groups", "warning"), ("truncation", "warning")}),
    ("nemo_rl/healthy", set()), ("nemo_rl/mismatch", {("rollout_mismatch", "critical")}),
    ("prime_rl/healthy", set()), ("prime_rl/mismatch", {("rollout_mismatch", "critical")}),
])
def test_problems_found_only_where_the_fixture_has_them(run, expected):
    found = findings(run)
    assert {key for key in found if key[1] != "info"} == expected


def test_group_shares_from_the_logged_completions():
    imported = import_logs([str(FIXTURES / "trl" / "grpo_all_wrong")])
    bottoms = [imported.history[s][K.GROUP_FLAT_BOTTOM_FRAC] for s in sorted(imported.history) if K.GROUP_FLAT_BOTTOM_FRAC in imported.history[s]]
    assert len(bottoms) == 4 and sum(bottoms) / 4 >= 0.8  # the 'good' reward: ~0 for every completion of this policy
    healthy = import_logs([str(FIXTURES / "trl" / "grpo_default")])
    assert all(row.get(K.GROUP_FLAT_BOTTOM_FRAC, 0) == 0 and row.get(K.GROUP_FLAT_TOP_FRAC, 0) == 0 for row in healthy.history.values())


def test_all_correct_groups_need_the_opposite_fix():
    history = [{"step": s, K.GROUP_FLAT_TOP_FRAC: 0.9, K.GROUP_FLAT_BOTTOM_FRAC: 0.0} for s in range(1, 5)]
    found = run_detectors(history, [])
    assert [(f.detector, f.severity) for f in found] == [("all_correct_groups", "critical")]
    assert "harder prompts" in found[0].message


def test_trl_vllm_mismatch_key_reaches_the_detector():
    history = [{"step": s, "trl/sampling/sampling_logp_difference/mean": 0.2, K.ENGINE_LOGPROB_DIFF_MEAN: 0.2} for s in range(1, 4)]
    assert [(f.detector, f.severity) for f in run_detectors(history, [])] == [("rollout_mismatch", "warning")]


def test_reference_kl_notices():
    grpo = findings("trl/grpo_default")[("no_reference_kl", "info")]
    assert "no KL to the reference" in grpo.message and "β = 0" in grpo.message
    verl = findings("verl/grpo_token_mean")[("no_reference_kl", "info")]
    assert "verl/actor/kl_loss" in verl.message and "verl/actor/ppo_kl is old-vs-new" in verl.message
    assert ("no_reference_kl", "info") not in findings("trl/grpo_batch_seq")  # beta 0.04: its k3 KL is fed
    assert ("no_reference_kl", "info") not in findings("trl/dpo")  # not an RL run on its own samples
