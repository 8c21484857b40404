"""The run record: metrics.jsonl (one object per PPO step), distributions.jsonl (per-sample values
of each step), samples.jsonl (fixed-prompt generations, appended, never overwritten)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml


def _clean(value):
    # JSON has no NaN/inf: write null so every reader (browsers included) can parse the line.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_clean(row)) + "\n")
        f.flush()


class JsonlSink:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def log_config(self, config: dict) -> None:
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def log_scalars(self, metrics: dict, step: int) -> None:
        append_jsonl(self.run_dir / "metrics.jsonl", {"step": step, **metrics})

    def log_histograms(self, values: dict[str, list], step: int) -> None:
        append_jsonl(self.run_dir / "distributions.jsonl", {"step": step, **values})

    def log_samples(self, rows: list[dict], step: int) -> None:
        for row in rows:
            append_jsonl(self.run_dir / "samples.jsonl", {"step": step, **row})

    def log_findings(self, findings: list[dict], step: int) -> None:
        for f in findings:
            append_jsonl(self.run_dir / "findings.jsonl", {"logged_at_step": step, **f})

    def close(self) -> None:
        pass


def truncate_run_logs(run_dir: str | Path, step: int, write: bool = True) -> dict[str, list[dict]]:
    """Cut every log back to `step` (resume from a checkpoint): rows of later steps, and a partial
    last line left by a kill, are dropped. Returns the kept rows of each log; `write=False` only
    reads (the processes of a distributed run other than the main one)."""
    from policyshift.analysis.runlog import read_jsonl

    kept = {}
    for name, key in (("metrics", "step"), ("distributions", "step"), ("samples", "step"), ("findings", "logged_at_step")):
        path = Path(run_dir) / f"{name}.jsonl"
        rows = [r for r in read_jsonl(path) if r.get(key, 0) <= step]
        kept[name] = rows
        if not write:
            continue
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(path)
    return kept
