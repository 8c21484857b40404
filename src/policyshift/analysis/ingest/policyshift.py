"""policyshift's own runs: RUN_DIR/checkpoints/step-N/policy/ and RUN_DIR/final/ (the last logged step)."""

from __future__ import annotations

from pathlib import Path

from policyshift.analysis.ingest.base import CheckpointLayout, Importer
from policyshift.manifest import MANIFEST
from policyshift.rundir import LOCK
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


def being_written(root: Path, directory: Path) -> str | None:
    """final/ without its manifest.json yet: the trainer writes final/ in place and the manifest last
    (policyshift.manifest), so until then it is still being written. (checkpoints/step-N/ appears whole,
    renamed from the hidden .tmp-step-N after its manifest, which discovery never enters.) A run from
    before manifests has none anywhere and no trainer holding its lock: its final/ is complete as it is
    (rundir's rule for `finished`)."""
    if directory.name != "final" or (directory / MANIFEST).is_file() or not (directory.parent / CONFIG_FILE).is_file():
        return None
    run = directory.parent
    checkpoints = run / "checkpoints"
    writes_manifests = checkpoints.is_dir() and any((c / MANIFEST).is_file() for c in checkpoints.iterdir() if c.is_dir())
    if writes_manifests or (run / LOCK).is_file():  # the lock: held while its trainer runs
        return f"no {MANIFEST} yet"
    return None


IMPORTER = Importer(
    name="policyshift",
    title="policyshift",
    order=90,
    checkpoints=(CheckpointLayout("policyshift checkpoint", _is_checkpoint, "checkpoints/step-N/policy/ (policyshift)"),),
    step_prefixes=("step",),
    unnamed_step=final_step,
    being_written=being_written,
    other_trainer=False,
    scalars=False,
)
