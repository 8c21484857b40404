"""What the report's panels and detectors read from a loaded run: the history with fixed-prompt keys filled
in where no training log has them (`detector_inputs`) and the findings as the report shows them."""

from __future__ import annotations

import dataclasses

from policyshift.analysis.detectors import DetectorThresholds, run_detectors
from policyshift.analysis.findings import Finding
from policyshift.analysis.ingest import RAW_PREFIXES
from policyshift.analysis.probe import FIXED_PREFIX
from policyshift.analysis.runlog import RunData


def detector_inputs(history: list[dict]) -> tuple[list[dict], set[str]]:
    """The history the panels and detectors read, and the keys taken from the fixed prompts.

    A metric a training log provides (a policyshift run's batches, an imported log whose key has the
    same meaning) is read as logged; a metric only the checkpoints' fixed-prompt evaluation provides
    (`fixed/KEY` in metrics.jsonl, written by `policyshift analyze`) is read under KEY. So a run that
    has nothing but checkpoints gets every panel and detector, and the report names each curve's source."""
    logged = {k for row in history for k in row if not k.startswith(FIXED_PREFIX)}
    fixed = {k[len(FIXED_PREFIX):] for row in history for k in row if k.startswith(FIXED_PREFIX)}
    fallback = fixed - logged
    if not fallback:
        return history, set()
    return [{**row, **{k: row[FIXED_PREFIX + k] for k in fallback if FIXED_PREFIX + k in row}} for row in history], fallback


# A fixed-prompt history has one point per checkpoint (plus the reference at step 0), each a paired
# comparison on the same prompts and seed, not a noisy training batch: judge from 4 points, start = reference.
FIXED_ONLY_THRESHOLDS = {"min_steps": 4, "min_window": 1}


def run_findings(run: RunData) -> tuple[list[Finding], DetectorThresholds, RunData, set[str]]:
    """Findings of a loaded run as the report shows them (and `--fail-on` gates on): the detectors on
    `detector_inputs(run.history)`. Returns (findings, thresholds, the run with that history, fixed keys)."""
    history, fixed = detector_inputs(run.history)
    training_keys = {k for row in run.history for k in row if k != "step" and not k.startswith((FIXED_PREFIX, *RAW_PREFIXES))}
    overrides = FIXED_ONLY_THRESHOLDS if fixed and not training_keys else {}
    thresholds = DetectorThresholds.from_config(run.config, **overrides)
    view = dataclasses.replace(run, history=history)
    return run_detectors(history, run.samples, thresholds, run.distributions), thresholds, view, fixed
