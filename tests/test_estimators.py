"""The advantage-estimator registry, by hand: 2 groups × 3 responses with padding, group 1 with zero spread."""

import math

import pytest
import torch

from policyshift.advantages import ESTIMATORS, AdvantageInputs, get_estimator, group_mean_std, zero_spread
from policyshift.metrics import advantage_metrics

EPS = 1e-4
SCORES = torch.tensor([1.0, 0.0, 2.0, 0.5, 0.5, 0.5], dtype=torch.float64)
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])
LENGTHS = torch.tensor([3, 1, 2, 2, 3, 1])
MASK = (torch.arange(3)[None, :] < LENGTHS[:, None]).double()


def inputs(**kw):
    base = dict(scores=SCORES, kl=torch.zeros(6, 3, dtype=torch.float64), beta=0.0, mask=MASK, group_ids=GROUPS, std_eps=EPS)
    return AdvantageInputs(**{**base, **kw})


def on_tokens(per_sequence):
    """A sequence advantage on every real token (γ = 1, no KL in the reward), 0 on padding."""
    return torch.tensor(per_sequence, dtype=torch.float64)[:, None] * MASK


def test_registry_declares_needs():
    assert {name: (e.needs_critic, e.needs_groups) for name, e in ESTIMATORS.items()} == {
        "gae": (True, False), "grpo": (False, True), "rloo": (False, True),
        "reinforce_pp": (False, False), "reinforce_pp_baseline": (False, True)}
    for e in ESTIMATORS.values():
        assert e.compute.__doc__ and e.paper  # each documents its paper's definition


def test_group_statistics():
    mean, std = group_mean_std(SCORES, GROUPS)
    # group 0: mean 1, unbiased std sqrt((0 + 1 + 1)/2) = 1; group 1: 0.5 and 0
    torch.testing.assert_close(mean, torch.tensor([1, 1, 1, .5, .5, .5], dtype=torch.float64))
    torch.testing.assert_close(std, torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.float64))
    assert zero_spread(SCORES, GROUPS).tolist() == [False, True]
    # ids need not be sorted or contiguous
    shuffled = torch.tensor([7, 3, 7, 3, 7, 3])
    assert zero_spread(torch.tensor([1.0, 2, 1, 2, 1, 2]), shuffled).tolist() == [True, True]


def test_grpo_group_scale():
    adv, returns = get_estimator("grpo").compute(inputs(scale="group"))
    # (r − mean)/(std + eps): group 0 → (0, −1, 1)/(1 + 1e-4); the flat group → 0/(0 + eps) = 0
    torch.testing.assert_close(adv, on_tokens([0, -1 / (1 + EPS), 1 / (1 + EPS), 0, 0, 0]))
    assert returns is None


def test_dr_grpo_is_grpo_without_the_std():
    adv, _ = get_estimator("grpo").compute(inputs(scale="none"))
    torch.testing.assert_close(adv, on_tokens([0, -1, 1, 0, 0, 0]))


def test_grpo_batch_scale():
    # batch std of all six scores: mean 0.75, Σ(x − m)² = 0.0625 + 0.5625 + 1.5625 + 3·0.0625 = 2.375, /5 → 0.475
    batch_std = math.sqrt(0.475)
    adv, _ = get_estimator("grpo").compute(inputs(scale="batch"))
    d = batch_std + EPS
    torch.testing.assert_close(adv, on_tokens([0, -1 / d, 1 / d, 0, 0, 0]))


def test_rloo_is_leave_one_out_and_n_over_n_minus_one():
    adv, _ = get_estimator("rloo").compute(inputs())
    # r_i − mean of the other two: 1 − (0+2)/2 = 0; 0 − (1+2)/2 = −1.5; 2 − (1+0)/2 = 1.5; the flat group 0
    torch.testing.assert_close(adv, on_tokens([0, -1.5, 1.5, 0, 0, 0]))
    mean, _ = group_mean_std(SCORES, GROUPS)
    torch.testing.assert_close(adv[:, 0], 3 / 2 * (SCORES - mean))  # n/(n−1)·(r − mean)


