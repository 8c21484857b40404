"""Zero spread (group runs): the share of groups whose rewards are all equal rises, or is high from the first step."""

from __future__ import annotations

from dataclasses import dataclass

from policyshift import keys as K
from policyshift.analysis.detectors.common import window_len, start_end, onset_step
from policyshift.analysis.findings import Advice, Finding
from policyshift.analysis.runlog import metric_series

ORDER = 80

# What each detector here tells its reader (the detectors reference page and the report's findings panel read it).
ADVICE = {
    "zero_spread": Advice(
        detects="Group runs (GRPO, RLOO) in which ever more groups have all-equal rewards: under a group baseline such a group's advantages are 0, so the batch learns from ever fewer prompts.",
        healthy="A small, steady share of flat groups.",
        broken=("End-window share of flat groups ≥ 0.5 and ≥ 0.2 above its start; or ≥ 0.5 at the start and on average over the run (no learning "
                "signal from the first step: TRL's frac_reward_zero_std = 1.0 throughout). Critical at ≥ 0.9 (end share, or run mean)."),
        action=("Harder (or easier) prompts, more samples per prompt, a higher temperature, or drop flat groups and refill the batch; from the first "
                "step: read the completions with their rewards (a constant reward, a parser that never matches)."),
    ),
}


@dataclass
class Thresholds:
    # -- zero_spread: groups whose n scores are all equal (no learning signal under a group baseline) --
    zero_spread_warning: float = 0.5  # end-window fraction of such groups → warning
    zero_spread_critical: float = 0.9
    zero_spread_rise: float = 0.2  # ... and it rose at least this much since the start; a share already that high at the start
    # and on average over the run (≥ warning / ≥ critical) is "no learning signal from the first step"


def detect_zero_spread(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    """Group runs (num_generations > 1): the share of groups whose n rewards are all equal is high — all solved or
    all failed. Each such group has every advantage 0, so the batch's effective size shrinks toward nothing.
    Two shapes, two causes: the share *rose* (the policy solved, or broke, the task as it trained), or it was high
    *from the first step* (the reward never separated this model's samples: a task far too hard or too easy, a
    reward function that returns a constant or fails to parse) — then the run never had anything to learn from."""
    steps, frac = metric_series(history, K.GROUP_ZERO_SPREAD_FRAC)
    if len(frac) < t.min_steps:
        return []
    start, end = start_end(frac, t)
    mean = float(frac.mean())
    evidence = {"start": start, "end": end, "mean": mean, "steps": len(frac), "first_step": int(steps[0]), "last_step": int(steps[-1]),
                "key": K.GROUP_ZERO_SPREAD_FRAC}
    if end >= t.zero_spread_warning and end - start >= t.zero_spread_rise:
        severity = "critical" if end >= t.zero_spread_critical else "warning"
        onset = onset_step(steps, frac, lambda v: v >= t.zero_spread_warning, window_len(len(frac), t))
        message = (
            f"Groups without learning signal: the share of prompts whose samples all got the same reward rose "
            f"{start:.0%} → {end:.0%} (steps {int(steps[0])}–{int(steps[-1])}), so their advantages are all 0 and the update learns "
            f"from ever fewer prompts; use harder (or easier) prompts, more generations per prompt or a higher temperature, or drop "
            f"flat groups and refill (dynamic sampling)."
        )
        return [Finding("zero_spread", severity, onset, message, evidence)]
    if start >= t.zero_spread_warning and mean >= t.zero_spread_warning:
        severity = "critical" if mean >= t.zero_spread_critical else "warning"
        message = (
            f"No learning signal from the first step: {start:.0%} of groups had all-equal rewards at the start and "
            f"{mean:.0%} on average over all {len(frac)} logged steps ({int(steps[0])}–{int(steps[-1])}), so those groups' advantages "
            f"are 0 and the policy gets {'almost ' if mean < 1 else ''}no gradient from the reward; read a few completions with their "
            f"rewards (a reward that returns a constant, a parser that never matches, a task far too hard or too easy for this model), "
            f"then fix the reward or the prompts before spending more steps."
        )
        return [Finding("zero_spread", severity, int(steps[0]), message, evidence)]
    return []


DETECTORS = {"zero_spread": detect_zero_spread}
