"""benchmarks/frontier/measure.py: the KL-column interpolation and the best-of-n formulas, against hand-computed values."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "frontier"))
import measure as M  # noqa: E402


def test_gain_at_kl_interpolates_at_the_first_crossing():
    kls, golds = [0.0, 0.5, 1.5, 3.0, 2.5, 5.0], [0.0, 0.1, 0.3, 0.6, 0.0, 0.9]
    assert M.gain_at_kl(kls, golds, 1.0) == pytest.approx(0.2)  # between (0.5, 0.1) and (1.5, 0.3)
    assert M.gain_at_kl(kls, golds, 2.0) == pytest.approx(0.4)  # between (1.5, 0.3) and (3.0, 0.6); the dip after is ignored
    assert M.gain_at_kl(kls, golds, 4.0) == pytest.approx(0.0 + 0.9 * 1.5 / 2.5)  # first crossing of 4: (2.5, 0) → (5, 0.9)
    assert M.gain_at_kl(kls, golds, 8.0) is None


def test_bon_kl_formula():
    assert M.bon_kl(1) == 0.0
    assert M.bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert M.bon_kl(16) == pytest.approx(2.7726 - 0.9375, abs=1e-4)


def test_bon_expected_gold_by_enumeration():
    # pool of 4 ranked by proxy; gold differs from proxy (the best proxy sample has bad gold)
    proxy, gold = [0.3, 0.9, 0.1, 0.5], [1.0, -2.0, 0.0, 2.0]
    assert M.bon_expected_gold(proxy, gold, 1) == pytest.approx(sum(gold) / 4)
    # n = 2: 6 pairs; argmax proxy of each: (0,1)→1 (0,2)→0 (0,3)→3 (1,2)→1 (1,3)→1 (2,3)→3
    assert M.bon_expected_gold(proxy, gold, 2) == pytest.approx((-2 + 1 + 2 - 2 - 2 + 2) / 6)
    assert M.bon_expected_gold(proxy, gold, 4) == pytest.approx(-2.0)
    with pytest.raises(ValueError):
        M.bon_expected_gold(proxy, gold, 5)


def test_bon_gain_at_kl_and_mean_se():
    ns, golds = [1, 2, 4], [0.0, 0.5, 0.8]
    k2, k4 = M.bon_kl(2), M.bon_kl(4)
    assert (k2, k4) == (pytest.approx(0.1931, abs=1e-4), pytest.approx(0.6363, abs=1e-4))
    assert M.bon_gain_at_kl(ns, golds, 0.5) == pytest.approx(0.5 + 0.3 * (0.5 - k2) / (k4 - k2))
    assert M.bon_gain_at_kl(ns, golds, 1.0) is None  # beyond log 4 − 3/4, the largest n of the pool
    m, se, n = M.mean_se([1.0, 2.0, 3.0, None])
    assert (m, n) == (2.0, 3) and se == pytest.approx(1 / math.sqrt(3))
