import pytest
import torch

from policyshift.advantages import compute_gae, last_token_index, shape_rewards, whiten_advantages

NAN, INF = float("nan"), float("inf")


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_by_hand_with_padding():
    gamma, lam = 0.9, 0.8  # γλ = 0.72
    rewards = t([[0.1, -0.2, 1.0], [0.5, 2.0, 99.0]])  # row 1: 2 real tokens + 1 pad holding junk
    values = t([[0.5, 0.4, 0.3], [1.0, -1.0, 50.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)

    # row 0 (V after the last token = 0):
    #   δ2 = 1.0 + 0.9·0   − 0.3 =  0.7
    #   δ1 = −0.2 + 0.9·0.3 − 0.4 = −0.33
    #   δ0 = 0.1 + 0.9·0.4 − 0.5 = −0.04
    #   A2 = 0.7;  A1 = −0.33 + 0.72·0.7 = 0.174;  A0 = −0.04 + 0.72·0.174 = 0.08528
    #   returns = A + V = (0.58528, 0.574, 1.0)
    # row 1 (the pad's V = 50 and r = 99 must not enter):
    #   δ1 = 2.0 + 0.9·0 − (−1.0) = 3.0;  δ0 = 0.5 + 0.9·(−1.0) − 1.0 = −1.4
    #   A1 = 3.0;  A0 = −1.4 + 0.72·3.0 = 0.76;  returns = (1.76, 2.0, 0)
    torch.testing.assert_close(adv, t([[0.08528, 0.174, 0.7], [0.76, 3.0, 0.0]]))
    torch.testing.assert_close(ret, t([[0.58528, 0.574, 1.0], [1.76, 2.0, 0.0]]))


def test_gae_padding_contents_do_not_matter():
    mask = t([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    rewards = t([[0.3, 1.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4], [0.0] * 4])
    values = t([[0.2, -0.1, 0.0, 0.0], [0.5, 0.4, 0.3, 0.2], [0.0] * 4])
    adv0, ret0 = compute_gae(rewards, values, mask, 0.95, 0.9)
    junk_r, junk_v = rewards.clone(), values.clone()
    junk_r[0, 2:], junk_v[0, 2:] = t([NAN, 7.0]), t([INF, -3.0])
    junk_r[2], junk_v[2] = t([1.0, NAN, 2.0, 3.0]), t([4.0, 5.0, INF, 6.0])
    adv1, ret1 = compute_gae(junk_r, junk_v, mask, 0.95, 0.9)
    torch.testing.assert_close(adv1, adv0)
    torch.testing.assert_close(ret1, ret0)
    assert (adv1[mask == 0] == 0).all() and (ret1[mask == 0] == 0).all()


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    g = torch.Generator().manual_seed(0)
    B, T = 4, 6
    lengths = torch.tensor([6, 3, 1, 5])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    adv, ret = compute_gae(rewards, values, mask, 1.0, 1.0)
    for b in range(B):
        n = int(lengths[b])
        reward_to_go = torch.flip(torch.cumsum(torch.flip(rewards[b, :n], [0]), 0), [0])
        torch.testing.assert_close(adv[b, :n], reward_to_go - values[b, :n])
        torch.testing.assert_close(ret[b, :n], reward_to_go)
        assert (adv[b, n:] == 0).all()


def test_gae_lambda_zero_is_one_step_td():
    rewards, values, mask = t([[1.0, 2.0, 3.0]]), t([[0.5, 0.25, 0.125]]), t([[1, 1, 1]])
    adv, _ = compute_gae(rewards, values, mask, 0.5, 0.0)
    # δ_t = r_t + 0.5 V_{t+1} − V_t
    torch.testing.assert_close(adv, t([[1.0 + 0.125 - 0.5, 2.0 + 0.0625 - 0.25, 3.0 - 0.125]]))


def test_gae_outputs_are_detached():
    values = t([[0.5, 0.4]]).requires_grad_()
    adv, ret = compute_gae(t([[0.0, 1.0]]), values, t([[1, 1]]), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    assert last_token_index(mask).tolist() == [2, 0, -1, 1]
    assert last_token_index(mask).tolist() == (mask.sum(1) - 1).tolist()  # same thing for prefix masks
    assert last_token_index(torch.tensor([[0, 1, 1, 0]])).tolist() == [2]  # still right with left padding


def test_shape_rewards():
    beta = 0.1
    scores = t([2.0, -1.0, 5.0])
    kl = t([[0.5, -0.2, 1.0], [0.3, NAN, INF], [0.7, 0.7, 0.7]])  # junk on the padding
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    rewards = shape_rewards(scores, kl, beta, mask)
    expected = t(
        [
            [-0.05, 0.02, -0.1 + 2.0],  # −βkl everywhere, score added at the last real token (t = 2)
            [-0.03 - 1.0, 0.0, 0.0],  # one real token: it is also the last one
            [0.0, 0.0, 0.0],  # no real tokens: the score (5.0) is dropped
        ]
    )
    torch.testing.assert_close(rewards, expected)


def test_shape_rewards_float_mask_and_float32():
    rewards = shape_rewards(torch.tensor([1.0]), torch.zeros(1, 4), 0.2, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    assert rewards.dtype == torch.float32
    assert rewards.tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_whiten_advantages_is_masked():
    adv = t([[1.0, 2.0, 3.0], [4.0, 100.0, -50.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    w = whiten_advantages(adv, mask)
    # real entries 1, 2, 3, 4: mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25)/3 = 5/3
    std = (5 / 3) ** 0.5
    torch.testing.assert_close(w, t([[-1.5 / std, -0.5 / std, 0.5 / std], [1.5 / std, 0.0, 0.0]]))
    assert w[mask.bool()].mean().abs() < 1e-12
    assert w[mask.bool()].std().item() == pytest.approx(1.0)
