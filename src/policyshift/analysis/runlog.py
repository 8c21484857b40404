"""Reading a run directory: the single place the report, the detectors' callers and the tests
load what the trainer wrote.

Everything here tolerates a run that is still going: files may be missing, empty, or end in a
half-written line; rows may lack keys; NaN may have been written as null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from policyshift.runfiles import (COMPLETIONS_FILE, CONFIG_FILE, DISTRIBUTIONS_FILE, FINDINGS_FILE, METRICS_FILE,  # noqa: F401 (old import path)
                                  SAMPLES_FILE, read_jsonl)


@dataclass
class RunData:
    """Everything logged by one run, each list ordered by step."""

    run_dir: Path
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # metrics.jsonl rows, one per PPO step
    samples: list[dict] = field(default_factory=list)  # samples.jsonl rows, one per (eval step, prompt)
    distributions: list[dict] = field(default_factory=list)  # distributions.jsonl rows, one per PPO step
    findings: list[dict] = field(default_factory=list)  # findings.jsonl as the trainer wrote it
    completions: list[dict] = field(default_factory=list)  # completions.jsonl: another trainer's logged completions
    notes: list[str] = field(default_factory=list)  # lines skipped while reading (a torn last line of a run being written)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def last_step(self) -> int:
        """Latest PPO step logged (0 when no step has finished yet)."""
        steps = [row["step"] for row in self.history if isinstance(row.get("step"), (int, float))]
        return int(max(steps)) if steps else 0


def read_config(path: str | Path) -> dict:
    """The resolved config as a dict; {} when missing or unreadable (the report must still render)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def merge_steps(rows: list[dict]) -> list[dict]:
    return _by_step(rows)


def resumed_history(rows: list[dict]) -> tuple[list[dict], dict]:
    """A resumed run's metrics.jsonl rows as its trainer continues them: (one row per training step, as in the
    history of a run that was never interrupted, and the reference's step-0 probe row, {} when none).
    Probe scores were logged as a second row of their step; step 0 holds only the reference's."""
    merged = merge_steps(rows)
    return [row for row in merged if row["step"] >= 1], next((row for row in merged if row["step"] == 0), {})


def _by_step(rows: list[dict]) -> list[dict]:
    """Rows with an integer-like step, sorted by it. Rows of one step are merged, a later row's value
    winning: the probe suites' scores are logged as a second row of their step, and a step logged twice
    (a resumed run) keeps what was written last, which is what the resumed run actually trained on."""
    latest: dict[int, dict] = {}
    for row in rows:
        step = row.get("step")
        if isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step):
            latest[int(step)] = {**latest.get(int(step), {}), **row}
    return [latest[step] for step in sorted(latest)]


def _samples_sorted(rows: list[dict]) -> list[dict]:
    usable = [row for row in rows if isinstance(row.get("step"), (int, float))]
    return sorted(usable, key=lambda row: (int(row["step"]), row.get("model") != "reference", row.get("prompt_id", 0)))


def load_run(run_dir: str | Path) -> RunData:
    """Load a run directory (any subset of its files may be missing). A line that does not parse (the
    last line of a file the trainer is appending to) is skipped with one line in `notes`."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    return RunData(
        run_dir=run_dir,
        config=read_config(run_dir / CONFIG_FILE),
        history=_by_step(read_jsonl(run_dir / METRICS_FILE, notes)),
        samples=_samples_sorted(read_jsonl(run_dir / SAMPLES_FILE, notes)),
        distributions=_by_step(read_jsonl(run_dir / DISTRIBUTIONS_FILE, notes)),
        findings=read_jsonl(run_dir / FINDINGS_FILE, notes),
        completions=read_jsonl(run_dir / COMPLETIONS_FILE, notes),
        notes=notes,
    )


def as_float(value: Any) -> float:
    """A logged number as float; None, strings, bools and other junk become NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _finite_pairs(rows, key: str, steps: list, values: list) -> None:
    """Append (step, value) of `key` for each row where both are finite numbers (as_float's rule, inlined: the report
    calls this ~50 times over every row, and a 20k-step run spent seconds in the calls)."""
    isfinite, number = math.isfinite, (int, float)
    for row in rows:
        value, step = row.get(key), row.get("step")
        if (isinstance(value, number) and isinstance(step, number) and not isinstance(value, bool) and not isinstance(step, bool)
                and isfinite(value) and isfinite(step)):
            steps.append(step)
            values.append(value)


def metric_series(history: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric over the history, dropping rows where it is missing/NaN."""
    if isinstance(history, History):
        return history.series(key)
    steps: list = []
    values: list = []
    _finite_pairs(history, key, steps, values)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def history_keys(history: list[dict]) -> set[str]:
    """Every key any row of the history has."""
    return history.keys_seen() if isinstance(history, History) else {key for row in history for key in row}


_EMPTY = np.zeros(0)
_EMPTY.flags.writeable = False


def _extended(steps: np.ndarray, values: np.ndarray, rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    new_steps: list = []
    new_values: list = []
    _finite_pairs(rows, key, new_steps, new_values)
    if not new_steps:
        return steps, values
    return np.concatenate([steps, np.asarray(new_steps, dtype=float)]), np.concatenate([values, np.asarray(new_values, dtype=float)])


class History(list):
    """A training run's rows as its trainer keeps them in memory (a list of dicts, one per step), read by the live
    detectors at every evaluation. Each metric's column and the set of keys are kept as they grow, so each read
    costs the rows added since the last one, not the whole history again (at every 50th step of a 5,000-step
    run the detectors' full scans were 0.4 s: 8 ms a step, growing with the run; benchmarks/soak.py). Rows before
    the last never change; the last may (its step's probe scores join it after the evaluation): it is read anew
    each time. A list that shrinks (a resume cuts it back) starts its columns over."""

    def __init__(self, rows=()):
        super().__init__(rows)
        self._columns: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}  # key → (steps, values, rows read)
        self._keys: set[str] = set()
        self._keys_read = 0

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        stable = max(len(self) - 1, 0)
        steps, values, done = self._columns.get(key, (_EMPTY, _EMPTY, 0))
        if done > stable:
            steps, values, done = _EMPTY, _EMPTY, 0
        if stable > done:
            steps, values = _extended(steps, values, self[done:stable], key)
            steps.flags.writeable = values.flags.writeable = False  # handed out as they are when the last row lacks the key
        self._columns[key] = (steps, values, stable)
        return _extended(steps, values, self[stable:], key)

    def keys_seen(self) -> set[str]:
        stable = max(len(self) - 1, 0)
        if self._keys_read > stable:
            self._keys, self._keys_read = set(), 0
        for row in self[self._keys_read:stable]:
            self._keys.update(row)
        self._keys_read = stable
        return self._keys.union(*self[stable:])


def config_get(config: dict, dotted_key: str, default: Any = None) -> Any:
    """config_get(cfg, "kl.estimator") without KeyErrors on a partial/old config."""
    node: Any = config
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
