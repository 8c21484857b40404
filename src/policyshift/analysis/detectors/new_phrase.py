"""New phrase: a word n-gram the reference (almost) never said is now in a large share of the policy's
responses at the latest evaluation (the ranking is analysis.phrases')."""

from __future__ import annotations

from dataclasses import dataclass

from policyshift.analysis.findings import Finding
from policyshift.analysis.phrases import learned_phrases

ORDER = 90


@dataclass
class Thresholds:
    # -- new_phrase: a phrase the reference (almost) never said is now in a large share of responses --
    new_phrase_min_responses: int = 8  # per side at the evaluation: fewer cannot tell a habit from chance
    new_phrase_max_reference_share: float = 0.05  # "(almost) never": in at most this share of the reference's responses
    new_phrase_min_policy_share: float = 0.5  # ... and now in at least this share of the policy's
    new_phrase_min_z: float = 3.0  # and the log-odds z beyond chance


def detect_new_phrases(history, samples, t=None, distributions=(), reference=None) -> list[Finding]:
    """Warning `new_phrase` at the latest evaluation (README "Detectors"); one finding naming the top phrases."""
    t = t or Thresholds()
    summary = learned_phrases(list(samples or []), top=50)
    if summary is None or min(summary["n_policy"], summary["n_reference"]) < t.new_phrase_min_responses:
        return []
    new = [p for p in summary["rose"] if p.share_reference <= t.new_phrase_max_reference_share
           and p.share_policy >= t.new_phrase_min_policy_share and p.z >= t.new_phrase_min_z]
    if not new:
        return []
    shown = ", ".join(f"“{p.text}” ({p.share_reference:.0%} → {p.share_policy:.0%} of responses)" for p in new[:3])
    message = (f"the policy now says {shown} at step {summary['step']}, which the reference (almost) never did; read the "
               "learned-phrases panel and the samples: a new habit the reward pays for is often an exploit (filler, flattery, a stock phrase).")
    evidence = {"phrases": [{"text": p.text, "z": p.z, "share_reference": p.share_reference, "share_policy": p.share_policy,
                             "count_reference": p.count_reference, "count_policy": p.count_policy} for p in new[:10]]}
    return [Finding("new_phrase", "warning", summary["step"], message, evidence)]


DETECTORS = {"new_phrase": detect_new_phrases}
