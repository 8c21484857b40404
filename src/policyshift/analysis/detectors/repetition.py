"""Repetition rise: the repeated-n-gram rate rises or distinct-2 falls."""

from __future__ import annotations

from dataclasses import dataclass

from policyshift import keys as K
from policyshift.analysis.detectors.common import window_len, start_end, onset_step
from policyshift.analysis.findings import Finding
from policyshift.analysis.runlog import metric_series

ORDER = 40


@dataclass
class Thresholds:
    # -- repetition_rise --
    rep_rise_abs: float = 0.1  # rep_ngram_rate must rise by this much ...
    rep_rise_factor: float = 2.0  # ... and to this × its start
    rep_critical: float = 0.3  # rep_ngram_rate at the end that makes it critical
    distinct_fall_ratio: float = 0.6  # distinct_2 end/start below this → warning
    distinct_critical_ratio: float = 0.3


def detect_repetition_rise(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    findings = []
    steps, rep = metric_series(history, K.REP_NGRAM_RATE)
    if len(rep) >= t.min_steps:
        start, end = start_end(rep, t)
        if end - start >= t.rep_rise_abs and end >= t.rep_rise_factor * start:
            severity = "critical" if end >= t.rep_critical else "warning"
            onset = onset_step(steps, rep, lambda v: v - start >= t.rep_rise_abs, window_len(len(rep), t))
            message = (
                f"Repeated 3-grams within responses rose from {start:.0%} to {end:.0%}: the policy is looping or "
                f"padding, which the reward model apparently tolerates; raise β, lower the LR, or penalise repetition."
            )
            findings.append(Finding("repetition_rise", severity, onset, message, {"rep_start": start, "rep_end": end}))
    steps, distinct = metric_series(history, K.DISTINCT_2)
    if len(distinct) >= t.min_steps:
        start, end = start_end(distinct, t)
        if start > 0 and end / start <= t.distinct_fall_ratio:
            severity = "critical" if end / start <= t.distinct_critical_ratio else "warning"
            onset = onset_step(steps, distinct / start, lambda v: v <= t.distinct_fall_ratio, window_len(len(distinct), t))
            message = (
                f"Batch diversity fell: distinct-2 went {start:.2f} → {end:.2f} ({end / start:.0%} of the start), so "
                f"responses share ever more bigrams; raise β or the entropy of generation, and read the samples."
            )
            findings.append(Finding("repetition_rise", severity, onset, message, {"distinct_2_start": start, "distinct_2_end": end}))
    return findings


DETECTORS = {"repetition_rise": detect_repetition_rise}
