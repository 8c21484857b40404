import math

import numpy as np
import pytest
import torch

from policyshift.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, adaptive_beta, kl_estimate, kl_k1, kl_k2, kl_k3, make_kl_controller
from kl_reference import entropy_from_logits, exact_kl_from_logits, logprobs_from_logits

# Two categorical distributions over 5 outcomes, far apart: p is the policy, q the reference.
P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
Q = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.5], dtype=torch.float64)
N = 200_000


def exact_kl(p, q):
    return float((p * (p.log() - q.log())).sum())


def exact_k2_mean(p, q):
    # E_p[½ (log q/p)²]: what the k2 estimator converges to (not KL in general)
    return float((p * 0.5 * (q.log() - p.log()) ** 2).sum())


@pytest.fixture(scope="module")
def samples():
    """(logprobs, ref_logprobs) of N tokens drawn from P with a fixed generator."""
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(P, N, replacement=True, generator=g)
    return P.log()[x], Q.log()[x]


def mean_and_se(v):
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


def test_exact_values_of_the_test_distributions():
    # by hand: 0.5 ln10 + 0.2 ln2 + 0 + 0.1 ln(1/2) + 0.05 ln(1/10) = 0.45 ln10 + 0.1 ln2
    assert exact_kl(P, Q) == pytest.approx(0.45 * math.log(10) + 0.1 * math.log(2), rel=1e-12)


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_estimators_converge_to_exact_kl(samples, name):
    mean, se = mean_and_se(KL_ESTIMATORS[name](*samples))
    assert abs(mean - exact_kl(P, Q)) < 4 * se


def test_k2_converges_to_its_second_order_expectation_not_kl(samples):
    mean, se = mean_and_se(kl_k2(*samples))
    kl, k2_expected = exact_kl(P, Q), exact_k2_mean(P, Q)
    assert abs(mean - k2_expected) < 4 * se  # it estimates E_p[½(log r)²] ...
    assert abs(k2_expected - kl) > 20 * se  # ... which, for far-apart p, q, is measurably not KL
    assert np.sign(mean - kl) == np.sign(k2_expected - kl)  # biased in the predicted direction


def test_k2_bias_is_third_order_for_close_distributions():
    # KL = E[−log r], E[r] = 1 ⇒ KL = E[½(log r)²] + O(|log r|³): the relative bias shrinks ∝ δ
    rel = []
    for delta in [0.1, 0.01]:
        q = P * torch.exp(delta * torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0], dtype=torch.float64))
        q = q / q.sum()
        rel.append(abs(exact_k2_mean(P, q) - exact_kl(P, q)) / exact_kl(P, q))
    assert rel[1] < rel[0] / 5
    assert rel[1] < 0.05


def test_signs(samples):
    assert (kl_k2(*samples) >= 0).all()
    assert (kl_k3(*samples) >= 0).all()
    assert (kl_k1(*samples) < 0).any()  # unbiased yet negative on tokens where q(x) > p(x)


