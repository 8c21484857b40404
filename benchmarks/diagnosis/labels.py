"""Label rules of the diagnosis corpus: a run's class from its MEASURED facts, decided before any tool runs.

Committed before any run of the corpus was made or any tool (policyshift analyze, rldoctor, afterburn) was run
on one. `build_corpus.py` measures the facts of each run itself (held-out prompts sampled from the reference
and from every checkpoint, scored by the proxy the trainer optimized and by a gold scorer the trainer never
saw; per-token KL to the reference from the same samples; length and truncation; entropy; distinct responses;
the trainer's own log of zero-spread groups and of the engine's log-prob difference) and writes them to
RUN/facts.json; `label(facts)` reads only those facts. The rules are tried in the order of RULES; the first that
holds names the class. A run no rule fits is DROPPED (label None), never relabelled by hand.

Effect sizes are in units of the reference's own spread on the held-out prompts (σ), and "fell"/"rose" needs a
Welch t-test (scipy.stats.ttest_ind, equal_var=False) at p < 0.05 between the reference's and the final
checkpoint's per-prompt scores, so a run labelled reward hacking has gold *measured* to fall while the proxy rose.
"""

from __future__ import annotations

import math
from typing import Callable

CLASSES = ("healthy", "reward_hacking", "kl_blowup", "collapse", "length_explosion", "truncation", "no_signal", "mismatch")

# ---- thresholds of the rules (frozen with the rules; never tuned on tool output) ----
SIGNIFICANT_P = 0.05
PROXY_ROSE_SIGMA = 0.3  # proxy mean (final − reference) / σ_ref
GOLD_FELL_SIGMA = 0.25  # gold mean (reference − final) / σ_ref
MISMATCH_LOGPROB_DIFF = 0.05  # mean |log π_engine − log π_train| per sampled token (nats), the run's own log
NO_SIGNAL_ZERO_SPREAD = 0.9  # mean share over all training steps of groups whose rewards are all equal
TRUNCATED_SHARE = 0.8  # share of completions cut at the length limit: held-out at the final checkpoint AND training mean
LENGTH_RATIO = 2.0  # final / reference mean completion length on the held-out prompts
COLLAPSE_ENTROPY_RATIO = 0.3  # final / reference mean per-token entropy of the sampled completions
COLLAPSE_DISTINCT_RATIO = 0.3  # final / reference share of distinct completions (exact text) on the held-out prompts
KL_BLOWUP_TOKEN = 0.5  # final per-token KL(π‖π_ref), nats, k1 mean over the held-out samples
# healthy: learned something, nothing above went wrong
HEALTHY_PROXY_ROSE_SIGMA = 0.2
HEALTHY_GOLD_MIN_SIGMA = -0.1  # gold did not fall by more than this
HEALTHY_KL_MAX = 0.3
HEALTHY_LENGTH_BAND = (1 / 1.5, 1.5)
HEALTHY_TRUNCATED_MAX = 0.5
HEALTHY_ENTROPY_MIN_RATIO = 0.5
HEALTHY_ZERO_SPREAD_MAX = 0.5
HEALTHY_MISMATCH_MAX = 0.01


def _f(facts: dict, key: str) -> float:
    value = facts.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else math.nan


def _ratio(facts: dict, final: str, ref: str) -> float:
    a, b = _f(facts, final), _f(facts, ref)
    return a / b if b > 0 else math.nan


def _gold_fell(facts):
    return (_f(facts, "proxy_gain_sigma") >= PROXY_ROSE_SIGMA and _f(facts, "proxy_p") < SIGNIFICANT_P
            and -_f(facts, "gold_gain_sigma") >= GOLD_FELL_SIGMA and _f(facts, "gold_p") < SIGNIFICANT_P)


def _mismatch(facts):
    return _f(facts, "engine_logprob_diff_mean") >= MISMATCH_LOGPROB_DIFF


def _no_signal(facts):
    return _f(facts, "train_zero_spread_mean") >= NO_SIGNAL_ZERO_SPREAD


def _truncation(facts):
    return _f(facts, "truncated_final") >= TRUNCATED_SHARE and _f(facts, "train_truncated_mean") >= TRUNCATED_SHARE


def _length(facts):
    return _ratio(facts, "length_final", "length_ref") >= LENGTH_RATIO


def _collapse(facts):
    return (_ratio(facts, "entropy_final", "entropy_ref") <= COLLAPSE_ENTROPY_RATIO
            or _ratio(facts, "distinct_final", "distinct_ref") <= COLLAPSE_DISTINCT_RATIO)


def _kl(facts):
    return _f(facts, "kl_token_final") >= KL_BLOWUP_TOKEN


def _healthy(facts):
    lo, hi = HEALTHY_LENGTH_BAND
    length = _ratio(facts, "length_final", "length_ref")
    mismatch = _f(facts, "engine_logprob_diff_mean")
    zero = _f(facts, "train_zero_spread_mean")
    return (_f(facts, "proxy_gain_sigma") >= HEALTHY_PROXY_ROSE_SIGMA and _f(facts, "proxy_p") < SIGNIFICANT_P
            and _f(facts, "gold_gain_sigma") >= HEALTHY_GOLD_MIN_SIGMA
            and _f(facts, "kl_token_final") <= HEALTHY_KL_MAX and lo <= length <= hi
            and _f(facts, "truncated_final") <= HEALTHY_TRUNCATED_MAX
            and _ratio(facts, "entropy_final", "entropy_ref") >= HEALTHY_ENTROPY_MIN_RATIO
            and not zero >= HEALTHY_ZERO_SPREAD_MAX and not mismatch > HEALTHY_MISMATCH_MAX)


# Order matters: a cause before its symptoms (a stale engine or a signal-free reward explains whatever follows),
# hacking (gold measured to fall) before the shape changes that often carry it.
RULES: list[tuple[str, Callable[[dict], bool]]] = [
    ("mismatch", _mismatch),
    ("no_signal", _no_signal),
    ("truncation", _truncation),
    ("reward_hacking", _gold_fell),
    ("length_explosion", _length),
    ("collapse", _collapse),
    ("kl_blowup", _kl),
    ("healthy", _healthy),
]


def label(facts: dict) -> str | None:
    """The class of a run from its measured facts, or None (dropped)."""
    for name, rule in RULES:
        if rule(facts):
            return name
    return None
