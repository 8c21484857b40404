"""What an importer declares (`Importer`), the key-table entry (`KeyMap`) and what reading fills (`Imported`).

An importer describes one trainer's conventions: the log formats it reads (file names it matches,
what it finds in a directory, how it reads them), the TensorBoard tags that identify its events,
its scalar key table (unit, estimator, which reward: whether a key means what the policyshift key
means), and its checkpoint layouts (directory names that carry the step, how the report labels
them, per-rank shards that must be merged first). The registry (analysis.ingest) builds every
list, message and lookup from these declarations.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from policyshift import keys as K
from policyshift.errors import LogImportError  # noqa: F401 (defined in errors.py; old import path)


@dataclass(frozen=True)
class KeyMap:
    key: str  # as the source logs it (TensorBoard's "train/" prefix stripped)
    target: str | None  # policyshift metrics key the panels/detectors read; None: shown as logged only
    meaning: str  # unit, estimator, which reward — and why it is or is not fed
    transform: Callable[[float], float] | None = None

    def value(self, x: float) -> float:
        return self.transform(x) if self.transform else x


def one_minus(x: float) -> float:
    return 1.0 - x


@dataclass(frozen=True)
class LogFormat:
    """One kind of log file a trainer writes.

    `matches(name)`: a file given by path is this format. `read(path, imported, context)`: read one
    file (or, for `reads_directory`, the directory holding it) into `imported`. `find(directory, context)`:
    the files of this format in a run directory, in reading order (None: never searched for, only
    read when given). `file_phrase`/`dir_phrase`/`help`: how error messages and the CLI help name it.
    `context` is a dict shared by the formats read from one directory (which importers were read)."""

    matches: Callable[[str], bool]
    read: Callable[..., None]
    file_phrase: str | None = None  # in "unknown log file (expected ...)"; None: named by another format's phrase
    find: Callable[[Path, dict], list[Path]] | None = None
    read_found: Callable[..., None] | None = None  # reads what `find` returned, when that is not a file `read` takes
    dir_phrase: str | None = None  # in "no log found (expected ...)"
    help: str | None = None  # in `analyze --logs` help
    completions: str | None = None  # logged completions: how the report's hint names them


@dataclass(frozen=True)
class ShardLayout:
    """Per-rank training shards that are not an HF model: `pattern` matches a file name; `merged(directory)`
    says whether HF weights exist already; `note(directory)` says how to merge them."""

    pattern: Callable[[str], bool]
    merged: Callable[[Path], bool]
    note: Callable[[Path], str]


@dataclass(frozen=True)
class CheckpointLayout:
    """A checkpoint directory convention: `label` names it in the report when `matches(path)`;
    `expected` is its phrase in discovery's "expected ..." list."""

    label: str
    matches: Callable[[Path], bool]
    expected: str | None = None


@dataclass(frozen=True)
class Importer:
    name: str  # metrics.jsonl prefix of its raw keys (`<name>/<key>`) and imported.sources kind
    title: str  # how people name the trainer
    order: int  # registry position: reading order within a directory, TensorBoard recognition, lists
    formats: tuple[LogFormat, ...] = ()
    keys: tuple[KeyMap, ...] = ()  # the key table: what each logged key means and which policyshift key it feeds
    key_pattern: Callable[[str], KeyMap | None] | None = None  # keys known by pattern (e.g. one per reward function)
    tensorboard_tags: Callable[[set[str]], bool] | None = None  # these TensorBoard scalar keys are this trainer's
    tensorboard_strip: str | None = None  # tag prefix its TensorBoard writer adds (HF Trainer: "train/")
    tensorboard_repeats_log: bool = False  # its events repeat a scalar log read from the same directory: skip them
    # (event folder) → (key lookup, mode) of the run the events belong to, from what the run saved beside them
    # (TRL: the output_dir's model card and training_args.bin); None: the static key table
    events_mode: Callable[[Path], tuple] | None = None
    checkpoints: tuple[CheckpointLayout, ...] = ()
    step_prefixes: tuple[str, ...] = ()  # directory names that carry the step: PREFIX[-_]N (checkpoint-N, global_step_N, ...)
    step_suffixes: tuple[str, ...] = ()  # ... optionally followed by one of these (OpenRLHF's global_stepN_hf)
    shards: tuple[ShardLayout, ...] = ()
    checkpoint_log: Callable[[Path], tuple[Path, list] | None] | None = None  # the scalar log a checkpoint carries (same-run check)
    checkpoint_step: Callable[[Path], int | None] | None = None  # the step a model directory's own files record
    unnamed_step: Callable[[Path, Path], int | None] | None = None  # (root, directory): step of a checkpoint whose name has none
    # (root, directory) → why a checkpoint found there is not complete yet: the file its trainer writes last is not there
    # ("no manifest.json yet"), else None. discover._being_written applies these after the rule every HF model directory
    # shares (hf.save_in_progress) and words the note.
    being_written: Callable[[Path, Path], str | None] | None = None
    other_trainer: bool = True  # listed among "any trainer's checkpoints" (policyshift's own runs are not)
    scalars: bool = True  # writes `<name>/<key>` rows into metrics.jsonl
    by_key: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self.by_key.update({m.key: m for m in self.keys})

    def lookup(self, key: str) -> KeyMap | None:
        found = self.by_key.get(key)
        if found is None and self.key_pattern is not None:
            return self.key_pattern(key)
        return found


