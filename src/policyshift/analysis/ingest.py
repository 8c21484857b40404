"""Importing other trainers' logs into a run directory's records (`policyshift analyze --logs`).

Scalars (TRL trainer_state.json log_history, verl's file-logger JSONL, TensorBoard event files read
with TensorBoard's own EventAccumulator) become metrics.jsonl rows: every key under `<source>/<key>`
as logged, plus the policyshift key of analysis.ingest_map when the meanings match. Logged
completions (TRL completions/completions_NNNNN.parquet, verl rollout/validation dumps {step}.jsonl)
become completions.jsonl rows and distributions.jsonl score lists by step. Nothing is written here:
`import_logs` returns what analysis.analyze writes with the rest.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from policyshift.analysis.ingest_map import lookup
from policyshift.data import DataError

TB_PREFIX = "train/"  # HF Trainer's TensorBoardCallback and OpenRLHF write training scalars under train/
STEP_JSONL = re.compile(r"^(\d+)\.jsonl$")  # verl's rollout/validation dumps: {global_step}.jsonl
TRL_COMPLETIONS = re.compile(r"^completions_(\d+)\.parquet$")
TRL_COMPLETION_COLUMNS = ("step", "prompt", "completion")
VERL_DUMP_FIELDS = ("input", "output", "score")


class LogImportError(DataError):
    """A log that cannot be imported; one line naming the file and what was expected."""


@dataclass
class Imported:
    history: dict[int, dict] = field(default_factory=dict)  # step → metrics.jsonl keys
    completions: list[dict] = field(default_factory=list)  # completions.jsonl rows
    sources: list[dict] = field(default_factory=list)  # per file read: kind, path, mapped/shown/unknown keys
    notes: list[str] = field(default_factory=list)  # lines skipped etc., one line each

    @property
    def distributions(self) -> list[dict]:
        """Per-step score lists of the logged completions (what the distribution panel reads)."""
        by_step: dict[int, dict] = {}
        for row in self.completions:
            if isinstance(row.get("score"), (int, float)) and math.isfinite(row["score"]):
                entry = by_step.setdefault(row["step"], {"step": row["step"], "scores": [], "lengths": []})
                entry["scores"].append(row["score"])
                entry["lengths"].append(row.get("length"))
        for entry in by_step.values():
            if any(n is None for n in entry["lengths"]):
                del entry["lengths"]
        return [by_step[s] for s in sorted(by_step)]

    def describe(self) -> dict:
        return {"sources": self.sources, "notes": self.notes}

    def add_scalars(self, source: str, path: Path, rows: list[tuple[int, dict]]) -> None:
        mapped, shown, unknown = {}, set(), set()
        for step, values in rows:
            out = self.history.setdefault(step, {})
            for key, value in values.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                out[f"{source}/{key}"] = value  # every key, as logged
                m = lookup(source, key)
                if m is None:
                    unknown.add(key)
                elif m.target is None:
                    shown.add(key)
                else:
                    out[m.target] = m.value(float(value))
                    mapped[key] = m.target
        self.sources.append({"kind": f"{source} scalars", "path": str(path), "steps": len(rows),
                             "mapped": mapped, "shown": sorted(shown), "unknown": sorted(unknown)})


def _number_rows(entries) -> list[tuple[int, dict]]:
    rows = []
    for entry in entries:
        step = entry.get("step") if isinstance(entry, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            rows.append((step, {k: v for k, v in entry.items() if k != "step"}))
    return rows


def read_trainer_state(path: Path, imported: Imported) -> None:
    """HF Trainer / TRL trainer_state.json: log_history is a list of {"step": N, key: value}; train and eval
    entries of one step are merged (eval keys carry an eval_ prefix)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LogImportError(f"{path}: not a readable trainer_state.json ({exc})") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise LogImportError(f"{path}: no log_history list (expected an HF Trainer / TRL trainer_state.json)")
    imported.add_scalars("trl", path, _number_rows(history))


