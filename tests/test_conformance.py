"""Conformance: every named algorithm against the reference implementations' OWN code, imported from the pinned
packages of the `conform` extra (pyproject.toml; .ci/run installs verl and OpenRLHF with --no-deps) — no formula
is retyped here. Each test id names the reference function and its version.

Identical inputs — scores, per-token logprobs, masks of unequal lengths (one row of length 1), groups, values,
and garbage in the padding — go to ours and to the reference; advantages, loss values and gradients (with respect
to the new logprobs, or to a tiny model's weights for TRL) must agree. Tolerance: float64 throughout,
rtol 1e-9 / atol 1e-12, except where a reference adds its own epsilon to a count (verl's masked_mean and
seq-mean, OpenRLHF's seq-mean: / (n + 1e-8)): rtol 1e-7, stated at the assertion.

Imports, narrowest that work (nothing stubbed):
  verl 0.9.1: `verl.trainer.ppo.core_algos` — importing the `verl` package runs verl/__init__.py, which imports
    verl.protocol → ray, tensordict; core_algos itself needs omegaconf and codetiming (via verl.utils.profiler).
    Those four are the conform extra's verl dependencies; verl's own (transformers<5.11, …) are never installed.
  OpenRLHF 0.11.2: `openrlhf/models/loss.py` loaded by file path with its sibling `utils.py` (which imports
    deepspeed, our `deepspeed` extra); the package's __init__ (the actor: flash-attn) is not run.
  TRL 1.16.0: `GRPOTrainer._compute_loss` on a tiny GPT-2 (float64) built in the test.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from policyshift.advantages import AdvantageInputs, get_estimator
from policyshift.kl import kl_estimate
from policyshift.losses import LossNormalizer, aggregate_loss, policy_loss, sequence_policy_loss, value_loss

PINS = {"verl": "0.9.1", "trl": "1.16.0", "openrlhf": "0.11.2"}


def _require(dist: str):
    """The reference package at its pin. CI installs the conform extra, so there a missing one is a failure."""
    try:
        found = version(dist)
    except Exception:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{dist} not installed (pip install -e '.[conform]' and .ci/run's --no-deps line)")
    assert found == PINS[dist], f"{dist} {found} installed, the conformance tests are for {PINS[dist]}"


@pytest.fixture(scope="module")
def verl():
    _require("verl")
    from verl.trainer.ppo import core_algos

    return core_algos


@pytest.fixture(scope="module")
def openrlhf():
    """openrlhf/models/{utils,loss}.py by file path, as the submodules of a package object whose __init__ is not
    run (it imports the actor and flash-attn); the two files execute unchanged."""
    _require("openrlhf")
    spec = importlib.util.find_spec("openrlhf")
    models = Path(spec.submodule_search_locations[0]) / "models"
    name = "_openrlhf_models"
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(models)]
        sys.modules[name] = pkg
    mods = {}
    for sub in ("utils", "loss"):
        full = f"{name}.{sub}"
        if full not in sys.modules:
            s = importlib.util.spec_from_file_location(full, models / f"{sub}.py")
            m = importlib.util.module_from_spec(s)
            sys.modules[full] = m
            s.loader.exec_module(m)
        mods[sub] = sys.modules[full]
    return types.SimpleNamespace(**mods)


def close(a, b, rtol=1e-9, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------- fixed inputs
LENGTHS = [7, 3, 5, 1, 6, 4]  # unequal, one of length 1
GROUPS = [0, 0, 0, 1, 1, 1]  # two prompts × 3 samples
B, T = len(LENGTHS), max(LENGTHS)


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).to(torch.float64)
    pad = lambda x: torch.where(mask.bool(), x, torch.full_like(x, 123.0))  # noqa: E731  garbage in the padding
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.1
    new = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3  # ratios on both sides of the clip range
    ref = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.2
    return {
        "mask": mask,
        "scores": torch.tensor([1.0, 0.2, -0.5, 2.0, 2.0, -1.0], dtype=torch.float64),
        "old": pad(old), "new": pad(new), "ref": pad(ref),
        "values": pad(torch.randn(B, T, generator=g, dtype=torch.float64)),
        "adv": pad(torch.randn(B, T, generator=g, dtype=torch.float64)),
        "group_ids": torch.tensor(GROUPS),
    }


def ours(name, d, **kw):
    x = AdvantageInputs(scores=d["scores"], kl=kw.pop("kl", torch.zeros(B, T, dtype=torch.float64)), beta=kw.pop("beta", 0.0), mask=d["mask"],
                        group_ids=d["group_ids"], values=d["values"] if name == "gae" else None, **kw)
    return get_estimator(name).compute(x)


def token_scores(d):
    """verl's token_level_rewards for outcome rewards: the score on the last real token (an input, not a formula)."""
    out = torch.zeros(B, T, dtype=torch.float64)
    out[torch.arange(B), torch.tensor(LENGTHS) - 1] = d["scores"]
    return out


