"""Truncation-poisoned reward: most completions are cut at the length limit, and the reward is still read on
them — the policy is scored (and updated) on answers it never finished."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policyshift import keys as K
from policyshift.analysis.detectors.common import start_end
from policyshift.analysis.findings import Advice, Finding
from policyshift.analysis.runlog import metric_series

ORDER = 35

# What each detector here tells its reader (the detectors reference page and the report's findings panel read it).
ADVICE = {
    "truncation": Advice(
        detects="Most completions cut at the length limit from the start: the reward is read on unfinished answers.",
        healthy="Most completions end with EOS before the limit.",
        broken="The median share cut ≥ `truncation_warning` and that high in the start window too (critical at ≥ 0.8); a mid-run fall of the EOS rate is length_drift's.",
        action="Raise the length limit, mask or penalise cut completions (TRL `mask_truncated_completions`, overlong filtering).",
    ),
}


@dataclass
class Thresholds:
    # -- truncation: median over the logged steps of the share of completions cut at the limit (1 − EOS rate), which
    #    is that high in the start window too --
    truncation_warning: float = 0.5
    truncation_critical: float = 0.8


def detect_truncation(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    steps, eos = metric_series(history, K.EOS_RATE)
    if not len(eos):
        return []
    cut = 1.0 - eos
    level = float(np.median(cut))
    start, _ = start_end(cut, t)
    # cut from the start: the limit is too short for the task (a falling EOS rate mid-run is length_drift's EOS collapse)
    if level < t.truncation_warning or start < t.truncation_warning:
        return []
    severity = "critical" if level >= t.truncation_critical else "warning"
    message = (f"Truncation-poisoned reward: {level:.0%} of the completions (median over {len(cut)} steps) stop at the length limit "
               f"without an end-of-sequence token, yet they are scored and trained on; raise the length limit, penalize or mask cut "
               f"completions (TRL mask_truncated_completions, verl/DAPO overlong filtering), or check that the policy still emits EOS.")
    return [Finding("truncation", severity, int(steps[np.argmax(cut >= t.truncation_warning)]), message,
                    {"key": K.EOS_RATE, "median_cut": level, "max_cut": float(cut.max())})]


DETECTORS = {"truncation": detect_truncation}
