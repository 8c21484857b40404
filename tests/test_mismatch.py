"""Training–inference mismatch correction (algorithm.mismatch_correction, TRL's vllm_importance_sampling_* semantics):
an engine with its own weights (here an HF copy, in bf16, against the fp32 trainer) draws the tokens; the policy loss
is weighted by π_train_old/π_engine, truncated or masked at the cap. The shared-weights HF engine has nothing to correct."""

import copy

import pytest
import torch

from policyshift import PPOTrainer
from policyshift.config import RolloutConfig
from policyshift.engines import HFEngine
from policyshift.losses import mismatch_weights
from policyshift.models import PolicyAndCritic, load_causal_lm, load_tokenizer
from policyshift.rollout import generate_rollout

PROMPTS = ["the cat", "a dog runs on the mat", "good", "very happy dog sits"] * 2


def test_mismatch_weights_follow_trls_modes():
    train = torch.tensor([[0.0, 0.0, 9.0], [-1.0, 0.0, 0.0]])
    engine = torch.tensor([[-0.5, -0.8, 0.0], [-1.0, -2.0, 0.0]])  # diffs 0.5, 0.8 | 0, 2 (position 2: padding)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    e = torch.exp
    w, s = mismatch_weights(train, engine, mask, "token_truncate", 3.0)
    torch.testing.assert_close(w, torch.tensor([[e(torch.tensor(0.5)), e(torch.tensor(0.8)), 1.0], [1.0, 3.0, 1.0]]))
    w, s = mismatch_weights(train, engine, mask, "token_mask", 3.0)
    assert w[1, 1] == 0 and s["masked_frac"] == pytest.approx(0.25)
    w, s = mismatch_weights(train, engine, mask, "sequence_mask", 3.0)  # exp(1.3) = 3.67 > 3, exp(2) = 7.4 > 3: both masked
    assert (w[mask.bool()] == 0).all() and s["masked_frac"] == 1.0 and (w[~mask.bool()] == 1).all()
    w, s = mismatch_weights(train, engine, mask, "sequence_truncate", 3.0)
    assert (w[mask.bool()] == 3.0).all() and s["is_ratio_max"] == 3.0


@pytest.fixture()
def policy(tiny_world):
    return load_tokenizer(tiny_world["policy"]), PolicyAndCritic(policy=load_causal_lm(tiny_world["policy"]))


def sampled(tok, models, engine, seed=0):
    cfg = RolloutConfig(batch_size=len(PROMPTS), max_new_tokens=10, temperature=1.0)
    return generate_rollout(models, None, tok, PROMPTS, cfg, 16, torch.Generator().manual_seed(seed), engine=engine)


def test_identical_weights_give_a_correction_of_one(policy):
    tok, models = policy
    ro = sampled(tok, models, HFEngine(copy.deepcopy(models.policy), shares_training_weights=False))
    for mode in ("sequence_mask", "token_truncate"):
        w, s = mismatch_weights(ro.logprobs, ro.engine_logprobs, ro.response_mask, mode)
        assert (w - 1).abs().max() < 1e-6 and s["masked_frac"] == 0.0


@pytest.mark.parametrize("mode", ["sequence_mask", "sequence_truncate", "token_mask", "token_truncate"])
def test_a_bf16_engine_copy_against_the_fp32_trainer(policy, mode):
    tok, models = policy
    ro = sampled(tok, models, HFEngine(copy.deepcopy(models.policy).to(torch.bfloat16), shares_training_weights=False))
    real = ro.response_mask.bool()
    assert ro.engine_logprobs is not None and (ro.logprobs - ro.engine_logprobs)[real].abs().max() > 0  # a real mismatch
    w, s = mismatch_weights(ro.logprobs, ro.engine_logprobs, ro.response_mask, mode, cap=1.02)  # a tight cap so it binds
    assert torch.isfinite(w).all() and (w >= 0).all() and (w <= 1.02).all()
    assert 0.0 <= s["masked_frac"] <= 1.0
    if mode.endswith("mask"):
        assert ((w[real] == 0) | (w[real] <= 1.02)).all()
    else:
        assert s["masked_frac"] == 0.0


def test_trainer_reports_the_correction_with_an_engine_copy_and_not_without(tiny_world, tmp_path):
    from test_train import config

    cfg = config(tiny_world, tmp_path / "run", train={"steps": 2, "save_every": 0}, analysis={"every": 0, "num_prompts": 0},
                 tracking={"tensorboard": False})
    trainer = PPOTrainer(cfg)
    plain = trainer.train()
    assert not any(k.startswith("rollout/is_") for k in plain[-1])  # the shared-weights engine: no correction
    cfg = config(tiny_world, tmp_path / "run2", train={"steps": 2, "save_every": 0}, analysis={"every": 0, "num_prompts": 0},
                 tracking={"tensorboard": False})
    trainer = PPOTrainer(cfg)
    trainer.engine = HFEngine(copy.deepcopy(trainer.models.policy).to(torch.bfloat16), shares_training_weights=False)
    h = trainer.train()
    for r in h:
        assert 0 <= r["rollout/is_masked_frac"] <= 1 and 0 <= r["rollout/is_ratio_min"] <= r["rollout/is_ratio_mean"] <= r["rollout/is_ratio_max"] <= 3.0


def test_first_minibatch_ratio_is_one_under_bf16_autocast_with_the_shared_engine(tiny_world, tmp_path, monkeypatch):
    """The old logprobs come from the sampler, under the same autocast as the update: before any step the first
    minibatch's ratio is 1."""
    import policyshift.trainer as T
    from test_train import config

    seen = []
    real = T.policy_loss
    monkeypatch.setattr(T, "policy_loss", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    cfg = config(tiny_world, tmp_path / "run", train={"steps": 1, "save_every": 0, "mixed_precision": "bf16"},
                 analysis={"every": 0, "num_prompts": 0}, tracking={"tensorboard": False})
    PPOTrainer(cfg).train()
    first = seen[0][1]
    # Exactly 1 where the CPU's bf16 kernels round the same for the sampler's incremental forwards and the update's
    # full-sequence one (seen on CI machines); on an AVX2-only AMD EPYC they do not: ratio mean 1 + 2.7e-5 and
    # approx_kl 7.6e-9 with the autocast shared, 1 + 4.7e-5 and 5.7e-8 with the sampler left in fp32 (the bug this
    # guards). approx_kl (k3 of the ratio: the mean of (r − 1) − log r ≈ ½(log r)² per token) tells them apart on both.
    stats = {k: v.item() for k, v in first.items()}
    assert abs(stats["ratio_mean"] - 1) < 1e-4 and stats["approx_kl"] < 2e-8, stats