def on_mask(x, d):
    return torch.where(d["mask"].bool(), x, torch.zeros_like(x))


# ---------------------------------------------------------------------------- verl: advantages
@pytest.mark.parametrize("reference", ["verl-0.9.1:core_algos.compute_gae_advantage_return+openrlhf-0.11.2:models.utils.compute_reward"])
def test_verl_gae_with_kl_in_the_reward(verl, openrlhf, reference):
    """id: verl-0.9.1:core_algos.compute_gae_advantage_return — token rewards shaped by OpenRLHF 0.11.2's
    models.utils.compute_reward (score at the last token, −β·k1 on every token)."""
    d = data()
    kl = kl_estimate("k1", d["old"], d["ref"])
    rewards = openrlhf.utils.compute_reward(d["scores"], 0.1, on_mask(kl, d), action_mask=d["mask"])
    ref_adv, ref_ret = verl.compute_gae_advantage_return(rewards, on_mask(d["values"], d), d["mask"], gamma=0.95, lam=0.9)
    adv, ret = ours("gae", d, kl=kl, beta=0.1, gamma=0.95, lam=0.9, whiten=True)
    close(on_mask(adv, d), on_mask(ref_adv, d), rtol=1e-7)  # verl's whitening: / (count + 1e-8)
    close(on_mask(ret, d), on_mask(ref_ret, d))


@pytest.mark.parametrize("norm", [True, False], ids=["verl-0.9.1:core_algos.compute_grpo_outcome_advantage[std]",
                                                       "verl-0.9.1:core_algos.compute_grpo_outcome_advantage[no-std=Dr.GRPO]"])
def test_verl_grpo(verl, norm):
    d = data()
    ref, _ = verl.compute_grpo_outcome_advantage(token_scores(d), d["mask"], np.array(GROUPS), epsilon=1e-6, norm_adv_by_std_in_grpo=norm)
    adv, _ = ours("grpo", d, scale="group" if norm else "none", std_eps=1e-6)
    close(adv, ref)


@pytest.mark.parametrize("reference", ["verl-0.9.1:core_algos.compute_rloo_outcome_advantage"])
def test_verl_rloo(verl, reference):
    """id: verl-0.9.1:core_algos.compute_rloo_outcome_advantage (β = 0: verl and OpenRLHF agree)."""
    d = data()
    ref, _ = verl.compute_rloo_outcome_advantage(token_scores(d), d["mask"], np.array(GROUPS))
    close(ours("rloo", d)[0], ref)


@pytest.mark.parametrize("reference", ["verl-0.9.1:core_algos.compute_reinforce_plus_plus_outcome_advantage"])
def test_verl_reinforce_plus_plus(verl, openrlhf, reference):
    """id: verl-0.9.1:core_algos.compute_reinforce_plus_plus_outcome_advantage, γ = 0.9, k1 in the reward
    (token rewards by OpenRLHF 0.11.2's compute_reward: verl's apply_kl_penalty is the same shaping)."""
    from verl.trainer.config import AlgoConfig

    d = data()
    kl = kl_estimate("k1", d["old"], d["ref"])
    rewards = openrlhf.utils.compute_reward(d["scores"], 0.05, on_mask(kl, d), action_mask=d["mask"])
    ref, _ = verl.compute_reinforce_plus_plus_outcome_advantage(rewards, d["mask"], config=AlgoConfig(gamma=0.9))
    close(ours("reinforce_pp", d, kl=kl, beta=0.05, gamma=0.9)[0], ref, rtol=1e-7)  # verl's masked_mean: / (count + 1e-8)


