import pytest
import torch

from policyshift.masked import masked_mean, masked_sum, masked_var, masked_whiten

NAN, INF = float("nan"), float("inf")

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -50.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float64)
STD = (5 / 3) ** 0.5  # real entries 1, 2, 3, 4: mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25)/3 = 5/3


def test_masked_sum_and_mean_ignore_padding_even_nan():
    x = X.clone()
    x[1, 1:] = torch.tensor([NAN, INF])
    assert masked_sum(x, MASK).item() == 10.0
    assert masked_mean(x, MASK).item() == 2.5
    assert masked_mean(x, MASK, dim=1).tolist() == [2.0, 4.0]
    assert masked_mean(x, MASK.bool()).item() == 2.5  # bool masks too


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    assert masked_mean(X, torch.zeros_like(MASK)).item() == 0.0


def test_masked_var():
    assert masked_var(X, MASK).item() == pytest.approx(5 / 3)
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(5 / 4)


def test_masked_whiten_by_hand():
    w = masked_whiten(X, MASK)
    expected = torch.tensor([[-1.5, -0.5, 0.5], [1.5, 0.0, 0.0]], dtype=torch.float64) / STD
    expected[1, 1:] = 0.0  # padded entries come back as 0
    torch.testing.assert_close(w, expected)


def test_masked_whiten_without_shift_keeps_the_mean():
    w = masked_whiten(X, MASK, shift_mean=False)
    expected = torch.tensor([[-1.5, -0.5, 0.5], [1.5, 0.0, 0.0]], dtype=torch.float64) / STD + 2.5
    expected[1, 1:] = 0.0
    torch.testing.assert_close(w, expected)


def test_masked_whiten_padding_contents_do_not_matter():
    x = X.clone()
    x[1, 1:] = torch.tensor([NAN, -INF])
    torch.testing.assert_close(masked_whiten(x, MASK), masked_whiten(X, MASK))


# ---- masked moments --------------------------------------------------------------------------------
def test_masked_var_and_whiten_use_the_same_moments():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    mask = (torch.rand(4, 6) > 0.3).float()
    x_pad = torch.where(mask.bool(), x, torch.full_like(x, float("nan")))  # padding may hold nan
    real = x[mask.bool()]
    assert torch.allclose(masked_var(x_pad, mask), real.var(unbiased=True))
    assert torch.allclose(masked_var(x_pad, mask, unbiased=False), real.var(unbiased=False))
    w = masked_whiten(x_pad, mask)
    expected = (real - real.mean()) * torch.rsqrt(real.var(unbiased=True) + 1e-8)
    assert torch.allclose(w[mask.bool()], expected, atol=1e-6) and (w[~mask.bool()] == 0).all()
    assert torch.equal(masked_whiten(x_pad, mask, all_sum=lambda t: t), w)
    assert torch.equal(masked_whiten(x_pad, mask, shift_mean=False),
                       torch.where(mask.bool(), w + real.mean(), torch.zeros_like(w)))
    one = torch.tensor([[1.0, 0.0]])
    assert masked_var(torch.tensor([[3.0, 5.0]]), one).item() == 0.0  # one real token: no Bessel division by 0
