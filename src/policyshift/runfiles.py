"""A run directory's files: their names, and how they are read and written. The one place the trainer's
sinks, the run-log reader, `policyshift analyze`, the report and the run-directory checks take them from.

JSONL rows are written with NaN/inf as null (`clean_json`: JSON has no NaN, and null is what every reader
parses) and read tolerantly (`read_jsonl`: a run still going may end in a half-written line). Files a
reader may open while they are being replaced (report.html) are written atomically (`write_atomic`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
DISTRIBUTIONS_FILE = "distributions.jsonl"
FINDINGS_FILE = "findings.jsonl"
COMPLETIONS_FILE = "completions.jsonl"  # training completions imported from another trainer's logs (policyshift analyze --logs)
REPORT_FILE = "report.html"
IDS_FILE = "tracking.json"  # the ids of the backend runs (W&B run id, MLflow run id), so a resumed run continues them
# what a training run writes at the top of its directory (rundir: a directory holding any of these is a run's)
RUN_FILES = (CONFIG_FILE, METRICS_FILE, DISTRIBUTIONS_FILE, SAMPLES_FILE, FINDINGS_FILE, REPORT_FILE, IDS_FILE)


def clean_json(value: Any) -> Any:
    """`value` with every non-finite float (at any depth of dicts, lists and tuples) as None: JSON has no
    NaN/inf, and null is what every reader (browsers included) can parse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def read_jsonl(path: str | Path, notes: list[str] | None = None) -> list[dict]:
    """Rows of a JSON-lines file; a missing file reads as no rows.

    Unparseable lines are skipped rather than raised: the trainer may be in the middle of appending
    the last line when the report reads the file, and one torn line must not hide the rest of a run.
    Each skipped line gets one line in `notes` when given (a torn last line says the file is being
    written). Non-object lines are skipped too (every row in policyshift's logs is an object).
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                row = json.loads(line)  # accepts NaN/Infinity literals as written by json.dumps
            except json.JSONDecodeError:
                if notes is not None:
                    torn = not raw.endswith("\n")  # only the last line can lack its newline: the writer has not finished it
                    notes.append(f"{path}: line {number} is half-written (the run is still writing it); skipped" if torn
                                 else f"{path}: line {number} is not JSON; skipped")
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(clean_json(row)) + "\n")
        f.flush()


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(clean_json(row)) + "\n")


def write_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path` and rename it into place: a reader (a browser
    refreshing the report while the trainer rebuilds it) never sees half a file; nothing is left on error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared/served
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
