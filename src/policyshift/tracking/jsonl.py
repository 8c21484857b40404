"""The run record: metrics.jsonl (one object per PPO step), distributions.jsonl (per-sample values
of each step), samples.jsonl (fixed-prompt generations, appended, never overwritten)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from policyshift.runfiles import CONFIG_FILE, DISTRIBUTIONS_FILE, FINDINGS_FILE, METRICS_FILE, SAMPLES_FILE, append_jsonl, read_jsonl, write_atomic


class JsonlSink:
    name = "jsonl"  # how the failure warning names it

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def log_config(self, config: dict) -> None:
        (self.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))

    def log_scalars(self, metrics: dict, step: int) -> None:
        append_jsonl(self.run_dir / METRICS_FILE, {"step": step, **metrics})

    def log_histograms(self, values: dict[str, list], step: int) -> None:
        append_jsonl(self.run_dir / DISTRIBUTIONS_FILE, {"step": step, **values})

    def log_samples(self, rows: list[dict], step: int) -> None:
        for row in rows:
            append_jsonl(self.run_dir / SAMPLES_FILE, {"step": step, **row})

    def log_findings(self, findings: list[dict], step: int) -> None:
        for f in findings:
            append_jsonl(self.run_dir / FINDINGS_FILE, {"logged_at_step": step, **f})

    def close(self) -> None:
        pass


def truncate_run_logs(run_dir: str | Path, step: int, write: bool = True) -> dict[str, list[dict]]:
    """Cut every log back to `step` (resume from a checkpoint): rows of later steps, and a partial
    last line left by a kill, are dropped. Returns the kept rows of each log; `write=False` only
    reads (the processes of a distributed run other than the main one)."""
    kept = {}
    for name, file, key in (("metrics", METRICS_FILE, "step"), ("distributions", DISTRIBUTIONS_FILE, "step"),
                            ("samples", SAMPLES_FILE, "step"), ("findings", FINDINGS_FILE, "logged_at_step")):
        path = Path(run_dir) / file
        rows = [r for r in read_jsonl(path) if r.get(key, 0) <= step]
        kept[name] = rows
        if not write:
            continue
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))  # as read: NaN literals stay NaN
    return kept
