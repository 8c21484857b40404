import math

import pytest
import torch

from policyshift.losses import entropy_bonus, explained_variance, policy_loss, value_loss

EPS = 0.2
NAN, INF = float("nan"), float("inf")


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# (advantage, ratio, per-token loss, clipped branch active, d loss / d new_logprob)
# loss = max(−Aρ, −A·clip(ρ, 0.8, 1.2));  d(−Aρ)/d log ρ = −Aρ, the clipped branch is constant.
FOUR_CASES = [
    (+1.0, 1.5, -1.2, True, 0.0),  # A > 0, ρ above 1+ε: max(−1.5, −1.2) = −1.2 → clipped, no push further
    (+1.0, 0.5, -0.5, False, -0.5),  # A > 0, ρ below 1−ε: max(−0.5, −0.8) = −0.5 → unclipped, pulled up
    (-1.0, 1.5, 1.5, False, 1.5),  # A < 0, ρ above 1+ε: max(1.5, 1.2) = 1.5 → unclipped, still pushed down
    (-1.0, 0.5, 0.8, True, 0.0),  # A < 0, ρ below 1−ε: max(0.5, 0.8) = 0.8 → clipped, no push further
]


@pytest.mark.parametrize("adv, ratio, loss_expected, clipped, grad_expected", FOUR_CASES)
def test_policy_loss_four_sign_clip_cases(adv, ratio, loss_expected, clipped, grad_expected):
    new = t([[math.log(ratio)]]).requires_grad_()
    loss, stats = policy_loss(new, t([[0.0]]), t([[adv]]), t([[1.0]]), EPS)
    assert loss.item() == pytest.approx(loss_expected)
    assert stats["clip_frac"].item() == float(clipped)
    loss.backward()
    assert new.grad.item() == pytest.approx(grad_expected, abs=0.0)  # exactly 0 where clipped
    assert (new.grad.item() == 0.0) == clipped


def test_policy_loss_batch_of_four_cases():
    adv = t([[c[0] for c in FOUR_CASES]])
    new = t([[math.log(c[1]) for c in FOUR_CASES]]).requires_grad_()
    old = t([[0.0] * 4])
    loss, stats = policy_loss(new, old, adv, t([[1, 1, 1, 1]]), EPS)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    # approx_kl = mean((ρ − 1) − log ρ); ratios 1.5, 0.5, 1.5, 0.5
    k3 = lambda r: (r - 1) - math.log(r)  # noqa: E731
    assert stats["approx_kl"].item() == pytest.approx((k3(1.5) + k3(0.5)) / 2)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["ratio_var"].item() == pytest.approx(4 * 0.25 / 3)  # unbiased over 4 tokens
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    loss.backward()
    torch.testing.assert_close(new.grad, t([[0.0, -0.5 / 4, 1.5 / 4, 0.0]]))


def test_policy_loss_inside_trust_region_is_unclipped():
    new = t([[math.log(1.1)]]).requires_grad_()
    loss, stats = policy_loss(new, t([[0.0]]), t([[2.0]]), t([[1.0]]), EPS)
    assert loss.item() == pytest.approx(-2.2)
    assert stats["clip_frac"].item() == 0.0  # the two terms tie: not counted as clipped
    loss.backward()
    assert new.grad.item() == pytest.approx(-2.2)  # d(−Aρ)/d log ρ = −Aρ


