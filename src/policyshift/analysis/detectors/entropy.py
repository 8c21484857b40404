"""Entropy collapse: the policy becomes deterministic."""

from __future__ import annotations

from dataclasses import dataclass

from policyshift import keys as K
from policyshift.analysis.detectors.common import fmt, window_len, start_end, onset_step
from policyshift.analysis.findings import Finding
from policyshift.analysis.runlog import metric_series

ORDER = 50


@dataclass
class Thresholds:
    # -- entropy_collapse --
    entropy_ratio_warning: float = 0.3  # end/start policy entropy
    entropy_ratio_critical: float = 0.1
    entropy_min_start: float = 0.05  # nats; a near-greedy start has no entropy to lose


def detect_entropy_collapse(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    steps, entropy = metric_series(history, K.ENTROPY)
    if len(entropy) < t.min_steps:
        return []
    start, end = start_end(entropy, t)
    if start < t.entropy_min_start or end / start > t.entropy_ratio_warning:
        return []
    ratio = end / start
    severity = "critical" if ratio <= t.entropy_ratio_critical else "warning"
    onset = onset_step(steps, entropy / start, lambda v: v <= t.entropy_ratio_warning, window_len(len(entropy), t))
    message = (
        f"Policy entropy fell to {ratio:.0%} of its start ({fmt(start)} → {fmt(end)} nats/token): the policy is becoming "
        f"near-deterministic and will stop exploring; raise β, lower the LR, or add an entropy bonus."
    )
    return [Finding("entropy_collapse", severity, onset, message, {"entropy_start": start, "entropy_end": end, "ratio": ratio})]


DETECTORS = {"entropy_collapse": detect_entropy_collapse}