def test_estimators_on_one_token_by_hand():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # r = 1/2
    assert kl_k1(lp, ref).item() == pytest.approx(math.log(2))
    assert kl_k2(lp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_k3(lp, ref).item() == pytest.approx(0.5 - 1 + math.log(2))


def test_k3_finite_for_extreme_log_ratios():
    lp = torch.zeros(2, requires_grad=True)
    ref = torch.tensor([100.0, -100.0])  # log r = ±100: exp(100) = inf in float32
    k3 = kl_k3(lp, ref)
    assert torch.isfinite(k3).all() and (k3 >= 0).all()
    # the clamp at ±20 gives the boundary values
    assert k3[0].item() == pytest.approx(math.exp(20) - 1 - 20, rel=1e-5)
    assert k3[1].item() == pytest.approx(math.exp(-20) - 1 + 20, rel=1e-5)
    k3.sum().backward()
    assert torch.isfinite(lp.grad).all()
    # for an ordinary ratio the clamp changes nothing
    assert kl_k3(torch.tensor([0.0]), torch.tensor([3.0])).item() == pytest.approx(math.exp(3) - 1 - 3)


def test_kl_estimate_dispatch_and_bad_name():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -0.5])
    for name, fn in KL_ESTIMATORS.items():
        torch.testing.assert_close(kl_estimate(name, lp, ref), fn(lp, ref))
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        kl_estimate("k4", lp, ref)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_exact_kl_from_logits_matches_numpy(temperature):
    rng = np.random.default_rng(0)
    logits, ref_logits = rng.normal(size=(2, 3, 7)) * 3, rng.normal(size=(2, 3, 7)) * 3
    logp, logq = np_log_softmax(logits / temperature), np_log_softmax(ref_logits / temperature)
    expected = (np.exp(logp) * (logp - logq)).sum(-1)
    got = exact_kl_from_logits(torch.from_numpy(logits), torch.from_numpy(ref_logits), temperature)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    if temperature != 1.0:  # the temperature really is applied
        at_t1 = exact_kl_from_logits(torch.from_numpy(logits), torch.from_numpy(ref_logits))
        assert not np.allclose(got.numpy(), at_t1.numpy())


def test_exact_kl_from_logits_known_values():
    assert exact_kl_from_logits(P.log(), Q.log()).item() == pytest.approx(exact_kl(P, Q), rel=1e-12)
    x = torch.randn(4, 9)
    torch.testing.assert_close(exact_kl_from_logits(x, x + 5.0), torch.zeros(4))  # softmax is shift-invariant
    # a vocabulary entry masked with −inf in both: 0·log(0/0) counts as 0, not nan
    masked = torch.tensor([0.0, 1.0, float("-inf")])
    ref = torch.tensor([1.0, 0.0, float("-inf")])
    p, q = torch.softmax(masked[:2], -1), torch.softmax(ref[:2], -1)
    assert exact_kl_from_logits(masked, ref).item() == pytest.approx(float((p * (p / q).log()).sum()))


def test_entropy_from_logits():
    # p = (1/2, 1/4, 1/4): H = ½ ln2 + 2·¼ ln4 = 1.5 ln2
    logits = torch.tensor([math.log(2.0), 0.0, 0.0])
    assert entropy_from_logits(logits).item() == pytest.approx(1.5 * math.log(2))
    assert entropy_from_logits(torch.zeros(3, 11)).tolist() == pytest.approx([math.log(11)] * 3)
    # temperature 2 on logits (ln4, 0, 0) gives the same p as above
    assert entropy_from_logits(torch.tensor([math.log(4.0), 0.0, 0.0]), temperature=2.0).item() == pytest.approx(
        1.5 * math.log(2)
    )
    assert entropy_from_logits(torch.tensor([0.0, float("-inf")])).item() == 0.0  # one-hot, −inf masked


def test_entropy_and_exact_kl_gradients_finite_with_masked_vocab():
    logits = torch.tensor([0.5, 1.0, float("-inf")], requires_grad=True)
    ref = torch.tensor([0.0, 2.0, float("-inf")])
    (entropy_from_logits(logits) + exact_kl_from_logits(logits, ref)).backward()
    assert torch.isfinite(logits.grad[:2]).all()


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_logprobs_from_logits(temperature):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 5, (2, 3), generator=g)
    got = logprobs_from_logits(logits, tokens, temperature)
    assert got.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            z = logits[b, t] / temperature
            expected = z[tokens[b, t]].item() - math.log(sum(math.exp(v) for v in z.tolist()))
            assert got[b, t].item() == pytest.approx(expected, rel=1e-12)


BETA, TARGET, HORIZON, N_STEPS = 0.1, 6.0, 10_000, 256  # n_steps/horizon = 0.0256


