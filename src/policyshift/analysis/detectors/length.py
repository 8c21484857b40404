"""Length drift: mean response length or the EOS rate moved far from the start."""

from __future__ import annotations

import math
from dataclasses import dataclass

from policyshift import keys as K
from policyshift.analysis.detectors.common import fmt, window_len, start_end, onset_step
from policyshift.analysis.findings import Finding
from policyshift.analysis.runlog import metric_series

ORDER = 30


@dataclass
class Thresholds:
    # -- length_drift --
    length_ratio_warning: float = 1.5  # end/start mean length (or its inverse)
    length_ratio_critical: float = 3.0
    eos_collapse_frac: float = 0.5  # end EOS rate below this × start → warning
    eos_critical_rate: float = 0.05  # end EOS rate below this (from a start ≥ 0.3) → critical


def detect_length_drift(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    findings = []
    steps, length = metric_series(history, K.LENGTH_MEAN)
    if len(length) >= t.min_steps:
        start, end = start_end(length, t)
        ratio = end / start if start > 0 else math.nan
        if math.isfinite(ratio) and ratio > 0:
            far = max(ratio, 1 / ratio)
            if far >= t.length_ratio_warning:
                severity = "critical" if far >= t.length_ratio_critical else "warning"
                grew = ratio > 1
                onset = onset_step(steps, length / start, (lambda v: v >= t.length_ratio_warning) if grew else (lambda v: v <= 1 / t.length_ratio_warning), window_len(len(length), t))
                message = (
                    f"Mean response length {'grew' if grew else 'shrank'} {ratio:.2f}× ({fmt(start)} → {fmt(end)} tokens): "
                    f"check whether the reward pays for length (see reward vs length) and add a length penalty or raise β."
                )
                findings.append(Finding("length_drift", severity, onset, message, {"length_start": start, "length_end": end, "ratio": ratio}))
    steps, eos = metric_series(history, K.EOS_RATE)
    if len(eos) >= t.min_steps:
        start, end = start_end(eos, t)
        if start > 0 and end < t.eos_collapse_frac * start:
            severity = "critical" if end < t.eos_critical_rate and start >= 0.3 else "warning"
            message = (
                f"The EOS rate collapsed from {start:.0%} to {end:.0%}: responses stop ending and run into the length "
                f"limit (often rambling or loops the reward model tolerates); raise β or penalise truncation."
            )
            onset = onset_step(steps, eos, lambda v: v < t.eos_collapse_frac * start, window_len(len(eos), t))
            findings.append(Finding("length_drift", severity, onset, message, {"eos_start": start, "eos_end": end}))
    return findings


DETECTORS = {"length_drift": detect_length_drift}