def test_policy_loss_ignores_padding():
    new_real, old_real = t([[-1.0, -2.0], [-0.5, -3.0]]), t([[-1.2, -1.5], [-0.4, -3.3]])
    adv_real = t([[1.0, -2.0], [0.5, 3.0]])
    mask_real = t([[1, 1], [1, 1]])
    # same tokens plus a padded column of junk: huge log-ratio (exp → inf), nan advantage
    new_pad = torch.cat([new_real, t([[500.0], [NAN]])], 1).requires_grad_()
    old_pad = torch.cat([old_real, t([[-500.0], [0.0]])], 1)
    adv_pad = torch.cat([adv_real, t([[NAN], [INF]])], 1)
    mask_pad = torch.cat([mask_real, t([[0], [0]])], 1)

    new_real.requires_grad_()
    loss0, stats0 = policy_loss(new_real, old_real, adv_real, mask_real, EPS)
    loss1, stats1 = policy_loss(new_pad, old_pad, adv_pad, mask_pad, EPS)
    torch.testing.assert_close(loss1, loss0)
    for k in stats0:
        torch.testing.assert_close(stats1[k], stats0[k])
    loss0.backward()
    loss1.backward()
    torch.testing.assert_close(new_pad.grad[:, :2], new_real.grad)
    assert (new_pad.grad[:, 2] == 0).all()  # finite, and exactly 0 on padding


def test_value_loss_both_branches_by_hand():
    eps_v = 0.2
    old = t([[1.0, 1.0, 1.0]])
    new = t([[1.5, 1.5, 1.1]]).requires_grad_()
    ret = t([[2.0, 1.0, 0.0]])
    loss, stats = value_loss(new, old, ret, t([[1, 1, 1]]), eps_v)
    # token 0: v_clip = 1.2; (1.5−2)² = 0.25 < (1.2−2)² = 0.64 → clipped branch, no gradient
    # token 1: v_clip = 1.2; (1.5−1)² = 0.25 > (1.2−1)² = 0.04 → unclipped branch
    # token 2: |1.1 − 1| < 0.2 so v_clip = 1.1; both 1.21 → tie, not counted as clipped
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.25 + 1.21) / 3)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    loss.backward()
    # d/dV of ½·mean((V − R)²) = (V − R)/3 on the unclipped tokens
    torch.testing.assert_close(new.grad, t([[0.0, 0.5 / 3, 1.1 / 3]]))


def test_value_loss_ignores_padding():
    old, new, ret = t([[1.0, 0.0]]), t([[1.5, 0.1]]), t([[2.0, -1.0]])
    new.requires_grad_()
    loss0, stats0 = value_loss(new, old, ret, t([[1, 1]]), 0.2)
    new_pad = torch.cat([new.detach(), t([[INF, 1e30]])], 1).requires_grad_()
    old_pad, ret_pad = torch.cat([old, t([[NAN, 0.0]])], 1), torch.cat([ret, t([[5.0, -1e30]])], 1)
    loss1, stats1 = value_loss(new_pad, old_pad, ret_pad, t([[1, 1, 0, 0]]), 0.2)
    torch.testing.assert_close(loss1, loss0)
    torch.testing.assert_close(stats1["clip_frac"], stats0["clip_frac"])
    loss0.backward()
    loss1.backward()
    torch.testing.assert_close(new_pad.grad, torch.cat([new.grad, t([[0.0, 0.0]])], 1))


