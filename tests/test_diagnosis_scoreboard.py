"""The diagnosis scoreboard's judgement of a tool's flags (benchmarks/diagnosis/scoreboard.py) on hand-made facts and
findings: which flags the run's measured facts contradict, and the board's cells and totals."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "diagnosis"))

import scoreboard  # noqa: E402
from test_diagnosis_labels import HEALTHY  # noqa: E402

COLLAPSED = {**HEALTHY, "entropy_final": 0.05, "kl_token_final": 2.8, "gold_gain_sigma": 0.6, "gold_p": 0.001, "train_zero_spread_mean": 0.6}


def test_a_flag_is_contradicted_when_every_class_it_speaks_to_fails_its_label_rule():
    findings = [("entropy_collapse", "critical"), ("kl_runaway", "critical"), ("zero_spread", "critical"), ("new_phrase", "warning"),
                ("length_drift", "info"), ("some_new_family", "warning")]
    # collapse (0.05/2.5 ≤ 0.3) and KL (2.8 ≥ 0.5) hold; no signal (0.6 < 0.9 over the run) and hacking (gold rose) do not;
    # an info finding is not a flag; a detector the verdict table cannot place is not judged
    assert scoreboard.unsupported(findings, scoreboard.PS_MAP, COLLAPSED) == ["no_signal", "reward_hacking"]
    assert scoreboard.unsupported(findings, scoreboard.PS_MAP, {**COLLAPSED, "gold_gain_sigma": -0.5, "gold_p": 0.01}) == ["no_signal"]


def test_a_length_flag_is_supported_by_either_length_or_truncation():
    cut = {**HEALTHY, "truncated_final": 0.9, "train_truncated_mean": 0.85}  # truncation holds, length (3.5/3.0) does not
    assert scoreboard.unsupported([("length_drift", "warning")], scoreboard.PS_MAP, cut) == []
    assert scoreboard.unsupported([("length_drift", "warning")], scoreboard.PS_MAP, HEALTHY) == ["length_explosion", "truncation"]
    assert scoreboard.unsupported([("length_pathology", "warning")], scoreboard.RLDOCTOR_MAP, cut) == []


def test_the_board_marks_contradicted_extras_and_counts_them():
    row = {"flagged": ["collapse", "no_signal", "reward_hacking"], "hit": True, "false_alarm": None, "first_step": 20,
           "unsupported": ["no_signal", "reward_hacking"]}
    quiet = {"flagged": [], "hit": None, "false_alarm": False, "first_step": None, "unsupported": []}
    board = {"a": {"label": "collapse", "policyshift+logs": row}, "b": {"label": "healthy", "policyshift+logs": quiet}}
    text = scoreboard.markdown(board, ["policyshift+logs"])
    assert "| a | collapse | hit @ 20 (+no_signal✗, reward_hacking✗) |" in text
    assert "| b | healthy | quiet ✓ |" in text
    assert "1/1 caught, 0/1 healthy alarmed, 1/1 with a flag the facts contradict" in text
