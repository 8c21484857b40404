"""Probe change: did a probe suite's score move since the reference? The call the report's probes panel
and this detector share: the last evaluation's mean against the reference's (step 0) with a z test of two
independent means, in the suite's direction. A live run's history has no step 0 (the trainer's rows start at
step 1): `run_detectors(..., reference=row)` gives the reference's probe scores."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from policyshift import keys as K
from policyshift.analysis.findings import Advice, Finding
from policyshift.analysis.runlog import config_get, history_keys, metric_series

ORDER = 100

# What each detector here tells its reader (the detectors reference page and the report's findings panel read it).
ADVICE = {
    "probe_change": Advice(
        detects="A probe suite's score moving since the reference (step 0): a behaviour you test got better or worse.",
        healthy="No significant change, or improvements in the suites' `higher_is_better` direction.",
        broken="The latest score differs from the reference's by more than 1.96·√(s.e.² + s.e.²_ref): warning when it regressed, info when it improved.",
        action="Read the suite's responses (`compare --probes` on the checkpoint); keep an earlier checkpoint or raise β if a behaviour you care about got worse.",
    ),
}
Z_95 = 1.96  # two-sided 95% normal quantile: the band and the improvement/regression call


@dataclass
class Thresholds:
    # -- probe_change: each probe suite's direction, from the run's analysis.probes --
    probe_directions: dict = field(default_factory=dict)  # {suite: higher_is_better}


def from_config(config: dict) -> dict:
    return {"probe_directions": directions(config)}


def suite_names(history: list[dict]) -> list[str]:
    names = {k[len(K.PROBE_PREFIX):] for k in history_keys(history) if k.startswith(K.PROBE_PREFIX)}
    return sorted(n for n in names if not n.endswith("_se"))


def directions(config: dict) -> dict[str, bool]:
    """{suite: higher_is_better} from a run's config (analysis.probes); a suite not named there counts as higher-is-better."""
    suites = config_get(config or {}, "analysis.probes") or []
    return {s.get("name"): bool(s.get("higher_is_better", True)) for s in suites if isinstance(s, dict)}


def verdict(reference: float, ref_se: float, value: float, se: float, higher_is_better: bool) -> str:
    """'improved', 'regressed' or 'no significant change': the difference against 1.96·√(se_ref² + se²),
    a z test of two independent means (the per-prompt scores are not kept, so no paired test)."""
    margin = Z_95 * math.sqrt(ref_se**2 + se**2)
    diff = value - reference
    if not math.isfinite(diff) or abs(diff) <= margin:
        return "no significant change"
    return "improved" if (diff > 0) == higher_is_better else "regressed"


def last_against_reference(history: list[dict], name: str) -> tuple[float, float, float, float, int] | None:
    """(reference mean, its s.e., last mean, its s.e., last step) of suite `name`; None without a step-0 score and a later one."""
    steps, values = metric_series(history, K.probe_key(name))
    if len(steps) < 2 or steps[0] != 0:
        return None
    se = dict(zip(*metric_series(history, K.probe_se_key(name))))
    return float(values[0]), se.get(0.0, 0.0), float(values[-1]), se.get(float(steps[-1]), 0.0), int(steps[-1])


def detect_probe_change(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    """Warning `probe_change` for each suite that regressed at the latest evaluation; info for one that improved.
    `reference`: the reference's probe row (step 0) when `history` holds only training steps (a live run)."""
    if reference:
        history = [reference, *history]
    out = []
    for name in suite_names(history):
        found = last_against_reference(history, name)
        if found is None:
            continue
        ref, ref_se, last, se, step = found
        higher = t.probe_directions.get(name, True)
        call = verdict(ref, ref_se, last, se, higher)
        if call == "no significant change":
            continue
        evidence = {"suite": name, "reference": ref, "reference_se": ref_se, "last": last, "last_se": se, "higher_is_better": higher}
        if call == "regressed":
            out.append(Finding("probe_change", "warning", step, f"probe suite {name} regressed: {last:.4g} ± {se:.2g} at step {step} vs the "
                               f"reference's {ref:.4g} ± {ref_se:.2g} ({'higher' if higher else 'lower'} is better, beyond 1.96 s.e.); read "
                               "its responses and consider an earlier checkpoint.", evidence))
        else:
            out.append(Finding("probe_change", "info", step, f"probe suite {name} improved: {last:.4g} ± {se:.2g} at step {step} vs the "
                               f"reference's {ref:.4g} ± {ref_se:.2g}.", evidence))
    return out


DETECTORS = {"probe_change": detect_probe_change}
