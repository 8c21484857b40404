"""Training–inference mismatch: the rollout engine's token probabilities differ from the trainer's on the same
tokens (vLLM/SGLang kernels, precision, stale weights), so the samples are off-policy for the model being updated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policyshift import keys as K
from policyshift.analysis.detectors.common import fmt
from policyshift.analysis.findings import Advice, Finding
from policyshift.analysis.runlog import metric_series

ORDER = 85

# What each detector here tells its reader (the detectors reference page and the report's findings panel read it).
ADVICE = {
    "rollout_mismatch": Advice(
        detects="The rollout engine's token probabilities differ from the trainer's on the same tokens (kernels, precision, stale weights), so off-policy samples are trained on as on-policy.",
        healthy="Per-token k3 KL(π_engine‖π_train) near 1e-3 (bf16 engines).",
        broken="Median k3 KL ≥ `mismatch_kl_warning` or mean |Δ log π| ≥ 0.1 (critical at 0.05 / 0.3).",
        action="Check the engine's precision and weight sync; turn on importance-sampling correction (TRL `vllm_importance_sampling_correction`, verl `algorithm.rollout_correction`).",
    ),
}


@dataclass
class Thresholds:
    # -- rollout_mismatch: median over the logged steps (a level, not a trend: it is wrong from the first step) --
    mismatch_kl_warning: float = 0.01  # k3 KL(π_engine‖π_train) per token, nats (bf16 vLLM vs fp32 trainer: ~1e-3)
    mismatch_kl_critical: float = 0.05
    mismatch_logprob_diff_warning: float = 0.1  # mean |log π_train − log π_engine| per token
    mismatch_logprob_diff_critical: float = 0.3


# (key, warning field, critical field, what it is): ours, TRL sampling/sampling_logp_difference, verl rollout_corr/k3_kl
_MEASURES = (
    (K.ENGINE_KL_K3, "mismatch_kl_warning", "mismatch_kl_critical", "per-token k3 KL(π_engine‖π_train)"),
    (K.ENGINE_LOGPROB_DIFF_MEAN, "mismatch_logprob_diff_warning", "mismatch_logprob_diff_critical", "mean |log π_train − log π_engine| per token"),
)


def detect_rollout_mismatch(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    """The engine that sampled and the model that learns disagree on the sampled tokens' probabilities."""
    for key, warn, crit, what in _MEASURES:
        steps, values = metric_series(history, key)
        if not len(values):
            continue
        level = float(np.median(values))
        if level < getattr(t, warn):
            continue
        severity = "critical" if level >= getattr(t, crit) else "warning"
        onset = int(steps[np.argmax(values >= getattr(t, warn))])
        message = (f"Training–inference mismatch: the rollout engine and the trainer disagree on the sampled tokens ({what} "
                   f"{fmt(level)}, median over {len(values)} steps; healthy bf16 engines stay near 1e-3), so the update treats "
                   f"off-policy samples as on-policy; check the engine's precision and weight sync, and turn on importance-sampling "
                   f"correction (TRL vllm_importance_sampling_correction, verl algorithm.rollout_correction).")
        return [Finding("rollout_mismatch", severity, onset, message, {"key": key, "median": level, "max": float(values.max())})]
    return []


DETECTORS = {"rollout_mismatch": detect_rollout_mismatch}
