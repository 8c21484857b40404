"""Zero spread (group runs): the share of groups whose rewards are all equal rises."""

from __future__ import annotations

from dataclasses import dataclass

from policyshift import keys as K
from policyshift.analysis.detectors.common import window_len, start_end, onset_step
from policyshift.analysis.findings import Finding
from policyshift.analysis.runlog import metric_series

ORDER = 80


@dataclass
class Thresholds:
    # -- zero_spread: groups whose n scores are all equal (no learning signal under a group baseline) --
    zero_spread_warning: float = 0.5  # end-window fraction of such groups → warning
    zero_spread_critical: float = 0.9
    zero_spread_rise: float = 0.2  # ... and it rose at least this much since the start (a flat-from-the-start task is another problem)


def detect_zero_spread(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    """Group runs (num_generations > 1): the share of groups whose n rewards are all equal rises — all solved or
    all failed. Each such group has every advantage 0, so the batch's effective size shrinks toward nothing."""
    steps, frac = metric_series(history, K.GROUP_ZERO_SPREAD_FRAC)
    if len(frac) < t.min_steps:
        return []
    start, end = start_end(frac, t)
    if end < t.zero_spread_warning or end - start < t.zero_spread_rise:
        return []
    severity = "critical" if end >= t.zero_spread_critical else "warning"
    onset = onset_step(steps, frac, lambda v: v >= t.zero_spread_warning, window_len(len(frac), t))
    message = (
        f"Groups without learning signal: the share of prompts whose samples all got the same reward rose "
        f"{start:.0%} → {end:.0%}, so their advantages are all 0 and the update learns from ever fewer prompts; "
        f"use harder (or easier) prompts, more generations per prompt or a higher temperature, or drop flat groups "
        f"and refill (dynamic sampling)."
    )
    evidence = {"start": start, "end": end, "key": K.GROUP_ZERO_SPREAD_FRAC}
    return [Finding("zero_spread", severity, onset, message, evidence)]


DETECTORS = {"zero_spread": detect_zero_spread}
