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
