"""What every detector family shares: the thresholds all trend detectors read (`Thresholds`: minimum run
length, start/end windows, significance) and the helpers over a run's series (windows, onsets, slopes,
the reward scale σ, eval-sample groups)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from policyshift import keys as K
from policyshift.analysis.runlog import as_float, metric_series

ORDER = 0


@dataclass
class Thresholds:
    min_steps: int = 8  # trend detectors stay silent on shorter runs
    window_frac: float = 0.1  # the end window (and the start's, up to start_window) is this fraction of the run ...
    min_window: int = 3  # ... but at least this many steps
    # The start is the policy before it moved (a run's first rollout samples the reference), so its window stays this
    # short however long the run: a 10%-of-the-run start averaged a fast early drift into itself (benchmarks/diagnosis
    # length_capped: 3.2 → 9.0 tokens in steps 1–5 read as 1.27× growth; with 3 points, 3.4 → 6.9 in steps 1–3 read 1.49×).
    # One point was too noisy: a healthy TRL run's first batch (2.6 tokens, then 3.8) alone read its 1.4× as 1.8×.
    start_window: int = 2
    significance_t: float = 3.0  # |t| a mean must exceed to count as "significantly" non-zero


def fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "n/a"


def window_len(n: int, t) -> int:
    """Start/end window length for a series of n points (never overlapping when n ≥ 2)."""
    return max(1, min(max(t.min_window, round(t.window_frac * n)), n // 2 if n >= 2 else 1))


def start_end(values: np.ndarray, t) -> tuple[float, float]:
    """The run's start (its first `start_window` points at most) and end (the last window) means."""
    w = window_len(len(values), t)
    return float(values[: min(w, t.start_window)].mean()), float(values[-w:].mean())


def first_series(history: list[dict], keys: Iterable[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """The first of `keys` the history actually logged (most points wins ties in preference order)."""
    best = (np.array([]), np.array([]), "")
    for key in keys:
        steps, values = metric_series(history, key)
        if len(values) > len(best[1]):
            best = (steps, values, key)
    return best


def rolling_mean(values: np.ndarray, w: int) -> np.ndarray:
    """Trailing mean over up to w points (shorter at the start)."""
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - w)
    return (cumulative[idx] - cumulative[lo]) / (idx - lo)


def onset_step(steps: np.ndarray, values: np.ndarray, crossed: Callable[[float], bool], w: int) -> int:
    """First step of the trailing run of (smoothed) values that satisfy `crossed`: when it set in."""
    flags = [crossed(v) for v in rolling_mean(values, w)]
    i = len(flags)
    while i > 0 and flags[i - 1]:
        i -= 1
    return int(steps[min(i, len(steps) - 1)])


def fit_slope(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0
    return float(np.polyfit(x, y, 1)[0])


def welch_t(a: np.ndarray, b: np.ndarray) -> float:
    """t statistic of mean(b) − mean(a); ±inf when both groups are noise-free."""
    diff = float(np.mean(b) - np.mean(a))
    var = (np.var(a, ddof=1) / len(a) if len(a) > 1 else 0.0) + (np.var(b, ddof=1) / len(b) if len(b) > 1 else 0.0)
    if var <= 0:
        return math.copysign(math.inf, diff) if diff else 0.0
    return diff / math.sqrt(var)


def reward_scale(history: list[dict], t) -> float:
    """σ: the batch reward std at the start of the run (fallback: spread of the step means)."""
    _, stds = metric_series(history, K.SCORE_STD)
    if len(stds):
        scale = float(stds[: window_len(len(stds), t)].mean())
    else:
        _, means = metric_series(history, K.SCORE_MEAN)
        scale = float(np.std(means)) if len(means) > 1 else 1.0
    return scale if scale > 1e-8 else 1.0


def proxy_reward_gain(history: list[dict], t) -> tuple[float, float, float]:
    """(gain in σ, start mean, end mean) of the proxy reward; NaN gain before min_steps."""
    _, reward = metric_series(history, K.SCORE_MEAN)
    if len(reward) < t.min_steps:
        return math.nan, math.nan, math.nan
    start, end = start_end(reward, t)
    return (end - start) / reward_scale(history, t), start, end


def last_step(history: list[dict]) -> int:
    steps, _ = metric_series(history, "step")  # the finite steps
    return int(steps.max()) if len(steps) else 0


def eval_groups(samples: list[dict]) -> dict[int, list[dict]]:
    """Samples grouped by eval step (step 0 = the reference), steps ascending."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for row in samples:
        step = as_float(row.get("step"))
        if math.isfinite(step):
            groups[int(step)].append(row)
    return dict(sorted(groups.items()))


def finite_array(values: Iterable) -> np.ndarray:
    arr = np.array([as_float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def sample_values(rows: list[dict], key: str) -> np.ndarray:
    return finite_array(row.get(key) for row in rows)
