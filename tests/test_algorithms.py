"""Critic-free estimators end to end on a tiny GPT-2: each raises a Python reward with finite positive KL,
leaves no critic anywhere, keeps its groups whole (skip, resume), and hands reward functions the prompt
rows' extra fields."""

import json
import signal

import pytest
import torch

import tiny
from policyshift import PPOConfig, PPOTrainer
from policyshift.checkpoint import list_checkpoints
from policyshift.cli import main
from policyshift.config import ConfigError
from test_train import config as train_config
from tiny import assert_same_metrics, cli, rows

pytestmark = pytest.mark.slow


def config(world, out, advantage="grpo", n=4, **sections):
    """test_train's PPO config with a critic-free estimator, n samples per prompt and no TensorBoard."""
    base = {"rollout": {"batch_size": 16, "max_new_tokens": 10, "num_generations": n}, "algorithm": {"advantage": advantage},
            "kl": {"beta": 0.05}, "tracking": {"tensorboard": False}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return train_config(world, out, **base)


def mean(history, key):
    return sum(r[key] for r in history) / len(history)


@pytest.fixture(scope="module")
def grpo_run(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo") / "run"
    # TRL/verl style: KL as a loss term with k3
    trainer = PPOTrainer(config(tiny_world, out, kl={"beta": 0.05, "placement": "loss", "estimator": "k3"}))
    return out, trainer.train(), trainer


CASES = {  # estimator → (n, extra config)
    "rloo": (4, {}),
    "reinforce_pp": (1, {"kl": {"beta": 0.05, "estimator": "k1"}}),  # its paper's recommendation: k1 in the reward; no groups needed
    "reinforce_pp_baseline": (4, {}),
    # no division by the group std: advantages are raw reward differences (~0.1 here, not ~1); rewards standardized
    # by their running moments (reward.normalize) give them a unit scale, as a user of Dr. GRPO would
    "dr_grpo": (4, {"algorithm": {"advantage": "grpo", "scale": "none"}, "reward": {"function": "tiny:good_fraction", "normalize": True}}),
}


def check_learns(h):
    start, end = mean(h[:5], "reward/score_mean"), mean(h[-5:], "reward/score_mean")
    assert end > start + 0.3, (start, end)
    kl_end = mean(h[-5:], "kl/seq_mean")
    assert 0 < kl_end < 50 and all(torch.isfinite(torch.tensor(r["kl/seq_mean"])) for r in h)
    assert mean(h[-5:], "kl/exact_seq_mean") > 0


def test_grpo_raises_the_reward_with_finite_positive_kl(grpo_run):
    check_learns(grpo_run[1])


@pytest.mark.parametrize("name", list(CASES))
def test_every_estimator_raises_the_reward(tiny_world, tmp_path, name):
    n, extra = CASES[name]
    advantage = extra.get("algorithm", {}).get("advantage", name)
    cfg = config(tiny_world, tmp_path / "run", advantage, n, analysis={"every": 0, "num_prompts": 2}, train={"save_every": 0}, **extra)
    check_learns(PPOTrainer(cfg).train())


def test_a_critic_free_run_leaves_no_critic_anywhere(grpo_run):
    out, h, trainer = grpo_run
    assert trainer.models.critic is None and trainer.models.value_head is None
    assert not any(name.startswith(("critic", "value_head")) for name, _ in trainer.models.named_parameters())
    for ckpt in list_checkpoints(out):
        assert not (ckpt / "critic").exists()
    assert not (out / "final" / "critic").exists() and (out / "final" / "config.json").is_file()
    keys = set().union(*h)
    assert not {k for k in keys if k.startswith("value/") or k == "loss/value"}
    # what group runs log instead
    for key in ("group/reward_std_mean", "group/zero_spread_frac", "advantage/mean", "advantage/std", "advantage/max_abs", "loss/kl"):
        assert key in h[-1], key
    assert all(0 <= r["group/zero_spread_frac"] <= 1 for r in h)
    # the same shift analysis as PPO: reference + policy samples, per-token KL colouring, a report
    samples = rows(out / "samples.jsonl")
    assert sorted({(s["step"], s["model"]) for s in samples}) == [(0, "reference"), (15, "policy"), (30, "policy")]
    assert all(len(s["token_log_ratio"]) == s["length"] for s in samples)
    assert (out / "report.html").is_file()


def test_groups_are_n_samples_of_one_prompt(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path / "run", train={"steps": 1, "save_every": 0, "save_rollouts": True}, analysis={"every": 0, "num_prompts": 0})
    PPOTrainer(cfg).train()
    (dump,) = torch.load(tmp_path / "run" / "rollouts" / "step-1.pt", weights_only=False)
    ids = dump["group_ids"].tolist()
    assert ids == [g for g in range(4) for _ in range(4)]  # 16 episodes = 4 prompts × 4 samples, adjacent
    for g in range(4):
        assert len({dump["prompts"][i] for i in range(16) if ids[i] == g}) == 1
    assert dump["returns"] is None and dump["values"] is None


def test_resumed_grpo_run_matches_the_uninterrupted_one(tiny_world, tmp_path):
    def write(out):
        path = tmp_path / "config.json"
        cfg = config(tiny_world, out, rollout={"batch_size": 8, "max_new_tokens": 8, "num_generations": 4},
                     reward={"function": "tiny:good_fraction", "normalize": True},
                     analysis={"every": 3, "num_prompts": 2}, train={"steps": 6, "save_every": 2, "num_threads": 1})
        path.write_text(json.dumps(cfg.to_dict()))  # JSON is YAML
        return path

    # only the killed run is a subprocess (see test_resume.py): the others are `policyshift train` in this process
    ref = tmp_path / "ref"
    assert main(["train", "--config", str(write(ref))]) == 0
    out = tmp_path / "run"
    killed = cli("--config", str(write(out)), fault="kill_in_update:5")  # in the middle of step 5's optimizer pass
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(out)][-1] == "step-4"
    assert main(["train", "--resume", str(out)]) == 0
    assert_same_metrics(rows(ref / "metrics.jsonl"), rows(out / "metrics.jsonl"))
    assert not (out / "final" / "critic").exists()


def test_skipped_nonfinite_reward_drops_the_whole_group(tiny_world, tmp_path):
    calls = []

    def reward(prompts, responses):
        calls.append(1)
        out = tiny.good_fraction(prompts, responses)
        if len(calls) == 1:
            out[5] = float("nan")  # episode 5 belongs to group 1 (episodes 4..7)
        return out

    cfg = config(tiny_world, tmp_path / "run", reward={"function": None, "on_nonfinite": "skip"},
                 train={"steps": 2, "save_every": 0}, analysis={"every": 0, "num_prompts": 0})
    h = PPOTrainer(cfg, reward=reward).train()
    assert h[0]["reward/nonfinite_skipped"] == 4 and h[1]["reward/nonfinite_skipped"] == 0
    dist = rows(tmp_path / "run" / "distributions.jsonl")
    assert len(dist[0]["scores"]) == 12 and len(dist[1]["scores"]) == 16


def test_reward_functions_get_the_prompt_rows_fields(tiny_world, tmp_path):
    prompts = tiny.write_prompts_with_answers(tmp_path / "qa.jsonl")
    cfg = config(tiny_world, tmp_path / "run", data={"prompts": str(prompts)}, reward={"function": "tiny:says_the_answer"},
                 train={"steps": 2, "save_every": 0}, analysis={"every": 0, "num_prompts": 2})
    h = PPOTrainer(cfg).train()  # says_the_answer asserts each answer arrived beside its own prompt
    assert len(h) == 2 and all(torch.isfinite(torch.tensor(r["reward/score_mean"])) for r in h)
    samples = rows(tmp_path / "run" / "samples.jsonl")  # the fixed-prompt evaluations score with the fields too
    assert samples and all(s["score"] is not None for s in samples)
    # a function that takes no extra fields keeps working on the same rows
    cfg = config(tiny_world, tmp_path / "run2", data={"prompts": str(prompts)}, train={"steps": 1, "save_every": 0},
                 analysis={"every": 0, "num_prompts": 0})
    assert len(PPOTrainer(cfg).train()) == 1


def test_beta_zero_can_skip_the_reference(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path / "run", kl={"beta": 0.0, "score_reference": False}, train={"steps": 2, "save_every": 0},
                 analysis={"every": 2, "num_prompts": 2})
    h = PPOTrainer(cfg).train()
    assert not [k for k in h[-1] if k.startswith("kl/") and k != "kl/beta"]
    samples = rows(tmp_path / "run" / "samples.jsonl")  # the fixed-prompt evaluations still measure KL to the reference
    assert {s["step"] for s in samples} == {0, 2} and all(isinstance(s["seq_kl"], float) for s in samples)
    assert (tmp_path / "run" / "report.html").is_file()


@pytest.mark.parametrize("overrides,message", [
    ({"rollout": {"batch_size": 16, "num_generations": 3}}, "must divide rollout.batch_size"),
    ({"rollout": {"batch_size": 16, "num_generations": 1}}, "set rollout.num_generations >= 2"),
    ({"model": {"policy": "x", "share_critic_backbone": True}}, "model.share_critic_backbone configures a critic"),
    ({"model": {"policy": "x", "critic": "some/critic"}}, "model.critic configures a critic"),
    ({"kl": {"beta": 0.1, "score_reference": False}}, "needs kl.beta 0"),
    # loss shapes
    ({"ppo": {"clip_range": 0.2, "clip_range_high": 0.1}}, "must be >= ppo.clip_range"),
    ({"ppo": {"dual_clip": 1.0}}, "ppo.dual_clip must be > 1"),
    ({"algorithm": {"advantage": "grpo", "ratio_level": "sequence"}, "ppo": {"dual_clip": 3.0}}, "ppo.dual_clip clips token ratios"),
    ({"algorithm": {"advantage": "grpo", "ratio_level": "sequence"}, "ppo": {"clip_range_high": 0.28}}, "ppo.clip_range_high clips token ratios"),
    ({"algorithm": {"advantage": "reinforce_pp", "dynamic_sampling": True}, "rollout": {"batch_size": 16, "num_generations": 1}},
     "dynamic_sampling drops groups"),
    ({"algorithm": {"advantage": "grpo", "max_sampling_rounds": 0}}, "max_sampling_rounds must be >= 1"),
    # a config named after a paper computes that paper's objective
    ({"algorithm": {"advantage": "grpo", "ratio_level": "sequence"}}, "GSPO\\) averages over responses: set algorithm.loss_aggregation seq_mean_token_mean"),
    ({"algorithm": {"advantage": "grpo", "ratio_level": "sequence", "loss_aggregation": "seq_mean_token_sum_norm"}}, "got seq_mean_token_sum_norm"),
    ({"kl": {"placement": "loss"}}, "kl.estimator k1 has zero expected gradient .*use k2 .* or k3"),
    ({"kl": {"placement": "loss", "estimator": "k1", "beta": 0.1}}, "zero expected gradient"),
])
def test_bad_algorithm_settings_fail_in_one_line(overrides, message):
    base = {"algorithm": {"advantage": "grpo"}, "rollout": {"batch_size": 16, "num_generations": 4}}
    for k, v in overrides.items():
        base[k] = {**base.get(k, {}), **v}
    with pytest.raises(ConfigError, match=message) as exc:
        PPOConfig.from_dict(base)
    assert "\n" not in str(exc.value)


def test_a_group_must_not_span_processes():
    from policyshift.trainer import check_world_size

    cfg = PPOConfig.from_dict({"algorithm": {"advantage": "grpo"}, "rollout": {"batch_size": 8, "num_generations": 4}})
    with pytest.raises(ConfigError, match="2 prompts\\) must split evenly into 4 processes"):
        check_world_size(cfg, 4)  # 8 episodes = 2 prompts: 4 processes would split groups
    check_world_size(cfg, 2)


def test_cli_one_line_for_a_group_estimator_without_groups(tiny_world, tmp_path, capsys):
    code = main(["train", "--model.policy", tiny_world["policy"], "--data.prompts", tiny_world["prompts"],
                 "--reward.function", "tiny:good_fraction", "--algorithm.advantage", "rloo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "num_generations >= 2" in err[0]


@pytest.mark.parametrize("flags,message", [
    (["--algorithm.ratio_level", "sequence"], "algorithm.ratio_level sequence (GSPO) averages over responses"),
    (["--kl.placement", "loss", "--kl.beta", "0.1"], "kl.placement loss with kl.estimator k1 has zero expected gradient"),
])
def test_cli_refuses_what_is_not_the_named_algorithm_before_any_model_loads(tmp_path, flags, message):
    # the policy path does not exist: a refusal that came after loading would be a different error
    proc = cli("--model.policy", str(tmp_path / "no-model"), "--data.prompts", str(tmp_path / "no.jsonl"), "--reward.function",
               "tiny:good_fraction", "--algorithm.advantage", "grpo", "--rollout.num_generations", "4", "--rollout.batch_size", "8", *flags)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and message in err[0], proc.stderr


def test_dr_grpo_example_is_dr_grpo():
    from pathlib import Path

    cfg = PPOConfig.from_yaml(Path(__file__).parents[1] / "examples" / "algorithms" / "dr_grpo.yaml")
    assert (cfg.algorithm.advantage, cfg.algorithm.scale, cfg.algorithm.loss_aggregation) == ("grpo", "none", "seq_mean_token_sum_norm")


def test_dynamic_sampling_updates_the_normalizer_from_kept_episodes_only(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path / "run", reward={"function": None, "normalize": True},
                 algorithm={"advantage": "grpo", "dynamic_sampling": True, "max_sampling_rounds": 3},
                 kl={"beta": 0.0, "placement": "loss", "estimator": "k3"}, train={"steps": 2, "save_every": 0}, analysis={"every": 0, "num_prompts": 0})
    trainer = PPOTrainer(cfg, reward=good_or_nothing)
    h = trainer.train()
    assert any(r["sampling/dropped_groups"] > 0 for r in h)  # rounds were thrown away …
    assert trainer.moments.count == h[-1]["episodes"] == 2 * 16  # … and only the kept episodes reached the normalizer


# ---- loss shapes: GSPO, DAPO (clip-higher + token mean + dynamic sampling) ------------------------------------
def test_gspo_raises_the_reward(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path / "run", algorithm={"advantage": "grpo", "ratio_level": "sequence", "loss_aggregation": "seq_mean_token_mean"},
                 kl={"beta": 0.05, "placement": "loss", "estimator": "k3"}, analysis={"every": 0, "num_prompts": 2}, train={"save_every": 0})
    h = PPOTrainer(cfg).train()
    check_learns(h)
    for key in ("gspo/seq_ratio_mean", "gspo/seq_ratio_min", "gspo/seq_ratio_max", "gspo/seq_clip_frac"):
        assert key in h[-1], key
    assert all(r["gspo/seq_ratio_min"] <= r["gspo/seq_ratio_mean"] <= r["gspo/seq_ratio_max"] for r in h)


def test_dapo_raises_the_reward(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path / "run", algorithm={"advantage": "grpo", "loss_aggregation": "token_mean", "dynamic_sampling": True},
                 ppo={"lr": 3e-3, "num_minibatches": 2, "clip_range_high": 0.28}, kl={"beta": 0.0},
                 analysis={"every": 0, "num_prompts": 2}, train={"save_every": 0})
    h = PPOTrainer(cfg).train()
    start, end = mean(h[:5], "reward/score_mean"), mean(h[-5:], "reward/score_mean")
    assert end > start + 0.3, (start, end)
    assert all(r["sampling/rounds"] >= 1 and "ppo/clip_frac_high" in r for r in h)
    # a batch with no flat group kept has no zero-spread group in it
    assert all(r["group/zero_spread_frac"] == 0 for r in h if r["sampling/flat_groups_kept"] == 0)


def good_or_nothing(prompts, responses):
    """A binary verifiable reward: 1 when the response contains 'good' — many groups are all-0 or all-1."""
    return [float("good" in r.split()) for r in responses]


def test_dynamic_sampling_fills_the_batch_with_groups_that_have_spread(tiny_world, tmp_path):
    # KL as a loss: a group's advantages are 0 exactly when its scores are equal (with KL in the reward they rarely are)
    cfg = config(tiny_world, tmp_path / "run", reward={"function": None}, algorithm={"advantage": "grpo", "dynamic_sampling": True,
                 "max_sampling_rounds": 8}, kl={"beta": 0.05, "placement": "loss", "estimator": "k3"}, train={"steps": 3, "save_every": 0},
                 analysis={"every": 0, "num_prompts": 0})
    h = PPOTrainer(cfg, reward=good_or_nothing).train()
    dist = rows(tmp_path / "run" / "distributions.jsonl")
    for r, d in zip(h, dist):
        assert len(d["scores"]) == 16  # always a full batch of 4 groups × 4
        if r["sampling/flat_groups_kept"] == 0:
            assert r["group/zero_spread_frac"] == 0.0
        # every sampled group is in the batch, dropped as flat, or left over with spread after the batch was full
        assert r["sampling/dropped_groups"] + r["sampling/flat_groups_kept"] <= 4 * r["sampling/rounds"]
    assert any(r["sampling/rounds"] > 1 for r in h)  # flat groups were dropped and refilled


def test_dynamic_sampling_stops_at_its_bound_when_every_group_is_flat(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path / "run", reward={"function": None}, algorithm={"advantage": "grpo", "dynamic_sampling": True,
                 "max_sampling_rounds": 3}, kl={"beta": 0.05, "placement": "loss", "estimator": "k3"}, train={"steps": 2, "save_every": 0},
                 analysis={"every": 0, "num_prompts": 0})
    h = PPOTrainer(cfg, reward=lambda prompts, responses: [1.0] * len(responses)).train()
    for r in h:
        assert r["sampling/rounds"] == 3  # the bound
        assert r["sampling/flat_groups_kept"] == 4  # the batch is filled with flat groups: its shape is kept
        assert r["sampling/dropped_groups"] == 3 * 4 - 4  # every other flat group sampled was dropped
        assert r["group/zero_spread_frac"] == 1.0 and r["advantage/max_abs"] == 0.0  # (KL is a loss term here, not in the reward)
    assert h[-1]["episodes"] == 2 * 16
