"""PPO instability: clip fraction, ratio variance or value explained variance past their limits in most recent steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policyshift import keys as K
from policyshift.analysis.detectors.common import fmt, last_step
from policyshift.analysis.findings import Finding
from policyshift.analysis.runlog import as_float, metric_series

ORDER = 70


@dataclass
class Thresholds:
    # -- ppo_instability: fraction of the last ppo_window steps past each limit --
    ppo_window: int = 10
    ppo_min_steps: int = 5
    ppo_persist_frac: float = 0.5
    clip_frac_max: float = 0.3
    ratio_var_max: float = 0.1  # ratio std ≈ 0.3
    explained_variance_min: float = -0.5  # (a critic-free run logs no explained variance: that check stays silent)


def detect_ppo_instability(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    if len(history) < t.ppo_min_steps:
        return []
    recent = history[-t.ppo_window :]
    checks = [
        (K.CLIP_FRAC, lambda v: v > t.clip_frac_max, f"clip fraction > {t.clip_frac_max}"),
        (K.RATIO_VAR, lambda v: v > t.ratio_var_max, f"ratio variance > {t.ratio_var_max}"),
        (K.VALUE_EXPLAINED_VARIANCE, lambda v: v < t.explained_variance_min, f"value explained variance < {t.explained_variance_min}"),
    ]
    tripped, evidence = [], {"window": len(recent)}
    for key, bad, label in checks:
        _, values = metric_series(recent, key)
        if len(values) < t.ppo_min_steps:
            continue
        frac_bad = float(np.mean([bad(v) for v in values]))
        evidence[key] = {"mean": float(values.mean()), "fraction_of_steps": frac_bad}
        if frac_bad >= t.ppo_persist_frac:
            tripped.append(f"{label} in {frac_bad:.0%} of steps (mean {fmt(float(values.mean()))})")
    if not tripped:
        return []
    _, approx_kl = metric_series(recent, K.APPROX_KL)
    if len(approx_kl):
        evidence["ppo/approx_kl_mean"] = float(approx_kl.mean())
    severity = "critical" if len(tripped) >= 2 else "warning"
    message = (
        f"PPO updates are unstable over the last {len(recent)} steps ({'; '.join(tripped)}): updates move the policy "
        f"too far per batch; lower the learning rate, the number of PPO epochs, or the clip range, and check the value head."
    )
    step = int(as_float(recent[0].get("step"))) if math.isfinite(as_float(recent[0].get("step"))) else last_step(history)
    return [Finding("ppo_instability", severity, step, message, evidence)]


DETECTORS = {"ppo_instability": detect_ppo_instability}