@pytest.mark.parametrize(
    "kl, expected",
    [
        (6.6, 0.1 * (1 + 0.1 * 0.0256)),  # above target: e = 6.6/6 − 1 = 0.1
        (5.4, 0.1 * (1 - 0.1 * 0.0256)),  # below target: e = −0.1
        (6.0, 0.1),  # on target: e = 0
        (60.0, 0.1 * (1 + 0.2 * 0.0256)),  # far above: e = 9 clipped to +0.2
        (0.0, 0.1 * (1 - 0.2 * 0.0256)),  # far below: e = −1 clipped to −0.2
    ],
)
def test_adaptive_beta_by_hand(kl, expected):
    assert adaptive_beta(BETA, kl, TARGET, HORIZON, N_STEPS) == pytest.approx(expected, rel=1e-12)


def test_adaptive_beta_accepts_tensor_kl():
    assert adaptive_beta(BETA, torch.tensor(6.6), TARGET, HORIZON, N_STEPS) == pytest.approx(0.1 * 1.00256)


def test_fixed_controller():
    c = FixedKLController(0.05)
    c.update(100.0, 256)
    assert c.beta == 0.05
    d = c.state_dict()
    assert d == {"beta": 0.05}
    c2 = FixedKLController(1.0)
    c2.load_state_dict(d)
    assert c2.beta == 0.05


def test_adaptive_controller_and_state_dict_round_trip():
    c = AdaptiveKLController(BETA, TARGET, HORIZON)
    c.update(6.6, N_STEPS)
    assert c.beta == pytest.approx(0.1 * 1.00256)
    c.update(60.0, N_STEPS)
    assert c.beta == pytest.approx(0.1 * 1.00256 * 1.00512)
    restored = AdaptiveKLController(1.0, 1.0, 1.0)
    restored.load_state_dict(c.state_dict())
    assert restored.state_dict() == c.state_dict() == {"beta": c.beta, "target": TARGET, "horizon": HORIZON}
    c.update(3.0, N_STEPS)
    restored.update(3.0, N_STEPS)
    assert restored.beta == c.beta


def test_make_kl_controller():
    assert isinstance(make_kl_controller("fixed", 0.1, TARGET, HORIZON), FixedKLController)
    c = make_kl_controller("adaptive", 0.1, TARGET, HORIZON)
    assert isinstance(c, AdaptiveKLController) and (c.beta, c.target, c.horizon) == (0.1, TARGET, HORIZON)
    with pytest.raises(ValueError, match="adaptive"):
        make_kl_controller("pid", 0.1, TARGET, HORIZON)


# ---- entropy: same values and gradients as p·(log p − 0) with 0·(−inf) = 0 -------------------------
def _entropy_reference(logp):
    p = logp.exp()
    return -(p * torch.where(p > 0, logp - torch.zeros_like(logp), torch.zeros_like(logp))).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_entropy_matches_reference_bitwise_with_masked_logits(dtype):
    from policyshift.kl import entropy_from_logprobs

    torch.manual_seed(0)
    logits = (torch.randn(2, 3, 17) * 4).to(dtype)
    logits[0, 0, 2] = float("-inf")
    logits[1, 2, :5] = float("-inf")
    w = torch.randn(2, 3).to(dtype)
    out = []
    for fn in (entropy_from_logprobs, _entropy_reference):
        x = logits.clone().requires_grad_(True)
        h = fn(torch.log_softmax(x, -1))
        (h * w).sum().backward()
        out.append((h.detach(), x.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert torch.isfinite(out[0][0]).all() and torch.isfinite(out[0][1]).all()


def test_entropy_and_kl_of_a_one_hot_distribution_are_zero():
    from policyshift.kl import exact_kl_from_logprobs

    logits = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    assert entropy_from_logits(logits).item() == 0.0
    logp = torch.log_softmax(logits, -1)
    assert exact_kl_from_logprobs(logp, logp).item() == 0.0