def test_reinforce_pp_baseline_whitens_over_the_batch_tokens():
    adv, _ = get_estimator("reinforce_pp_baseline").compute(inputs())
    # r − group mean = (0, −1, 1, 0, 0, 0) on 12 real tokens: nine 0s, one −1 (row 1), two 1s (row 2).
    # mean 1/12; unbiased var (Σx² − n·m²)/(n − 1) = (3 − 1/12)/11
    m, var = 1 / 12, (3 - 1 / 12) / 11
    expected = (on_tokens([0, -1, 1, 0, 0, 0]) - m) / math.sqrt(var + 1e-8) * MASK
    torch.testing.assert_close(adv, expected)
    assert abs(float(adv[MASK.bool()].mean())) < 1e-12


def test_reinforce_pp_rewards_to_go_with_kl_in_the_reward_then_whitening():
    # two rows, kl in the reward with β = 0.5, γ = 0.5: r_t = −0.5·kl_t + s at the last real token
    scores = torch.tensor([2.0, -1.0], dtype=torch.float64)
    kl = torch.tensor([[0.2, 0.4, 9.0], [1.0, 9.0, 9.0]], dtype=torch.float64)  # 9s sit on padding
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float64)
    x = AdvantageInputs(scores=scores, kl=kl, beta=0.5, mask=mask, group_ids=torch.tensor([0, 1]), gamma=0.5)
    adv, _ = get_estimator("reinforce_pp").compute(x)
    # row 0: r = (−0.1, −0.2 + 2) = (−0.1, 1.8); G = (−0.1 + 0.5·1.8, 1.8) = (0.8, 1.8)
    # row 1: r = (−0.5 − 1) = (−1.5,); G = (−1.5,)
    g = torch.tensor([0.8, 1.8, -1.5], dtype=torch.float64)
    whitened = (g - g.mean()) / torch.sqrt(g.var() + 1e-8)
    torch.testing.assert_close(adv[mask.bool()], whitened)
    assert (adv[~mask.bool()] == 0).all()


def test_kl_in_the_reward_works_with_group_estimators():
    # GRPO advantage (r − mean)/(std + eps) at the last token, −β·kl_t on each token, reward-to-go (γ = 1)
    kl = torch.full((6, 3), 0.2, dtype=torch.float64)
    adv, _ = get_estimator("grpo").compute(inputs(kl=kl, beta=0.5, scale="none"))
    seq = torch.tensor([0, -1, 1, 0, 0, 0], dtype=torch.float64)
    tokens_left = (LENGTHS[:, None] - torch.arange(3)[None, :]).clamp(min=0).double()  # tokens from t to the end
    torch.testing.assert_close(adv, (seq[:, None] - 0.5 * 0.2 * tokens_left) * MASK)


def test_gae_entry_is_whitened_gae():
    from policyshift.advantages import compute_gae, shape_rewards, whiten_advantages

    values = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    adv, returns = get_estimator("gae").compute(inputs(values=values, gamma=0.9, lam=0.8))
    raw, ret = compute_gae(shape_rewards(SCORES, torch.zeros(6, 3, dtype=torch.float64), 0.0, MASK), values, MASK, 0.9, 0.8)
    torch.testing.assert_close(adv, whiten_advantages(raw, MASK))
    torch.testing.assert_close(returns, ret)


def test_advantage_and_group_metrics():
    adv, _ = get_estimator("grpo").compute(inputs(scale="none"))
    m = advantage_metrics(adv, MASK, SCORES, GROUPS, num_generations=3)
    real = adv[MASK.bool()]
    assert m["advantage/mean"] == pytest.approx(float(real.mean()))
    assert m["advantage/std"] == pytest.approx(float(real.std()))
    assert m["advantage/max_abs"] == pytest.approx(1.0)
    assert m["group/reward_std_mean"] == pytest.approx(0.5)  # (1 + 0)/2
    assert m["group/zero_spread_frac"] == pytest.approx(0.5)
    assert "group/zero_spread_frac" not in advantage_metrics(adv, MASK, SCORES, GROUPS, num_generations=1)