def test_entropy_bonus_is_masked_mean():
    ent = t([[1.0, 2.0, 30.0], [4.0, NAN, INF]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    assert entropy_bonus(ent, mask).item() == pytest.approx(7.0 / 3)


def test_explained_variance_by_hand():
    returns = t([[1.0, 2.0, 3.0], [4.0, 9.0, NAN]])
    values = t([[1.0, 2.0, 3.0], [3.0, -9.0, INF]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    # real: R = (1, 2, 3, 4), R − V = (0, 0, 0, 1)
    # Var[R] = 5/3; Var[R − V] = (3·0.25² + 0.75²)/3 = 0.25  →  EV = 1 − 0.25/(5/3) = 0.85
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.85)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(returns), returns, mask).item() == pytest.approx(0.0)


def test_explained_variance_nan_on_constant_returns():
    returns = torch.full((2, 3), 0.1, dtype=torch.float64)  # float mean of 0.1s is not exactly 0.1
    assert math.isnan(explained_variance(torch.zeros_like(returns), returns, torch.ones(2, 3)).item())
    assert math.isnan(explained_variance(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2)).item())


# ---- loss shapes (issue: aggregation, clip-higher, dual clip, GSPO) -----------------------------------------
from policyshift.losses import AGGREGATIONS, LossNormalizer, aggregate_loss, sequence_policy_loss  # noqa: E402

# two micro-batches of one minibatch whose sequences differ in length: per-token losses l
MB1 = (t([[1.0, 2.0, 3.0, 4.0], [5.0, 0.0, 0.0, 0.0]]), t([[1, 1, 1, 1], [1, 0, 0, 0]]))  # lengths 4, 1
MB2 = (t([[6.0, 6.0, 0.0, 0.0]]), t([[1, 1, 0, 0]]))  # length 2
NORM = LossNormalizer(tokens=7.0, sequences=3.0, max_new_tokens=8)


def test_aggregations_by_hand_on_sequences_of_different_length():
    def total(mode, norm1=NORM, norm2=NORM):
        return (aggregate_loss(*MB1, mode, norm1) + aggregate_loss(*MB2, mode, norm2)).item()

    # token mean over all 7 tokens of the minibatch: (1+2+3+4+5+6+6)/7 = 27/7
    assert total("token_mean") == pytest.approx(27 / 7)
    # sequence mean of token means: (10/4 + 5/1 + 12/2)/3 = (2.5 + 5 + 6)/3 = 4.5
    assert total("seq_mean_token_mean") == pytest.approx(4.5)
    # Dr. GRPO: token sum over N · max_new_tokens = 27/(3·8)
    assert total("seq_mean_token_sum_norm") == pytest.approx(27 / 24)
    # before 0.2: each micro-batch's token mean, averaged: (15/5 + 12/2)/2 = 4.5 — the 2-token micro-batch weighs
    # as much as the 5-token one
    per_mb = lambda n: LossNormalizer(tokens=n * 2, sequences=3.0, max_new_tokens=8)  # noqa: E731
    assert total("micro_batch_token_mean", per_mb(5.0), per_mb(2.0)) == pytest.approx(4.5)
    assert len({round(total(m), 6) for m in AGGREGATIONS if m != "micro_batch_token_mean"}) == 3  # the modes differ here


def test_token_mean_over_one_micro_batch_is_the_masked_mean():
    per_token, mask = MB1
    norm = LossNormalizer(tokens=mask.sum(), sequences=2.0, max_new_tokens=8)
    assert aggregate_loss(per_token, mask, "token_mean", norm).item() == masked_mean_ref(per_token, mask)


def masked_mean_ref(x, mask):
    return (x * mask).sum().item() / mask.sum().item()


# (advantage, ratio, loss, which clip is active, d loss / d log ρ) with ε_low 0.2, ε_high 0.28, dual clip c = 3
ASYM_DUAL_CASES = [
    (+1.0, 1.25, -1.25, None, -1.25),  # inside [0.8, 1.28] for A > 0: clip-higher leaves it unclipped
    (+1.0, 1.5, -1.28, "high", 0.0),  # above 1 + ε_high: clipped at 1.28
    (+1.0, 0.5, -0.5, None, -0.5),  # A > 0 below 1 − ε_low: the unclipped branch (it may still rise)
    (-1.0, 0.5, 0.8, "low", 0.0),  # A < 0 below 1 − ε_low: clipped at 0.8
    (-1.0, 2.0, 2.0, None, 2.0),  # A < 0, ρ = 2 < c: unclipped, pushed down
    (-1.0, 5.0, 3.0, "dual", 0.0),  # A < 0, ρ = 5 > c = 3: the dual clip bounds the loss at −c·A = 3, no gradient
]


@pytest.mark.parametrize("adv, ratio, loss_expected, active, grad_expected", ASYM_DUAL_CASES)
def test_clip_higher_and_dual_clip_sign_by_clip_cases(adv, ratio, loss_expected, active, grad_expected):
    new = t([[math.log(ratio)]]).requires_grad_()
    loss, stats = policy_loss(new, t([[0.0]]), t([[adv]]), t([[1.0]]), 0.2, clip_range_high=0.28, dual_clip=3.0)
    assert loss.item() == pytest.approx(loss_expected)
    assert stats["clip_frac_low"].item() == float(active == "low")
    assert stats["clip_frac_high"].item() == float(active == "high")
    assert stats["dual_clip_frac"].item() == float(active == "dual")
    loss.backward()
    assert new.grad.item() == pytest.approx(grad_expected, abs=0.0)


def test_symmetric_clip_is_unchanged_by_the_new_options():
    adv = t([[c[0] for c in FOUR_CASES]])
    new = t([[math.log(c[1]) for c in FOUR_CASES]])
    a, _ = policy_loss(new, t([[0.0] * 4]), adv, t([[1, 1, 1, 1]]), EPS)
    b, stats = policy_loss(new, t([[0.0] * 4]), adv, t([[1, 1, 1, 1]]), EPS, clip_range_high=EPS)
    assert a.item() == b.item() and "dual_clip_frac" not in stats


def test_gspo_sequence_ratio_and_no_per_token_clipping():
    # one response of two tokens with ratios 2.0 and 0.5: each far outside [1 − ε, 1 + ε], but the sequence
    # ratio exp(mean(log 2, log 0.5)) = 1, so nothing is clipped and both tokens get gradient
    new = t([[math.log(2.0), math.log(0.5), 0.0]]).requires_grad_()
    mask = t([[1, 1, 0]])
    loss, stats = sequence_policy_loss(new, t([[0.0, 0.0, 0.0]]), t([[1.0, 1.0, 0.0]]), mask, 3e-4, 4e-4)
    assert stats["seq_ratio_mean"].item() == pytest.approx(1.0) and stats["seq_clip_frac"].item() == 0.0
    assert loss.item() == pytest.approx(-1.0)
    loss.backward()
    # the paper's gradient: −A·s·(1/|y|) on every token of the sequence (token mean over 2 tokens → ×1 here)
    torch.testing.assert_close(new.grad, t([[-0.5, -0.5, 0.0]]))
    # the token-level surrogate would have clipped the first token (ratio 2 > 1.2): no gradient there
    new_tok = t([[math.log(2.0), math.log(0.5), 0.0]]).requires_grad_()
    policy_loss(new_tok, t([[0.0, 0.0, 0.0]]), t([[1.0, 1.0, 0.0]]), mask, 0.2)[0].backward()
    assert new_tok.grad[0, 0].item() == 0.0


def test_gspo_clips_the_sequence_ratio():
    # two responses: ratios (1.01, 1.01) → s = 1.01 > 1 + 4e-4 with A > 0: clipped, no gradient;
    # (1.0001,) → s inside [1 − 3e-4, 1 + 4e-4]: unclipped
    new = t([[math.log(1.01), math.log(1.01)], [math.log(1.0001), 0.0]]).requires_grad_()
    mask = t([[1, 1], [1, 0]])
    loss, stats = sequence_policy_loss(new, torch.zeros(2, 2, dtype=torch.float64), t([[1.0, 1.0], [1.0, 0.0]]), mask, 3e-4, 4e-4)
    assert stats["seq_ratio_max"].item() == pytest.approx(1.01) and stats["seq_ratio_min"].item() == pytest.approx(1.0001)
    assert stats["seq_clip_frac"].item() == pytest.approx(0.5)
    # token mean over 3 tokens: (−1.0004·2 − 1.0001)/3
    assert loss.item() == pytest.approx((-1.0004 * 2 - 1.0001) / 3)
    loss.backward()
    assert new.grad[0].abs().max().item() == 0.0 and new.grad[1, 0].item() != 0.0