@pytest.mark.parametrize("reference", ["verl-0.9.1:core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage"])
def test_verl_reinforce_plus_plus_baseline(verl, reference):
    """id: verl-0.9.1:core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage (β = 0, γ = 1)."""
    d = data()
    ref, _ = verl.compute_reinforce_plus_plus_baseline_outcome_advantage(token_scores(d), d["mask"], np.array(GROUPS))
    close(ours("reinforce_pp_baseline", d)[0], ref, rtol=1e-7)  # verl's masked_mean: / (count + 1e-8)


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_pp_baseline"],
                         ids=lambda n: f"openrlhf-0.11.2:compute_advantages_and_returns-construction[{n}]+models.utils.compute_reward+verl-0.9.1:core_algos")
def test_kl_in_the_reward_follows_openrlhf_baseline_on_the_score_only(verl, openrlhf, name):
    """With KL in the reward we deliberately follow OpenRLHF 0.11.2 (experience_maker.compute_advantages_and_returns):
    the group baseline is taken on the score alone, then models.utils.compute_reward adds −β·kl per token and the
    advantage is the reward-to-go (reinforce_baseline: then whitened). Composed from the references' own functions:
    the baseline-adjusted score from verl-0.9.1 (grpo / rloo / grpo without std = s − mean_g), the shaping from
    openrlhf-0.11.2:models.utils.compute_reward, the reward-to-go (γ = 1) and whitening from
    verl-0.9.1:core_algos.compute_reinforce_plus_plus_outcome_advantage (its `returns`; its whitened advantages).
    (verl's own grpo/rloo would subtract the baseline from score + summed KL instead.)"""
    from verl.trainer.config import AlgoConfig

    d = data()
    kl = kl_estimate("k1", d["old"], d["ref"])
    idx = np.array(GROUPS)
    if name == "grpo":
        seq = verl.compute_grpo_outcome_advantage(token_scores(d), d["mask"], idx, epsilon=1e-4)[0][:, 0]
    elif name == "rloo":
        seq = verl.compute_rloo_outcome_advantage(token_scores(d), d["mask"], idx)[0][:, 0]
    else:
        seq = verl.compute_grpo_outcome_advantage(token_scores(d), d["mask"], idx, norm_adv_by_std_in_grpo=False)[0][:, 0]
    rewards = openrlhf.utils.compute_reward(seq, 0.1, on_mask(kl, d), action_mask=d["mask"])
    whitened, returns = verl.compute_reinforce_plus_plus_outcome_advantage(rewards, d["mask"], config=AlgoConfig(gamma=1.0))
    adv, _ = ours(name, d, kl=kl, beta=0.1)
    close(adv, whitened if name == "reinforce_pp_baseline" else returns, rtol=1e-7)  # verl's whitening: / (count + 1e-8)


# ---------------------------------------------------------------------------- verl: losses and KL
AGG = {"token_mean": "token-mean", "seq_mean_token_mean": "seq-mean-token-mean", "seq_mean_token_sum_norm": "seq-mean-token-sum-norm"}
MAX_NEW = 9  # > T: Dr. GRPO's constant is the generation budget, not the padded width


def actor_config(low, high, c, **batch_info):
    from verl.workers.config import ActorConfig

    cfg = ActorConfig(strategy="fsdp", rollout_n=3, ppo_micro_batch_size_per_gpu=2, clip_ratio=low, clip_ratio_low=low, clip_ratio_high=high,
                      clip_ratio_c=c)
    cfg.global_batch_info.update(batch_info)  # as verl's workers/utils/losses.py fills it per micro-batch
    return cfg


def grad_of(fn, new):
    """fn(new) and the gradient of its sum with respect to `new`."""
    new = new.clone().requires_grad_(True)
    out = fn(new)
    (g,) = torch.autograd.grad(out.sum(), new)
    return out.detach(), g


