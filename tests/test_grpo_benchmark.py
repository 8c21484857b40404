"""benchmarks/grpo_vs_trl.py: the pieces its figures rest on — the shared reward, the FLOP count, the
equal-work check and the policyshift side of the setting (the timed runs themselves live in benchmarks/)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import grpo_vs_trl as grpo  # noqa: E402

from policyshift.config import validate  # noqa: E402


def test_vowel_share_reward_by_hand():
    # "Abc de!": letters a b c d e → vowels a, e: 2/5; no letters → 0; TRL's extra keyword arguments are ignored
    assert grpo.vowel_share_reward(["p"] * 3, ["Abc de!", " 12 ", "xyz"], completion_ids=None, trainer_state=None) == [0.4, 0.0, 0.0]


def test_flop_count_by_hand():
    n = 1000  # parameters
    tokens = 64 * (8 + 48)
    f0, f1 = grpo.grpo_flop_count(n, 0.0), grpo.grpo_flop_count(n, 0.04)
    assert f0["nominal_gflop"] == pytest.approx((2 * n * tokens + 3 * 2 * n * tokens) / 1e9)  # generation + fwd/bwd
    assert f1["nominal_gflop"] == pytest.approx((2 * 2 * n * tokens + 3 * 2 * n * tokens) / 1e9)  # + reference
    # dense, GPT-2 4 × 256, vocab 4096: body on every token, LM head on the 48 response positions only
    body = (2 * 12 * 256 * 256 * 4 + 2 * 2 * 256 * 28 * 4) * tokens
    head = 2 * 256 * 4096 * 64 * 48
    assert f0["dense_gflop"] == pytest.approx(4 * (body + head) / 1e9)
    assert f1["dense_rollout_gflop"] == pytest.approx(2 * (body + head) / 1e9)


def step(**over):
    it = {"generated": [{"prompt_tokens": 8, "completions": 64, "generated_tokens": 48}], "optimizer_steps": 1,
          "reference_s": 0.0, "old_logps_s": 0.0}
    return {**it, **over}


def test_equal_work_check_passes_equal_steps_and_names_the_difference():
    grpo.check_equal_work("x", [step(), step()], 0.0)
    grpo.check_equal_work("x", [step(reference_s=0.3)], 0.04)
    unequal = [
        (step(generated=[{"prompt_tokens": 8, "completions": 64, "generated_tokens": 31}]), 0.0, "sampled"),  # stopped early
        (step(generated=[{"prompt_tokens": 8, "completions": 32, "generated_tokens": 48}] * 2), 0.0, "sampled"),  # two calls
        (step(optimizer_steps=2), 0.0, "optimizer steps"),
        (step(reference_s=0.2), 0.0, "reference"),  # a reference forward at β = 0
        (step(), 0.04, "reference"),  # none at β > 0
        (step(old_logps_s=0.1), 0.0, "old logprobs"),
    ]
    for it, beta, words in unequal:
        with pytest.raises(AssertionError, match=words):
            grpo.check_equal_work("x", [step(), it], beta)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_policyshift_side_of_the_setting(tmp_path, beta):
    cfg = grpo.policyshift_config(tmp_path, 2, beta, str(tmp_path / "out"))
    validate(cfg)  # e.g. score_reference false is only valid at β = 0
    assert (cfg.rollout.batch_size, cfg.rollout.num_generations, cfg.rollout.max_new_tokens) == (64, 8, 48)
    assert not cfg.rollout.stop_at_eos
    assert (cfg.ppo.epochs, cfg.ppo.num_minibatches, cfg.ppo.grad_accum_steps) == (1, 1, 1)
    assert cfg.algorithm.advantage == "grpo" and cfg.algorithm.loss_aggregation == "token_mean"
    assert cfg.kl.score_reference == (beta > 0) and cfg.kl.estimator == "k3" and cfg.kl.placement == "loss"
    assert cfg.rollout.exact_kl  # policyshift's default; the no_exact_kl experiment turns it off
    assert not grpo.policyshift_config(tmp_path, 2, beta, str(tmp_path / "out"), ["no_exact_kl"]).rollout.exact_kl
