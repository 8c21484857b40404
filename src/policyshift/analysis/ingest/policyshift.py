"""policyshift's own runs: RUN_DIR/checkpoints/step-N/policy/ and RUN_DIR/final/ (the last logged step)."""

from __future__ import annotations

from pathlib import Path

from policyshift.analysis.ingest.base import CheckpointLayout, Importer
from policyshift.runfiles import CONFIG_FILE


def _is_checkpoint(path: Path) -> bool:
    parts = path.parts
    return path.name == "policy" and len(parts) > 2 and parts[-3] == "checkpoints"


def final_step(root: Path, directory: Path) -> int | None:
    """RUN_DIR/final/: the last step the run logged."""
    from policyshift.analysis.runlog import load_run  # numpy/yaml: kept off the CLI's start (build_parser reads this registry)

    if directory.name != "final" or not (root / CONFIG_FILE).is_file():
        return None
    run = load_run(root)
    return run.last_step or None


IMPORTER = Importer(
    name="policyshift",
    title="policyshift",
    order=90,
    checkpoints=(CheckpointLayout("policyshift checkpoint", _is_checkpoint, "checkpoints/step-N/policy/ (policyshift)"),),
    step_prefixes=("step",),
    unnamed_step=final_step,
    other_trainer=False,
    scalars=False,
)