@pytest.mark.parametrize("mode", list(AGG), ids=lambda m: f"agg_loss({AGG[m]})")
@pytest.mark.parametrize("clip", ["plain", "clip-higher", "clip-higher+dual-clip"], ids=lambda c: f"verl-0.9.1:core_algos.get_policy_loss_fn(vanilla)[{c}]")
def test_verl_vanilla_policy_loss_over_micro_batches(verl, mode, clip):
    """id: verl-0.9.1:core_algos.get_policy_loss_fn('vanilla') + agg_loss(token-mean | seq-mean-token-mean |
    seq-mean-token-sum-norm). The batch is split in two micro-batches; each one's share divides by the whole
    minibatch's sizes (verl: batch_num_tokens / global_batch_size / loss_scale_factor), and value and gradient
    of every share must agree. verl always applies a dual clip (clip_ratio_c, default 3): "plain" runs it at
    c = 1e9, where it never binds."""
    d = data()
    low, high, c = {"plain": (0.2, 0.2, 1e9), "clip-higher": (0.2, 0.28, 1e9), "clip-higher+dual-clip": (0.2, 0.28, 3.0)}[clip]
    norm = LossNormalizer(tokens=d["mask"].sum(), sequences=float(B), max_new_tokens=MAX_NEW)
    info = {"batch_num_tokens": d["mask"].sum(), "global_batch_size": float(B), "loss_scale_factor": MAX_NEW}
    vanilla = verl.get_policy_loss_fn("vanilla")
    for rows in (slice(0, 4), slice(4, 6)):
        old, adv, mask = d["old"][rows], d["adv"][rows], d["mask"][rows]
        cfg = actor_config(low, high, c, **info)
        ref_loss, ref_g = grad_of(lambda n: vanilla(old, n, on_mask(adv, {"mask": mask}), mask, loss_agg_mode=AGG[mode], config=cfg)[0], d["new"][rows])
        agg = lambda x, m: aggregate_loss(x, m, mode, norm)  # noqa: E731
        got_loss, got_g = grad_of(lambda n: policy_loss(n, old, adv, mask, low, high, None if c > 1e8 else c, agg)[0], d["new"][rows])
        rtol = 1e-7 if mode == "seq_mean_token_mean" else 1e-9  # verl: token sum / (length + 1e-8)
        close(got_loss, ref_loss, rtol=rtol)
        close(on_mask(got_g, {"mask": mask}), on_mask(ref_g, {"mask": mask}), rtol=rtol)


@pytest.mark.parametrize("reference", ["verl-0.9.1:core_algos.get_policy_loss_fn(gspo)+agg_loss(seq-mean-token-mean)"])
def test_verl_gspo_token_form_with_per_token_advantages(verl, reference):
    """id: verl-0.9.1:core_algos.get_policy_loss_fn('gspo') (the GSPO-token form, seq-mean-token-mean), with
    advantages that differ per token (KL in the reward): each token keeps its own advantage. ε 3e-4 / 4e-4 with
    log-ratios ~1e-3, so some sequences clip on each side."""
    d = data()
    new = d["old"] + (d["new"] - d["old"]) * 0.004
    cfg = actor_config(3e-4, 4e-4, 3.0)
    gspo = verl.get_policy_loss_fn("gspo")
    ref_loss, ref_g = grad_of(lambda n: gspo(d["old"], n, on_mask(d["adv"], d), d["mask"], loss_agg_mode="seq-mean-token-mean", config=cfg)[0], new)
    norm = LossNormalizer(tokens=d["mask"].sum(), sequences=float(B), max_new_tokens=MAX_NEW)
    agg = lambda x, m: aggregate_loss(x, m, "seq_mean_token_mean", norm)  # noqa: E731
    got_loss, got_g = grad_of(lambda n: sequence_policy_loss(n, d["old"], d["adv"], d["mask"], 3e-4, 4e-4, agg)[0], new)
    stats = sequence_policy_loss(new, d["old"], d["adv"], d["mask"], 3e-4, 4e-4, agg)[1]
    assert 0 < stats["seq_clip_frac"] < 1  # the clip is exercised
    close(got_loss, ref_loss, rtol=1e-7)
    close(on_mask(got_g, d), on_mask(ref_g, d), rtol=1e-7)


