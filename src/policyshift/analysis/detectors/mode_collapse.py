"""Mode collapse: the responses to different fixed prompts look alike (eval samples)."""

from __future__ import annotations

from dataclasses import dataclass

from policyshift.analysis.detectors.common import eval_groups
from policyshift.analysis.findings import Finding
from policyshift.textstats import mode_collapse_score

ORDER = 60


@dataclass
class Thresholds:
    # -- mode_collapse (eval samples) --
    mode_collapse_min_prompts: int = 3
    mode_collapse_warning: float = 0.5  # mean pairwise 3-gram Jaccard across prompts
    mode_collapse_critical: float = 0.8
    mode_collapse_min_rise: float = 0.3  # over the reference's score at step 0


def _collapse_by_step(samples: list[dict], t) -> dict[int, float]:
    """mode_collapse_score of each eval step's responses (one per prompt)."""
    scores = {}
    for step, rows in eval_groups(samples).items():
        by_prompt = {row.get("prompt_id", i): row.get("response") or "" for i, row in enumerate(rows)}
        if len(by_prompt) >= t.mode_collapse_min_prompts:
            scores[step] = mode_collapse_score(list(by_prompt.values()))
    return scores


def detect_mode_collapse(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    scores = _collapse_by_step(samples, t)
    policy_steps = [s for s in scores if s > 0]
    if not policy_steps:
        return []
    last = policy_steps[-1]
    reference = scores.get(0, 0.0)
    current = scores[last]

    def collapsed(score: float) -> bool:
        return score >= t.mode_collapse_warning and score - reference >= t.mode_collapse_min_rise

    if not collapsed(current):
        return []
    onset = last
    for step in reversed(policy_steps):  # first eval step of the trailing collapsed stretch
        if not collapsed(scores[step]):
            break
        onset = step
    severity = "critical" if current >= t.mode_collapse_critical else "warning"
    message = (
        f"Mode collapse: the policy's answers to different eval prompts are near-identical (mean pairwise 3-gram "
        f"similarity {current:.2f} at step {last} vs {reference:.2f} for the reference); stop, and restart from an "
        f"earlier checkpoint with a higher β or lower LR."
    )
    evidence = {"score": current, "reference_score": reference, "by_step": {str(k): v for k, v in scores.items()}}
    return [Finding("mode_collapse", severity, onset, message, evidence)]


DETECTORS = {"mode_collapse": detect_mode_collapse}
