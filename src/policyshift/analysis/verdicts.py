""""Is my run healthy?": one verdict per question, from the findings and from what the run measured.

Each question names the detectors that answer it, the metrics that show it was measured at all, and the report
panel that shows its evidence. A verdict is red (a critical finding), amber (a warning), green (measured, and no
detector of the question fired at warning or worse) or grey (not measured: no metric of it in the logs or the
fixed-prompt samples — silence there is not health). Detectors a question does not list (a new family) are matched
by the words in their names, so a new detector lands under a question rather than nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policyshift import keys as K
from policyshift.analysis.findings import Finding, at_least


@dataclass(frozen=True)
class Question:
    key: str
    title: str
    detectors: tuple[str, ...]
    words: tuple[str, ...]  # a detector whose name contains one of these belongs here too
    metrics: tuple[str, ...]  # history keys (or sample fields) that show the question was measured
    panel: str  # analysis/report/panels.PANELS key
    training_only: bool = False  # only the training log can answer it: a checkpoint's fixed-prompt value does not count

QUESTIONS: tuple[Question, ...] = (
    Question("drift", "Drift from the reference", ("kl_runaway", "reference_drift"), ("drift", "runaway"),
             (K.KL_SEQ_MEAN, K.KL_EXACT_SEQ_MEAN, K.KL_TOKEN_MEAN, K.KL_K1_TOKEN_MEAN, K.KL_K3_TOKEN_MEAN, K.KL_EXACT_TOKEN_MEAN, "seq_kl"), "kl"),
    Question("hacking", "Reward hacking", ("reward_hacking", "new_phrase", "probe_change"), ("hack",),
             (K.GOLD_MEAN, "gold_score", "ref_logprob_mean"), "reward"),
    Question("collapse", "Collapse (entropy, modes, repetition)", ("entropy_collapse", "mode_collapse", "repetition_rise"), ("collapse", "repetit"),
             (K.ENTROPY, "entropy_mean", "response", "rep_ngram_rate"), "shape"),
    Question("length", "Length and truncation", ("length_drift",), ("length", "trunc"), (K.LENGTH_MEAN, K.EOS_RATE, "length", "eos"), "shape"),
    Question("signal", "Learning signal", ("zero_spread", "kl_flat"), ("zero", "signal", "degenerate", "group", "flat"),
             (K.GROUP_ZERO_SPREAD_FRAC, K.SCORE_MEAN), "reward", training_only=True),
    Question("mismatch", "Training–inference mismatch", ("kl_negative", "kl_at_start"), ("mismatch", "engine", "dropout", "stale"),
             (K.ENGINE_LOGPROB_DIFF_MEAN, K.ENGINE_KL_K3, K.KL_K1_TOKEN_MEAN, K.KL_TOKEN_MEAN), "kl", training_only=True),
)
COLOURS = {"critical": "red", "warning": "amber"}


@dataclass
class Verdict:
    question: Question
    colour: str  # red | amber | green | grey
    evidence: str
    findings: list = field(default_factory=list)


def question_of(detector: str) -> Question | None:
    for q in QUESTIONS:
        if detector in q.detectors:
            return q
    for q in QUESTIONS:
        if any(word in detector for word in q.words):
            return q
    return None


def _measured(q: Question, history: list[dict], samples: list[dict], fixed: set) -> bool:
    """Whether the run measured what the question asks. `fixed`: history keys filled in from the checkpoints' fixed
    prompts (report.inputs.detector_inputs); they and the samples do not answer a training-only question (whether the
    groups had reward spread, whether the engine sampled the trained weights)."""
    metrics = [m for m in q.metrics if not (q.training_only and m in fixed)]
    if any(m in row for row in history for m in metrics):
        return True
    return not q.training_only and any(row.get(m) is not None for row in samples for m in q.metrics)


def verdicts(findings: list[Finding], history: list[dict], samples: list[dict], last_step: int, fixed: set = frozenset()) -> list[Verdict]:
    """One verdict per question of QUESTIONS, in that order; `findings` worst first (run_detectors' order); `fixed`: the
    history keys taken from the checkpoints' fixed prompts."""
    out = []
    for q in QUESTIONS:
        mine = [f for f in findings if question_of(f.detector) is q]
        bad = [f for f in mine if at_least(f.severity, "warning")]
        if bad:
            worst = bad[0]
            more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
            out.append(Verdict(q, COLOURS[worst.severity], f"{worst.detector} @ step {worst.step}: {worst.message}{more}", mine))
        elif mine or _measured(q, history, samples, fixed):  # a note (info) means its detector had something to read
            note = f" ({len(mine)} note{'s' if len(mine) > 1 else ''}: {mine[0].detector} @ step {mine[0].step})" if mine else ""
            out.append(Verdict(q, "green", f"measured over {last_step} steps; no detector of this question ({', '.join(q.detectors)}) fired{note}", mine))
        else:
            where = "in a training log (checkpoints alone cannot tell: pass --logs)" if q.training_only else "in the logs or samples"
            out.append(Verdict(q, "grey", "not measured: none of " + ", ".join(q.metrics[:4]) + " " + where, mine))
    return out
