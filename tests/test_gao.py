import math

import numpy as np
import pytest

from policyshift.analysis.gao import fit_gao, fit_reward_vs_kl, gao_curve


def test_curve_is_zero_at_origin_and_peaks_at_d_star():
    alpha, beta = 1.5, 0.5
    d_star = math.exp(alpha / beta - 1)
    assert gao_curve(0.0, alpha, beta) == 0.0
    grid = np.linspace(0.01, 3 * d_star, 4001)
    values = gao_curve(grid, alpha, beta)
    assert grid[np.argmax(values)] == pytest.approx(d_star, rel=1e-2)
    assert values.max() == pytest.approx(beta * d_star, rel=1e-4)


def test_fit_recovers_known_parameters_exactly():
    alpha, beta = 1.2, 0.4
    d = np.linspace(0.0, 12.0, 30)
    fit = fit_gao(d, gao_curve(d, alpha, beta))
    assert fit.alpha == pytest.approx(alpha, abs=1e-9)
    assert fit.beta == pytest.approx(beta, abs=1e-9)
    assert fit.meaningful
    assert fit.peak_d == pytest.approx(math.exp(alpha / beta - 1))
    assert fit.peak_gain == pytest.approx(beta * fit.peak_d)
    assert fit.peak_kl == pytest.approx(fit.peak_d**2)
    assert fit.r2 == pytest.approx(1.0)


def test_fit_recovers_parameters_from_noisy_data():
    rng = np.random.default_rng(0)
    alpha, beta = 1.0, 0.35
    d = np.linspace(0.05, 10.0, 200)
    gain = gao_curve(d, alpha, beta) + rng.normal(0, 0.05, d.size)
    fit = fit_gao(d, gain)
    assert fit.alpha == pytest.approx(alpha, abs=0.05)
    assert fit.beta == pytest.approx(beta, abs=0.03)
    assert fit.meaningful


def test_no_peak_when_beta_not_positive():
    d = np.linspace(0.1, 4, 20)
    fit = fit_gao(d, 0.8 * d + 0.1 * d * np.log(d))  # β = −0.1: reward keeps rising faster than linear
    assert fit.beta < 0
    assert fit.peak_d is None and not fit.meaningful
    assert "β" in fit.note


def test_too_few_points_is_not_meaningful():
    assert not fit_gao([0.5, 1.0, 1.5], gao_curve(np.array([0.5, 1.0, 1.5]), 1.0, 0.3)).meaningful
    empty = fit_gao([], [])
    assert math.isnan(empty.alpha) and not empty.meaningful
    assert not fit_gao([0.0, 0.0, 0.0, 0.0], [1, 2, 3, 4]).meaningful  # no spread in d


def test_fit_drops_non_finite_and_negative_d():
    d = np.array([0.0, 1.0, 2.0, 3.0, 4.0, np.nan, -1.0, 5.0])
    gain = gao_curve(np.nan_to_num(np.abs(d)), 1.0, 0.3)
    gain[0] = np.nan
    fit = fit_gao(d, gain)
    assert fit.n_points == 5
    assert fit.alpha == pytest.approx(1.0) and fit.beta == pytest.approx(0.3)


def test_fit_reward_vs_kl_uses_reward_near_zero_kl_as_baseline():
    alpha, beta, base = 1.0, 0.3, 2.5
    kl = np.linspace(0.0, 40.0, 25)
    reward = base + gao_curve(np.sqrt(kl), alpha, beta)
    fit, baseline = fit_reward_vs_kl(kl - 0.01, reward)  # slightly negative sampled KL at the start is clipped
    assert baseline == pytest.approx(base, abs=1e-2)
    assert fit.alpha == pytest.approx(alpha, abs=0.02) and fit.beta == pytest.approx(beta, abs=0.02)
    empty_fit, empty_base = fit_reward_vs_kl([], [])
    assert not empty_fit.meaningful and math.isnan(empty_base)