@pytest.mark.parametrize("mode", list(AGG), ids=lambda m: f"verl-0.9.1:core_algos.compute_value_loss[{AGG[m]}]")
def test_verl_value_loss(verl, mode):
    """id: verl-0.9.1:core_algos.compute_value_loss (clipped, ½·max of the two squared errors)."""
    d = data()
    returns = on_mask(d["adv"], d)
    old = on_mask(d["values"], d)
    norm = LossNormalizer(tokens=d["mask"].sum(), sequences=float(B), max_new_tokens=MAX_NEW)
    ref_loss, ref_g = grad_of(lambda v: verl.compute_value_loss(v, returns, old, d["mask"], 0.2, AGG[mode], loss_scale_factor=MAX_NEW)[0],
                              old + on_mask(d["new"] - d["old"], d))
    got_loss, got_g = grad_of(lambda v: value_loss(v, old, returns, d["mask"], 0.2, lambda x, m: aggregate_loss(x, m, mode, norm))[0],
                              old + on_mask(d["new"] - d["old"], d))
    close(got_loss, ref_loss, rtol=1e-7)
    close(on_mask(got_g, d), on_mask(ref_g, d), rtol=1e-7)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"], ids=lambda k: f"verl-0.9.1:core_algos.kl_penalty[{k}]")
def test_verl_kl_penalty(verl, name):
    """id: verl-0.9.1:core_algos.kl_penalty (k1, k2, k3 = low_var_kl): values and gradients as a loss term."""
    d = data()
    m = d["mask"].bool()
    ref_v, ref_g = grad_of(lambda n: verl.kl_penalty(n, d["ref"], name)[m], d["new"])
    got_v, got_g = grad_of(lambda n: kl_estimate(name, n, d["ref"])[m], d["new"])
    close(got_v, ref_v)
    close(on_mask(got_g, d), on_mask(ref_g, d))


# ---------------------------------------------------------------------------- OpenRLHF
@pytest.mark.parametrize("token_level", [True, False], ids=["token_level_loss", "per-sample"])
@pytest.mark.parametrize("dual", [None, 3.0], ids=["openrlhf-0.11.2:models.loss.PolicyLoss(ppo)[no-dual-clip]", "openrlhf-0.11.2:models.loss.PolicyLoss(ppo)[dual-clip-3]"])
def test_openrlhf_policy_loss(openrlhf, token_level, dual):
    """id: openrlhf-0.11.2:models.loss.PolicyLoss(policy_loss_type='ppo', clip_eps_low 0.2, clip_eps_high 0.28)."""
    d = data()
    fn = openrlhf.loss.PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=dual, token_level_loss=token_level)
    adv = on_mask(d["adv"], d)
    ref_loss, ref_g = grad_of(lambda n: fn(n, d["old"], adv, action_mask=d["mask"])[0], d["new"])
    mode = "token_mean" if token_level else "seq_mean_token_mean"
    norm = LossNormalizer(tokens=d["mask"].sum(), sequences=float(B), max_new_tokens=MAX_NEW)
    got_loss, got_g = grad_of(lambda n: policy_loss(n, d["old"], d["adv"], d["mask"], 0.2, 0.28, dual, lambda x, m: aggregate_loss(x, m, mode, norm))[0],
                              d["new"])
    close(got_loss, ref_loss, rtol=1e-7)  # OpenRLHF's seq mean: / (length + 1e-8)
    close(on_mask(got_g, d), on_mask(ref_g, d), rtol=1e-7)


@pytest.mark.parametrize("reference", ["openrlhf-0.11.2:models.loss.PolicyLoss(gspo)"])
def test_openrlhf_gspo_with_sequence_advantages(openrlhf, reference):
    """id: openrlhf-0.11.2:models.loss.PolicyLoss(policy_loss_type='gspo') — the paper's sequence form (gradient
    through the mean log-ratio), forced to the per-sample mean. With the advantage constant over each response
    (the outcome estimators at β = 0) it equals our GSPO-token form in value and gradient."""
    d = data()
    new = d["old"] + (d["new"] - d["old"]) * 0.004
    adv = d["scores"][:, None].expand(B, T) * d["mask"]
    fn = openrlhf.loss.PolicyLoss(clip_eps_low=3e-4, clip_eps_high=4e-4, policy_loss_type="gspo")
    ref_loss, ref_g = grad_of(lambda n: fn(n, d["old"], adv, action_mask=d["mask"])[0], new)
    norm = LossNormalizer(tokens=d["mask"].sum(), sequences=float(B), max_new_tokens=MAX_NEW)
    got_loss, got_g = grad_of(lambda n: sequence_policy_loss(n, d["old"], adv, d["mask"], 3e-4, 4e-4,
                                                             lambda x, m: aggregate_loss(x, m, "seq_mean_token_mean", norm))[0], new)
    close(got_loss, ref_loss, rtol=1e-7)
    close(on_mask(got_g, d), on_mask(ref_g, d), rtol=1e-7)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"], ids=lambda k: f"openrlhf-0.11.2:models.utils.compute_approx_kl[{k}]")
