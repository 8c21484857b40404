"""Degenerate groups, split: groups whose samples all got the run's top score (all correct: the prompts are too
easy) and groups whose samples all got its bottom score (all wrong: too hard). Both have every advantage 0 under
a group baseline, so both teach nothing — and they need opposite fixes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policyshift import keys as K
from policyshift.analysis.findings import Advice, Finding
from policyshift.analysis.runlog import metric_series

ORDER = 82

# What each detector here tells its reader (the detectors reference page and the report's findings panel read it).
ADVICE = {
    "degenerate_groups": Advice(
        detects="Groups whose samples all got the run's lowest score (all wrong) or its highest (all correct): their advantages are 0, so those prompts teach nothing.",
        healthy="Most groups mix better and worse answers.",
        broken="Mean share of such groups ≥ `degenerate_warning` (critical at ≥ 0.8), reported as `all_wrong_groups` or `all_correct_groups`.",
        action="All wrong: easier prompts or a curriculum, more samples per prompt, a denser reward. All correct: harder prompts, drop solved ones (dynamic sampling).",
        findings=("all_wrong_groups", "all_correct_groups"),
    ),
}


@dataclass
class Thresholds:
    # -- degenerate_groups: mean over the logged steps of the share of groups flat at the top / at the bottom --
    degenerate_warning: float = 0.5
    degenerate_critical: float = 0.8


_SIDES = (
    (K.GROUP_FLAT_BOTTOM_FRAC, "all_wrong_groups", "all wrong (every sample got the run's lowest score)",
     "the prompts are too hard for the policy: use easier prompts or a curriculum, more generations per prompt, or a denser reward"),
    (K.GROUP_FLAT_TOP_FRAC, "all_correct_groups", "all correct (every sample got the run's highest score)",
     "the prompts are already solved: use harder prompts, drop solved ones (dynamic sampling), or raise the bar of the reward"),
)


def detect_degenerate_groups(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    findings = []
    for key, name, what, fix in _SIDES:
        steps, values = metric_series(history, key)
        if not len(values):
            continue
        level = float(values.mean())
        if level < t.degenerate_warning:
            continue
        severity = "critical" if level >= t.degenerate_critical else "warning"
        message = (f"Groups without learning signal, {what}: {level:.0%} of the groups on average over {len(values)} logged steps; "
                   f"their advantages are all 0, so the update learns from the remaining groups only — {fix}.")
        findings.append(Finding(name, severity, int(steps[np.argmax(values >= t.degenerate_warning)]), message,
                                {"key": key, "mean": level, "max": float(values.max())}))
    return findings


DETECTORS = {"degenerate_groups": detect_degenerate_groups}
