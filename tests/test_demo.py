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


def demo_paths(out):
    return {"sft": str(out / "sft"), "prompts": str(out / "data" / "prompts.jsonl"), "reward_model": str(out / "reward_model")}


def test_grpo_demo_runs_critic_free_and_diagnoses_the_hack(demo, tmp_path):
    """`policyshift demo --algorithm grpo`'s two runs on the same SFT model and reward model."""
    from policyshift.demo.pipeline import PPO_RUNS, PPO_STEPS, ppo_config, summarize
    from policyshift.trainer import PPOTrainer

    out, _ = demo
    summaries = {}
    for name in PPO_RUNS:
        trainer = PPOTrainer(ppo_config(name, tmp_path, demo_paths(out), PPO_STEPS["quick"], 0, algorithm="grpo"))
        trainer.train()
        assert trainer.models.critic is None and not (tmp_path / f"ppo_{name}" / "final" / "critic").exists()
        summaries[name] = summarize(tmp_path / f"ppo_{name}")
    healthy, hacked = summaries["healthy"], summaries["overoptimized"]
    assert healthy["proxy_end"] > healthy["proxy_start"] + 0.3
    assert not [f for f in healthy["findings"] if f["severity"] == "critical"]
    assert hacked["kl_end"] > 3 * healthy["kl_end"] and hacked["gold_end"] < hacked["gold_start"]
    assert {f["detector"] for f in hacked["findings"] if f["severity"] == "critical"} & HACKING_OR_REGRESSION


def test_example_configs_of_every_estimator_train(demo, tmp_path):
    from pathlib import Path

    from policyshift import PPOConfig, PPOTrainer

    out, _ = demo
    examples = sorted((Path(__file__).parents[1] / "examples" / "algorithms").glob("*.yaml"))
    assert {p.stem for p in examples} == {"gae_ppo", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"}
    paths = demo_paths(out)
    for path in examples:
        cfg = PPOConfig.from_yaml(path, {"model.policy": paths["sft"], "data.prompts": paths["prompts"], "reward.model": paths["reward_model"],
                                         "train.steps": 2, "train.output_dir": str(tmp_path / path.stem), "analysis.every": 0,
                                         "tracking.tensorboard": False})
        history = PPOTrainer(cfg).train()
        assert len(history) == 2, path.name
        assert ("value/explained_variance" in history[-1]) == (cfg.algorithm.advantage == "gae"), path.name