def test_openrlhf_compute_approx_kl(openrlhf, name):
    """id: openrlhf-0.11.2:models.utils.compute_approx_kl (values and pathwise gradients; |log r| < 10 here, where
    its clamps do not bind). It computes in float32 whatever the input, so both get float32 inputs: rtol 1e-6."""
    d = data()
    m = d["mask"].bool()
    new, ref = d["new"].float(), d["ref"].float()
    ref_v, ref_g = grad_of(lambda n: openrlhf.utils.compute_approx_kl(n, ref, kl_estimator=name)[m], new)
    got_v, got_g = grad_of(lambda n: kl_estimate(name, n, ref)[m], new)
    close(got_v, ref_v, rtol=1e-6, atol=1e-7)
    close(on_mask(got_g, d), on_mask(ref_g, d), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- TRL GRPOTrainer._compute_loss
@pytest.fixture(scope="module")
def trl_world(tmp_path_factory):
    _require("trl")
    import tiny

    root = tmp_path_factory.mktemp("trl-conformance")
    tok = tiny.make_tokenizer(root / "sft")
    tiny.make_policy(root / "sft", tok)
    return root, tok


# TRL ≥ 1.16 multiplies the k3 KL term by the importance ratio by default (use_bias_correction_kl, DeepSeek-V3.2), which
# makes its gradient ∇KL(π‖π_ref); policyshift's k3 loss term is the plain one (gradient ∇KL(π_ref‖π), policyshift.kl;
# k2 gives ∇KL(π‖π_ref)), so the β > 0 cases compare with use_bias_correction_kl=False.
TRL_CASES = {  # id → (GRPOConfig overrides, our aggregation, ratio level)
    "trl-1.16.0:GRPOTrainer._compute_loss[loss_type=dapo,epsilon_high=0.28,beta=0.04]":
        ({"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.04, "use_bias_correction_kl": False}, "token_mean", "token"),
    "trl-1.16.0:GRPOTrainer._compute_loss[loss_type=grpo,beta=0.04]":
        ({"loss_type": "grpo", "epsilon": 0.2, "beta": 0.04, "use_bias_correction_kl": False}, "seq_mean_token_mean", "token"),
    "trl-1.16.0:GRPOTrainer._compute_loss[loss_type=dr_grpo]":
        ({"loss_type": "dr_grpo", "epsilon": 0.2, "beta": 0.0}, "seq_mean_token_sum_norm", "token"),
    "trl-1.16.0:GRPOTrainer._compute_loss[importance_sampling_level=sequence,loss_type=grpo]":
        ({"loss_type": "grpo", "epsilon": 3e-4, "epsilon_high": 4e-4, "beta": 0.0, "importance_sampling_level": "sequence"},
         "seq_mean_token_mean", "sequence"),
}


@pytest.mark.parametrize("case", list(TRL_CASES))
def test_trl_grpo_compute_loss(trl_world, tmp_path, case):
    """TRL's GRPO loss is a method: a GRPOTrainer on a tiny GPT-2 (float64, eval mode: no gradient-accumulation
    divisor) computes it on fixed inputs — prompts, completions of unequal lengths (right padding), per-sequence
    advantages, old logprobs off the current ones so that clipping binds, reference logprobs for β > 0. Our loss on
    the same logprobs must agree in value (rtol 1e-7) and in the gradient of every weight (to 1e-6 of the largest
    gradient: the backward runs through TRL's float32 head); our own
    forward (PolicyAndCritic) must give TRL's logprobs to 2e-6 (TRL computes them in float32)."""
    from accelerate.state import AcceleratorState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from policyshift.models import PolicyAndCritic

    root, tok = trl_world
    overrides, mode, level = TRL_CASES[case]
    max_new = 6
    environ = dict(os.environ)
    try:
        args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4, max_completion_length=max_new,
                          use_cpu=True, bf16=False, report_to=[], seed=0, **overrides)
        model = AutoModelForCausalLM.from_pretrained(root / "sft", dtype=torch.float64)
        trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                              train_dataset=Dataset.from_dict({"prompt": ["a b"] * 4}), processing_class=tok)
        model = trainer.model.double()
        model.eval()

        g = torch.Generator().manual_seed(1)
        V = model.config.vocab_size
        prompt_ids = torch.randint(3, V, (4, 3), generator=g)
        # full-length prompts: with left padding TRL's forward passes no position_ids (GPT-2 then counts positions
        # from the padded start) while ours derives them from the mask, a difference of the forward, not of the loss
        prompt_mask = torch.ones(4, 3, dtype=torch.long)
        completion_ids = torch.randint(3, V, (4, max_new), generator=g)
        lengths = torch.tensor([6, 2, 4, 1])
        completion_mask = (torch.arange(max_new)[None] < lengths[:, None]).long()
        completion_ids = torch.where(completion_mask.bool(), completion_ids, tok.pad_token_id or 0)
        prompt_ids = torch.where(prompt_mask.bool(), prompt_ids, tok.pad_token_id or 0)
        advantages = torch.tensor([1.2, -0.7, 0.4, -1.5], dtype=torch.float64)

        net = PolicyAndCritic(model)
        input_ids = torch.cat([prompt_ids, completion_ids], 1)
        attention = torch.cat([prompt_mask, completion_mask], 1)
        mask = completion_mask.to(torch.float64)
        with torch.no_grad():
            current = net(input_ids, attention, completion_ids, completion_mask, 1.0, None, False)[0]
        scale = 0.0006 if level == "sequence" else 0.3
        old = current + scale * torch.randn(current.shape, generator=g, dtype=torch.float64)
        ref = current + 0.2 * torch.randn(current.shape, generator=g, dtype=torch.float64)
        inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids, "completion_mask": completion_mask,
                  "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
                  "num_items_in_batch": completion_mask.sum().to(torch.float64)}

        model.zero_grad(set_to_none=True)
        trl_loss = trainer._compute_loss(model, inputs)
        trl_loss.backward()
        trl_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        model.zero_grad(set_to_none=True)
        # TRL's fused LM head returns float32 logprobs whatever the model's dtype; ours are the model's (float64).
        # Ours must equal it to float32 precision; the loss is then compared on TRL's own logprobs (same graph), so
        # what is compared is the loss: ratio, clip, KL term, aggregation and normalizer, and its gradient.
        new = trainer._get_per_token_logps_and_entropies(model, input_ids, attention, max_new)[0]
        own = net(input_ids, attention, completion_ids, completion_mask, 1.0, None, False)[0]
        close(on_mask(own.detach(), {"mask": mask}), on_mask(new.detach().double(), {"mask": mask}), rtol=0, atol=2e-6)
        norm = LossNormalizer(tokens=mask.sum(), sequences=4.0, max_new_tokens=max_new)
        agg = lambda x, m: aggregate_loss(x, m, mode, norm)  # noqa: E731
        adv = advantages[:, None].expand_as(mask)
        if level == "sequence":
            ours_loss, stats = sequence_policy_loss(new, old, adv, mask, overrides["epsilon"], overrides["epsilon_high"], agg)
            assert 0 < stats["seq_clip_frac"] < 1  # the clip binds on some sequences
        else:
            ours_loss, stats = policy_loss(new, old, adv, mask, overrides["epsilon"], overrides.get("epsilon_high"), None, agg)
            assert stats["clip_frac"] > 0
        if overrides["beta"]:
            ours_loss = ours_loss + overrides["beta"] * agg(kl_estimate("k3", new, ref), mask)
        ours_loss.backward()
        ours_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # HF Trainer leaves process-wide state behind
        os.environ.clear()
        os.environ.update(environ)

    close(ours_loss.detach(), trl_loss.detach(), rtol=1e-7, atol=1e-10)
    assert trl_grads.keys() == ours_grads.keys() and trl_grads
    scale = max(g.abs().max().item() for g in trl_grads.values())
    for n in trl_grads:  # back through TRL's float32 head: float32 rounding, 1e-6 of the largest gradient
        close(ours_grads[n], trl_grads[n], rtol=0, atol=1e-6 * scale)


