"""The diagnosis corpus's label rules (benchmarks/diagnosis/labels.py) on hand-made facts: each class from the facts
that define it, the order (a cause before its symptoms), and a run no rule fits dropped."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "diagnosis"))

import labels  # noqa: E402

HEALTHY = {"proxy_gain_sigma": 0.6, "proxy_p": 0.001, "gold_gain_sigma": 0.3, "gold_p": 0.04, "kl_token_final": 0.12, "length_ref": 3.0,
           "length_final": 3.5, "truncated_final": 0.0, "train_truncated_mean": 0.0, "entropy_ref": 2.5, "entropy_final": 2.4,
           "distinct_ref": 0.8, "distinct_final": 0.9, "train_zero_spread_mean": 0.05, "engine_logprob_diff_mean": 0.0}


def test_each_class_from_its_facts():
    assert labels.label(HEALTHY) == "healthy"
    assert labels.label({**HEALTHY, "gold_gain_sigma": -0.5, "gold_p": 0.01}) == "reward_hacking"
    assert labels.label({**HEALTHY, "gold_gain_sigma": -0.5, "gold_p": 0.2}) is None  # gold not *measured* to fall: dropped, not hacking
    assert labels.label({**HEALTHY, "length_final": 6.0}) == "length_explosion"  # 6 / 3 = 2.0 ≥ 2
    assert labels.label({**HEALTHY, "entropy_final": 0.7}) == "collapse"  # 0.7 / 2.5 = 0.28 ≤ 0.3
    assert labels.label({**HEALTHY, "kl_token_final": 0.5}) == "kl_blowup"
    assert labels.label({**HEALTHY, "truncated_final": 0.9, "train_truncated_mean": 0.85}) == "truncation"
    assert labels.label({**HEALTHY, "train_zero_spread_mean": 1.0, "proxy_gain_sigma": 0.0, "proxy_p": 1.0}) == "no_signal"
    assert labels.label({**HEALTHY, "engine_logprob_diff_mean": 0.3, "kl_token_final": 0.7}) == "mismatch"  # the cause, not the KL


def test_a_run_no_rule_fits_is_dropped():
    assert labels.label({**HEALTHY, "proxy_p": 0.3}) is None  # learned nothing significant, nothing went wrong
    assert labels.label({**HEALTHY, "kl_token_final": 0.4}) is None  # between healthy (≤ 0.3) and a blow-up (≥ 0.5)
    assert labels.label({}) is None