@dataclass
class Imported:
    history: dict[int, dict] = field(default_factory=dict)  # step → metrics.jsonl keys
    completions: list[dict] = field(default_factory=list)  # completions.jsonl rows
    sources: list[dict] = field(default_factory=list)  # per file read: kind, path, mapped/shown/unknown keys
    notes: list[str] = field(default_factory=list)  # lines skipped etc., one line each
    importers: dict = field(default_factory=dict, repr=False)  # the registry (name → Importer): key tables, TensorBoard tags

    def lookup(self, source: str, key: str) -> KeyMap | None:
        importer = self.importers.get(source)
        return importer.lookup(key) if importer is not None else None

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

    def add_group_metrics(self) -> None:
        """Per step, from the logged completions that carry a group (TRL: runs of num_generations rows; verl V1:
        the uid's sample part): the share of groups whose scores are all equal at the run's highest score (all
        correct: too easy) and at its lowest (all wrong: too hard). Both teach nothing under a group baseline,
        and they need opposite fixes. A step whose groups were not all scored is left out."""
        rows = [r for r in self.completions if r.get("group") is not None]
        scores = [r["score"] for r in rows if isinstance(r.get("score"), (int, float)) and math.isfinite(r["score"])]
        if not rows or not scores:
            return
        top, bottom = max(scores), min(scores)
        if top == bottom:
            return  # one score over the whole run: which end is "correct" is not established
        by_step: dict[int, dict[str, list]] = {}
        for r in rows:
            by_step.setdefault(r["step"], {}).setdefault(r["group"], []).append(r.get("score"))
        for step, groups in by_step.items():
            if any(not isinstance(s, (int, float)) or not math.isfinite(s) for g in groups.values() for s in g):
                continue
            flat = [g[0] for g in groups.values() if len(g) > 1 and all(s == g[0] for s in g)]
            out = self.history.setdefault(step, {})
            out[K.GROUP_FLAT_TOP_FRAC] = sum(v == top for v in flat) / len(groups)
            out[K.GROUP_FLAT_BOTTOM_FRAC] = sum(v == bottom for v in flat) / len(groups)

    def add_scalars(self, source: str, path: Path, rows: list[tuple[int, dict]], table: Callable[[str], KeyMap | None] | None = None,
                    mode: dict | None = None) -> None:
        """Every numeric value under `<source>/<key>`; the policyshift key too when `table` (the importer's
        key table for the run's mode; its static table by default) says the meanings match. A value that is
        not a number (null: NaN as JSON writes it, a string, a list) is listed, never dropped unsaid."""
        look = table if table is not None else (lambda key: self.lookup(source, key))
        mapped, shown, unknown, meanings, not_numbers = {}, set(), set(), {}, {}
        for step, values in rows:
            out = self.history.setdefault(step, {})
            for key, value in values.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    kind = "null" if value is None else type(value).__name__
                    not_numbers.setdefault(key, {"kind": kind, "steps": []})["steps"].append(step)
                    continue
                out[f"{source}/{key}"] = value  # every key, as logged
                m = look(key)
                if m is None:
                    unknown.add(key)
                    continue
                meanings[key] = m.meaning
                if m.target is None:
                    shown.add(key)
                else:
                    out[m.target] = m.value(float(value))
                    mapped[key] = m.target
        for key, entry in not_numbers.items():
            if key not in meanings and key not in unknown:
                m = look(key)
                if m is not None:
                    meanings[key] = m.meaning
        entry = {"kind": f"{source} scalars", "path": str(path), "steps": len(rows), "mapped": mapped, "shown": sorted(shown),
                 "unknown": sorted(unknown), "meanings": meanings}
        if not_numbers:
            entry["not_numbers"] = {key: {"kind": v["kind"], "steps": v["steps"]} for key, v in sorted(not_numbers.items())}
            self.notes.append(f"{path}: values that are not numbers, listed and not read: " + "; ".join(
                f"{key} ({v['kind']} at step{'s' if len(v['steps']) > 1 else ''} {', '.join(map(str, v['steps'][:5]))}"
                f"{', …' if len(v['steps']) > 5 else ''})" for key, v in sorted(not_numbers.items())))
        if mode:
            entry["mode"] = mode
        self.sources.append(entry)


def number_rows(entries) -> list[tuple[int, dict]]:
    """(step, values) of the entries that carry an integer step."""
    rows = []
    for entry in entries:
        step = entry.get("step") if isinstance(entry, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            rows.append((step, {k: v for k, v in entry.items() if k != "step"}))
    return rows


def first_jsonl_object(path: Path) -> dict | None:
    """The first non-empty line of a JSONL file as an object, or None (unreadable, not JSON, not an object): what a
    format's `matches` reads to tell one trainer's JSONL log from another's without reading the whole file."""
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    return row if isinstance(row, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def jsonl_objects(path: Path, imported: Imported) -> list[dict]:
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


def as_text(value) -> str:
    """A prompt as text: TRL's conversational prompts are lists of {"role", "content"} messages."""
    if isinstance(value, str):
        return value
    try:
        return "\n".join(f"{m['role']}: {m['content']}" for m in value)
    except (TypeError, KeyError):
        return str(value)


def model_card_metadata(path: Path) -> dict:
    """The YAML front matter of a Hugging Face model card (README.md: tags, base_model, ...), {} when there is none
    or it does not parse. huggingface_hub reads it as the Hub does."""
    from huggingface_hub import metadata_load

    try:
        return metadata_load(path) or {}
    except Exception:  # noqa: BLE001 (unreadable file, bad YAML: a card that says nothing)
        return {}
