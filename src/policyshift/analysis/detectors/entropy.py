"""Entropy collapse: the policy becomes deterministic."""

from __future__ import annotations

from dataclasses import dataclass

from policyshift import keys as K
from policyshift.analysis.detectors.common import fmt, window_len, start_end, onset_step
from policyshift.analysis.findings import Advice, Finding
from policyshift.analysis.runlog import metric_series

ORDER = 50

# What each detector here tells its reader (the detectors reference page and the report's findings panel read it).
ADVICE = {
    "entropy_collapse": Advice(
        detects="The policy becoming deterministic and no longer exploring.",
        healthy="Entropy falls gently.",
        broken=("Entropy at the end ≤ 0.3× its start (critical at ≤ 0.1×), or ≤ 0.5× and still falling: a significant downward trend over the "
                "run's second half (Kendall's τ < 0, one-sided p < 0.01, scipy.stats.kendalltau) — the collapse under way (warning)."),
        action="Raise β, lower the LR, add an entropy bonus.",
    ),
}


@dataclass
class Thresholds:
    # -- entropy_collapse --
    entropy_ratio_warning: float = 0.3  # end/start policy entropy
    entropy_ratio_critical: float = 0.1
    entropy_min_start: float = 0.05  # nats; a near-greedy start has no entropy to lose
    # ... or at most this share of its start and still falling over the second half (a trend test, not a projection):
    # benchmarks/diagnosis collapse_good_s7 read 0.35× at step 60 and fell on to 0.06×; rldoctor flagged it at 60, we at 80
    entropy_falling_ratio: float = 0.5
    entropy_falling_p: float = 0.01  # one-sided p of Kendall's τ (entropy vs step) over the second half


def detect_entropy_collapse(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    steps, entropy = metric_series(history, K.ENTROPY)
    if len(entropy) < t.min_steps:
        return []
    start, end = start_end(entropy, t)
    if start < t.entropy_min_start:
        return []
    ratio = end / start
    if ratio > t.entropy_ratio_warning:
        return _still_falling(steps, entropy, start, end, t)
    severity = "critical" if ratio <= t.entropy_ratio_critical else "warning"
    onset = onset_step(steps, entropy / start, lambda v: v <= t.entropy_ratio_warning, window_len(len(entropy), t))
    message = (
        f"Policy entropy fell to {ratio:.0%} of its start ({fmt(start)} → {fmt(end)} nats/token): the policy is becoming "
        f"near-deterministic and will stop exploring; raise β, lower the LR, or add an entropy bonus."
    )
    return [Finding("entropy_collapse", severity, onset, message, {"entropy_start": start, "entropy_end": end, "ratio": ratio})]


def _still_falling(steps, entropy, start: float, end: float, t) -> list[Finding]:
    """Warning while the collapse is under way: entropy ≤ entropy_falling_ratio × its start and a significant downward
    trend over the second half (Kendall's τ, scipy's; one-sided), so a falling run is named before it reaches 0.3×."""
    half = len(entropy) // 2
    if end / start > t.entropy_falling_ratio or len(entropy) - half < t.min_steps:
        return []
    from scipy.stats import kendalltau  # here, not at the top: scipy.stats costs ~0.3 s to import and few runs get this far

    tau, p_two = kendalltau(steps[half:], entropy[half:])
    if not (tau < 0 and p_two / 2 < t.entropy_falling_p):
        return []
    message = (f"Policy entropy fell to {end / start:.0%} of its start ({fmt(start)} → {fmt(end)} nats/token) and is still falling "
               f"(Kendall τ {tau:.2f}, p {p_two / 2:.1g} over steps {int(steps[half])}–{int(steps[-1])}): a collapse under way; raise β, lower "
               f"the LR, or add an entropy bonus before it becomes near-deterministic.")
    evidence = {"entropy_start": start, "entropy_end": end, "ratio": end / start, "kendall_tau": float(tau), "p_one_sided": float(p_two / 2)}
    return [Finding("entropy_collapse", "warning", int(steps[-1]), message, evidence)]


DETECTORS = {"entropy_collapse": detect_entropy_collapse}