def _jsonl(path: Path, imported: Imported) -> list[dict]:
    """Objects of a JSONL file; a torn or invalid line is skipped with one note (a log still being written)."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LogImportError(f"{path}: cannot read ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            imported.notes.append(f"{path}:{number}: half-written or invalid JSON line skipped")
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_verl_file_log(path: Path, imported: Imported) -> None:
    """verl's file logger (verl/utils/tracking.py FileLogger, trainer.logger=[...,'file']): one
    {"step": N, "data": {key: value}} per line."""
    rows = []
    for row in _jsonl(path, imported):
        if not isinstance(row.get("data"), dict) or not isinstance(row.get("step"), int):
            raise LogImportError(f"{path}: a line without 'step' and a 'data' object; expected verl's file logger JSONL "
                               '({"step": N, "data": {...}})')
        rows.append((row["step"], row["data"]))
    if not rows:
        raise LogImportError(f"{path}: no log lines")
    imported.add_scalars("verl", path, rows)


def _tb_flavour(tags: list[str]) -> str:
    keys = {t[len(TB_PREFIX):] if t.startswith(TB_PREFIX) else t for t in tags}
    if keys & {"reward_std", "frac_reward_zero_std", "completions/mean_length", "objective/kl", "objective/scores"}:
        return "trl"
    if any(k.startswith(("actor/", "critic/", "response_length/")) for k in keys):
        return "verl"
    if keys & {"policy_loss", "ppo_clip_ratio", "response_length", "return", "group_reward_std"}:
        return "openrlhf"
    return "tensorboard"


def read_tensorboard(directory: Path, imported: Imported, skip: str | None = None) -> None:
    """Scalars of every event file under `directory` (one EventAccumulator per run folder), read with
    TensorBoard's own reader. The trainer is recognized by its tags; train/ is stripped for TRL/OpenRLHF.
    `skip`: a trainer whose events duplicate a log already read (TRL's trainer_state.json)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = sorted({p.parent for p in directory.rglob("events.out.tfevents.*")}) if directory.is_dir() else [directory]
    if not folders:
        raise LogImportError(f"{directory}: no TensorBoard event files (events.out.tfevents.*)")
    read = 0
    for folder in folders:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point, not a sample
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        if not tags:
            imported.notes.append(f"{folder}: TensorBoard events with no scalars; skipped")
            continue
        flavour = _tb_flavour(tags)
        if flavour == skip:
            imported.notes.append(f"{folder}: TensorBoard events repeat the trainer_state.json log (float32); skipped")
            read += 1
            continue
        by_step: dict[int, dict] = {}
        for tag in tags:
            key = tag[len(TB_PREFIX):] if flavour in ("trl", "openrlhf") and tag.startswith(TB_PREFIX) else tag
            for event in acc.Scalars(tag):
                by_step.setdefault(int(event.step), {})[key] = float(event.value)
        imported.add_scalars(flavour, folder, sorted(by_step.items()))
        read += 1
    if not read:
        raise LogImportError(f"{directory}: TensorBoard event files hold no scalars")


def _text(value) -> str:
    """A prompt as text: TRL's conversational prompts are lists of {"role", "content"} messages."""
    if isinstance(value, str):
        return value
    try:
        return "\n".join(f"{m['role']}: {m['content']}" for m in value)
    except (TypeError, KeyError):
        return str(value)


def read_trl_completions(path: Path, imported: Imported) -> None:
    """TRL GRPO log_completions: completions_{step:05d}.parquet with step, prompt, completion, one column
    per reward function and advantage (trl/trainer/grpo_trainer.py, 1.12). The score is the sum of the
    reward columns (TRL weighs them by reward_weights, 1 each by default)."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own types for a torn or foreign file
        raise LogImportError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    missing = [c for c in TRL_COMPLETION_COLUMNS if c not in frame.columns]
    if missing:
        raise LogImportError(f"{path}: no {', '.join(repr(c) for c in missing)} column (columns: {', '.join(map(str, frame.columns))}); "
                           "expected TRL's completions parquet (step, prompt, completion, one column per reward function, advantage)")
    rewards = [c for c in frame.columns if c not in (*TRL_COMPLETION_COLUMNS, "advantage") and pd.api.types.is_numeric_dtype(frame[c])]
    for record in frame.to_dict("records"):
        values = {c: float(record[c]) for c in rewards if record[c] is not None and math.isfinite(float(record[c]))}
        imported.completions.append({
            "step": int(record["step"]), "prompt": _text(record["prompt"]), "completion": _text(record["completion"]),
            "score": sum(values.values()) if values else None, "rewards": values,
            "advantage": float(record["advantage"]) if "advantage" in record and record["advantage"] is not None else None,
            "source": "trl"})


def read_verl_dump(path: Path, imported: Imported) -> None:
    """verl rollout/validation dump (trainer.rollout_data_dir / validation_data_dir, ray_trainer.py
    _dump_generations): {global_step}.jsonl, lines with input, output, gts, score, step and the
    reward function's extra keys."""
    step = int(STEP_JSONL.match(path.name).group(1))
    for row in _jsonl(path, imported):
        missing = [f for f in VERL_DUMP_FIELDS if f not in row]
        if missing:
            raise LogImportError(f"{path}: a line without {', '.join(repr(f) for f in missing)}; expected a verl rollout dump "
                               "(input, output, score, step per line)")
        score = row["score"]
        extra = {k: v for k, v in row.items() if k not in ("input", "output", "gts", "score", "step") and isinstance(v, (int, float))}
        imported.completions.append({
            "step": int(row.get("step", step)), "prompt": _text(row["input"]), "completion": _text(row["output"]),
            "score": float(score) if isinstance(score, (int, float)) else None, "rewards": extra, "source": "verl"})


def _read_path(path: Path, imported: Imported) -> None:
    name = path.name
    if path.is_file():
        if name == "trainer_state.json":
            read_trainer_state(path, imported)
        elif TRL_COMPLETIONS.match(name) or name.endswith(".parquet"):
            read_trl_completions(path, imported)
        elif STEP_JSONL.match(name):
            read_verl_dump(path, imported)
        elif name.endswith(".jsonl"):
            read_verl_file_log(path, imported)
        elif name.startswith("events.out.tfevents."):
            read_tensorboard(path.parent, imported)
        else:
            raise LogImportError(f"{path}: unknown log file (expected trainer_state.json, a verl .jsonl log or {{step}}.jsonl dump, "
                               "a TRL completions_*.parquet or a TensorBoard events.out.tfevents.* file)")
        return
    if not path.is_dir():
        raise LogImportError(f"{path}: no such file or directory")
    found = False
    state = path / "trainer_state.json"
    if not state.is_file():  # a TRL output_dir: the latest checkpoint's trainer state holds the whole log so far
        states = sorted(path.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1)
        state = states[-1] if states else state
    if state.is_file():
        read_trainer_state(state, imported)
        found = True
    for parquet in sorted(path.glob("completions/completions_*.parquet")) + sorted(path.glob("completions_*.parquet")):
        read_trl_completions(parquet, imported)
        found = True
    dumps = sorted((p for p in path.glob("*.jsonl") if STEP_JSONL.match(p.name)), key=lambda p: int(p.stem))
    for dump in dumps:
        read_verl_dump(dump, imported)
        found = True
    if any(path.rglob("events.out.tfevents.*")):
        read_tensorboard(path, imported, skip="trl" if state.is_file() else None)
        found = True
    if not found:
        raise LogImportError(f"{path}: no log found (expected trainer_state.json or checkpoint-N/trainer_state.json, completions/completions_*.parquet, "
                           "{step}.jsonl rollout dumps, or TensorBoard event files)")


def import_logs(paths: list[str]) -> Imported:
    """Every log under `paths`; LogImportError (one line) for a path with nothing importable or a malformed file."""
    imported = Imported()
    for path in paths:
        _read_path(Path(path).expanduser(), imported)
    return imported