# ---------------------------------------------------------------------------- DAPO dynamic sampling, by behaviour
# The reference is not in any wheel: verl's recipe/dapo/dapo_ray_trainer.py (volcengine/verl, read at commit
# 53971be5b6822ca3767351356164c11955120ead, RayDAPOTrainer.fit, the `filter_groups` block): the metric
# `seq_final_reward` is token_level_rewards.sum(-1) — the score plus the KL penalty when use_kl_in_reward
# (apply_kl_penalty runs just before); groups are kept when np.std(metric) > 0 (or of size 1); kept groups are
# concatenated over generation batches until train_batch_size prompts, then cut to exactly that many
# (`batch[:traj_bsz]`); past max_num_gen_batches verl raises, where we fill with flat groups and count them.
from dataclasses import dataclass, fields as dc_fields, replace as dc_replace  # noqa: E402

from policyshift.advantages import group_has_signal  # noqa: E402
from policyshift.sampling import GroupPool  # noqa: E402


@dataclass
class _Round:
    """The fields of a Rollout that the pool reads (group ids, scores, a response mask)."""

    group_ids: torch.Tensor
    scores: torch.Tensor
    response_mask: torch.Tensor

    def __len__(self):
        return len(self.group_ids)

    def select(self, index):
        return dc_replace(self, **{f.name: getattr(self, f.name)[index] for f in dc_fields(self)})


