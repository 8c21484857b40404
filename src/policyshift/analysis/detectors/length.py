"""Length drift: mean response length or the EOS rate moved far from the start."""

from __future__ import annotations

import math
from dataclasses import dataclass

from policyshift import keys as K
from policyshift.analysis.detectors.common import fmt, window_len, start_end, onset_step
from policyshift.analysis.findings import Advice, Finding
from policyshift.analysis.runlog import metric_series

ORDER = 30

# What each detector here tells its reader (the detectors reference page and the report's findings panel read it).
ADVICE = {
    "length_drift": Advice(
        detects="Response length drifting from the start either way, or responses no longer ending (the EOS rate collapsing).",
        healthy="Mean length within 1.5× of its start either way, or within 2 tokens of it (short responses); the EOS rate stable.",
        broken=("End/start mean length ≥ 1.5× or ≤ 1/1.5 (critical at 3× or ⅓×) and moved by ≥ `length_min_change` tokens (2), or the EOS rate fell "
                "below half its start (critical below 5% from ≥ 30%)."),
        action="Check the Reward vs √KL panel and the sample browser for length hacking; penalise truncation, add a length penalty, raise β.",
    ),
}


@dataclass
class Thresholds:
    # -- length_drift --
    length_ratio_warning: float = 1.5  # end/start mean length (or its inverse)
    length_ratio_critical: float = 3.0
    # ... and the mean moved by at least this many tokens: on 3-token responses one more word is already 1.33×, and a
    # healthy run's batch mean went 2.88 → 4.36 (1.52×) while its held-out length moved 2.7 → 3.3 (benchmarks/diagnosis)
    length_min_change: float = 2.0
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
            if far >= t.length_ratio_warning and abs(end - start) >= t.length_min_change:
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
