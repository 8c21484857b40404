"""The frontier's arithmetic, free of torch: gold gain interpolated at fixed KL columns, the best-of-n baseline
(its KL and an unbiased estimate of its gold from one pool of reference samples), mean ± standard error."""

from __future__ import annotations

import math
from typing import Optional, Sequence


def gain_at_kl(kls: Sequence[float], golds: Sequence[float], column: float) -> Optional[float]:
    """Gold at sequence KL `column` along one run's checkpoints (in training order, the first the reference:
    KL 0), linearly interpolated between the two checkpoints around the *first* crossing of the column (later
    noise that dips back below it is ignored). None when the run never reached the column."""
    for i in range(1, len(kls)):
        if kls[i] >= column:
            k0, k1, g0, g1 = kls[i - 1], kls[i], golds[i - 1], golds[i]
            if k0 >= column:  # the previous point was already past it (only the reference point can start at KL > 0)
                return g0
            return g0 + (g1 - g0) * (column - k0) / (k1 - k0)
    return None


def bon_kl(n: int) -> float:
    """KL(π_bon‖π_ref) of best-of-n sampling, the analytic upper bound used as its x-axis: log n − (n − 1)/n."""
    return math.log(n) - (n - 1) / n


def bon_expected_gold(proxy: Sequence[float], gold: Sequence[float], n: int) -> float:
    """E[gold of the proxy-best of n samples drawn without replacement from the pool] — the unbiased estimator
    from one pool of N ≥ n samples: with the pool sorted by proxy ascending, sample of rank i (1-based) is the
    best of a random n-subset with probability C(i − 1, n − 1) / C(N, n). Ties in proxy are broken by pool order."""
    N = len(proxy)
    if not 1 <= n <= N:
        raise ValueError(f"best-of-{n} needs a pool of at least {n}, got {N}")
    order = sorted(range(N), key=lambda i: proxy[i])
    total = math.comb(N, n)
    return sum(math.comb(rank - 1, n - 1) / total * gold[i] for rank, i in enumerate(order, 1) if rank >= n)


def bon_gain_at_kl(ns: Sequence[int], golds: Sequence[float], column: float) -> Optional[float]:
    """Best-of-n gold at KL `column`, linearly interpolated in KL between the two n around it; None beyond max(ns)."""
    return gain_at_kl([bon_kl(n) for n in ns], golds, column)


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, standard error of the mean, n); SE is nan for fewer than 2 values."""
    v = [x for x in values if x is not None]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = sum(v) / n
    se = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1) / n) if n > 1 else float("nan")
    return m, se, n