def _round(first_group, scores, kl=None, beta=0.0):
    n = len(scores)
    ids = torch.arange(first_group, first_group + n // 2).repeat_interleave(2)  # groups of 2
    mask = torch.ones(n, 3)
    r = _Round(ids, torch.tensor(scores, dtype=torch.float64), mask)
    x = AdvantageInputs(scores=r.scores, kl=torch.zeros(n, 3, dtype=torch.float64) if kl is None else kl, beta=beta, mask=mask, group_ids=ids)
    return r, group_has_signal(get_estimator("grpo"), x)


@pytest.mark.parametrize("reference", ["verl-recipe/dapo@53971be:dapo_ray_trainer.fit[filter_groups]"])
def test_dapo_dynamic_sampling_drops_flat_groups_and_refills_in_arrival_order(reference):
    pool = GroupPool(need=3)
    r0, s0 = _round(0, [1.0, 1.0, 0.0, 1.0, 0.0, 0.0])  # groups 0 and 2 flat (std 0), group 1 has spread
    assert s0.tolist() == [False, True, False]
    pool.add(r0, {}, s0, r0.scores)
    assert not pool.full
    r1, s1 = _round(3, [0.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # groups 3 and 5 have spread, 4 is flat
    pool.add(r1, {}, s1, r1.scores)
    assert pool.full
    batch, _, raw, flat_kept = pool.batch()
    assert batch.group_ids.tolist() == [1, 1, 3, 3, 5, 5] and flat_kept == 0  # exactly `need` groups, in arrival order
    assert torch.equal(raw, batch.scores)


@pytest.mark.parametrize("reference", ["verl-recipe/dapo@53971be:dapo_ray_trainer.fit[filter_groups,seq_final_reward]"])
def test_dapo_dynamic_sampling_with_kl_in_the_reward_keeps_equal_score_groups(reference):
    """verl filters on seq_final_reward, which includes the KL penalty: a group with equal scores but different KL
    still has a learning signal (so does ours: its advantages are −β·kl reward-to-go)."""
    kl = torch.tensor([[0.1, 0.0, 0.2], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    _, with_kl = _round(0, [1.0, 1.0, 1.0, 1.0], kl=kl, beta=0.1)
    _, kl_as_loss = _round(0, [1.0, 1.0, 1.0, 1.0], kl=kl, beta=0.0)
    assert with_kl.tolist() == [True, False] and kl_as_loss.tolist() == [False, False]


@pytest.mark.parametrize("reference", ["verl-recipe/dapo@53971be:dapo_ray_trainer.fit[max_num_gen_batches]"])
def test_dapo_dynamic_sampling_fills_with_flat_groups_when_the_rounds_run_out(reference):
    pool = GroupPool(need=2)
    r0, s0 = _round(0, [1.0, 1.0, 0.0, 1.0])
    pool.add(r0, {}, s0, r0.scores)
    batch, _, _, flat_kept = pool.batch()
    assert batch.group_ids.tolist() == [1, 1, 0, 0] and flat_kept == 1  # the informative group first, then a flat one
