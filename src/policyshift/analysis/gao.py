"""The RL-form reward over-optimization curve of Gao, Schulman & Hilton (2022),
"Scaling Laws for Reward Model Overoptimization":

    R(d) = d (α − β log d),   d = √KL(π‖π_ref)  (sequence KL, nats)

R is the reward *gain* over the reference policy (R(0) = 0). The curve rises, peaks at
d* = exp(α/β − 1) with R(d*) = β d*, then falls: past d* extra KL buys less (gold) reward.
R is linear in (α, β) — R = α·d − β·(d log d) — so ordinary least squares fits it exactly, with no
initial guesses or iterations that could fail on a short, noisy run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Fewer points than this and two free parameters fit noise, not a curve.
MIN_FIT_POINTS = 4


@dataclass(frozen=True)
class GaoFit:
    alpha: float
    beta: float
    peak_d: float | None  # d* = exp(α/β − 1); None when β ≤ 0 (the curve never turns over)
    peak_gain: float | None  # R(d*) = β·d*
    n_points: int
    r2: float  # coefficient of determination of the fit on the points used (no intercept)
    meaningful: bool  # enough points, a finite fit and β > 0
    note: str  # why the fit is (not) meaningful, for the report

    @property
    def peak_kl(self) -> float | None:
        """KL (nats) at the peak: d*²."""
        return None if self.peak_d is None else self.peak_d**2


def _d_log_d(d: np.ndarray) -> np.ndarray:
    # lim_{d→0} d log d = 0: define it there instead of producing nan at the origin.
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * np.log(safe), 0.0)


def gao_curve(d, alpha: float, beta: float) -> np.ndarray:
    """R(d) = d(α − β log d), with R(0) = 0."""
    d = np.asarray(d, dtype=float)
    return alpha * d - beta * _d_log_d(d)


def fit_gao(d, reward_gain, min_points: int = MIN_FIT_POINTS) -> GaoFit:
    """Least-squares fit of R(d) = α d − β d log d to (d, reward − reward at d≈0) pairs.

    Non-finite pairs and negative d are dropped. The result always carries α, β (NaN if no fit
    was possible) and a note; `meaningful` says whether to draw conclusions (e.g. a peak) from it.
    """
    d = np.asarray(d, dtype=float).ravel()
    gain = np.asarray(reward_gain, dtype=float).ravel()
    keep = np.isfinite(d) & np.isfinite(gain) & (d >= 0)
    d, gain = d[keep], gain[keep]
    n = int(d.size)
    if n < 2 or not np.any(d > 0):
        return GaoFit(math.nan, math.nan, None, None, n, math.nan, False, f"not enough points to fit ({n})")

    design = np.column_stack([d, -_d_log_d(d)])
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    alpha, beta = float(alpha), float(beta)
    residual = gain - design @ np.array([alpha, beta])
    total = float(np.sum((gain - gain.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else math.nan

    peak_d = peak_gain = None
    if beta > 0 and math.isfinite(alpha / beta):
        exponent = alpha / beta - 1.0
        if exponent < 700:  # beyond this exp overflows: the peak is effectively at infinity
            peak_d = math.exp(exponent)
            peak_gain = beta * peak_d

    if n < min_points:
        note = f"only {n} points: too few for a meaningful fit (need {min_points})"
        meaningful = False
    elif not (math.isfinite(alpha) and math.isfinite(beta)):
        note, meaningful = "fit failed (non-finite coefficients)", False
    elif beta <= 0:
        note = f"β = {beta:.3g} ≤ 0: no over-optimization peak visible yet (reward still rising with KL)"
        meaningful = False
    elif peak_d is None:
        note, meaningful = "peak far beyond any reachable KL", False
    else:
        meaningful = True
        where = "beyond the observed range (extrapolated)" if peak_d > float(d.max()) else "within the observed range"
        note = f"peak at d* = {peak_d:.3g} (KL ≈ {peak_d**2:.3g} nats), {where}"
    return GaoFit(alpha, beta, peak_d, peak_gain, n, r2, meaningful, note)


def fit_reward_vs_kl(seq_kl, reward, min_points: int = MIN_FIT_POINTS) -> tuple[GaoFit, float]:
    """Fit the curve to a run's per-step (sequence KL, reward) pairs.

    The baseline R(0) is the mean reward of the points at (near) the smallest KL seen: step 1
    samples the reference policy itself, and averaging the few points within 5% of the d-range of
    it keeps one noisy batch from shifting every gain (the curve has no intercept to absorb that). Slightly negative sampled KL is clipped to 0 before
    the square root: it is estimator noise around zero, not a meaningful distance.
    Returns (fit, baseline); plot the curve as baseline + gao_curve(d, fit.alpha, fit.beta).
    """
    seq_kl = np.asarray(seq_kl, dtype=float).ravel()
    reward = np.asarray(reward, dtype=float).ravel()
    keep = np.isfinite(seq_kl) & np.isfinite(reward)
    seq_kl, reward = seq_kl[keep], reward[keep]
    if reward.size == 0:
        return fit_gao([], [], min_points), math.nan
    d = np.sqrt(np.clip(seq_kl, 0.0, None))
    near_zero = d <= d.min() + 0.05 * (d.max() - d.min())
    baseline = float(reward[near_zero].mean())
    return fit_gao(d, reward - baseline, min_points), baseline
