"""The embedded default end to end (`policyshift demo --quick`): the pipeline's real outcomes."""

import json

import pytest

from policyshift.cli import main

HACKING_OR_REGRESSION = {"reward_hacking", "kl_runaway", "length_drift", "repetition_rise", "entropy_collapse", "mode_collapse"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--seed", "0"]) == 0
    return out, json.loads((out / "demo_summary.json").read_text())


def test_reward_model_is_clearly_better_than_chance(demo):
    _, s = demo
    assert s["reward_model"]["eval_accuracy"] > 0.75


def test_healthy_run_improves_without_critical_findings(demo):
    _, s = demo
    healthy = s["runs"]["healthy"]
    assert healthy["proxy_end"] > healthy["proxy_start"] + 0.3
    assert not [f for f in healthy["findings"] if f["severity"] == "critical"]


def test_overoptimized_run_drifts_and_is_diagnosed(demo):
    _, s = demo
    healthy, hacked = s["runs"]["healthy"], s["runs"]["overoptimized"]
    assert hacked["kl_end"] > 3 * healthy["kl_end"]
    assert hacked["proxy_end"] > hacked["proxy_start"]
    fired = {f["detector"] for f in hacked["findings"] if f["severity"] in ("warning", "critical")}
    assert fired & HACKING_OR_REGRESSION, fired


def test_every_stage_left_its_artifacts(demo):
    out, s = demo
    for path in ("data/texts.jsonl", "data/prompts.jsonl", "data/pairs.jsonl", "sft/config.json", "reward_model/config.json",
                 "ppo_healthy/report.html", "ppo_overoptimized/report.html", "ppo_healthy/final/config.json"):
        assert (out / path).is_file(), path
    assert set(s["times_s"]) >= {"data", "sft", "reward_model", "ppo_healthy", "ppo_overoptimized", "total"}
