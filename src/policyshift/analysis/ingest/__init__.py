"""Other trainers' logs and checkpoints: the `IMPORTERS` registry (`policyshift analyze --logs`, discovery).

Every trainer is one module of this package that defines `IMPORTER = Importer(...)` (analysis.ingest.base):
the log formats it reads (file names matched, files found in a run directory, the reader), the TensorBoard
tags that are its, its key table (`KeyMap`: the key as logged, the policyshift key it feeds only when it
means the same thing — unit, estimator, reward — and its meaning in words), and its checkpoint layouts
(step-carrying directory names, report labels, shards to merge first). The modules are found by name;
`order` places an importer in the registry (reading order in a directory, TensorBoard recognition: the
generic `tensorboard` importer, order 40, takes events no trainer before it claims).

To add an importer: write `analysis/ingest/<trainer>.py` with `IMPORTER = Importer(name=..., order=...,
formats=..., keys=..., checkpoints=...)` and `tests/test_import_<trainer>.py` with a fixture written
the way the trainer writes it (cite its repository, version, file, line). Nothing else changes: the
format lists of error messages and of the CLI help, discovery's step names and "expected ..." list,
the same-run check, the report's hints and key meanings are built from the registry.

Reading: scalars become metrics.jsonl rows (every key under `<source>/<key>` as logged, plus the
policyshift key when the meanings match); logged completions become completions.jsonl rows and
distributions.jsonl score lists by step. Nothing is written here: `import_logs` returns what
analysis.analyze writes with the rest.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from policyshift.analysis.ingest.base import (CheckpointLayout, Importer, Imported, KeyMap, LogFormat, LogImportError, ShardLayout,
                                              as_text, jsonl_objects, number_rows, one_minus)

_NOT_IMPORTERS = {"base"}


def _load() -> tuple[Importer, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_IMPORTERS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        importer = getattr(module, "IMPORTER", None)
        if not isinstance(importer, Importer):
            raise TypeError(f"{module.__name__}: an importer module defines IMPORTER = Importer(...)")
        found.append(importer)
    found.sort(key=lambda i: i.order)
    names = [i.name for i in found]
    if len(set(names)) != len(names):
        raise TypeError(f"two importers share a name: {names}")
    return tuple(found)


IMPORTERS: tuple[Importer, ...] = _load()
BY_NAME: dict[str, Importer] = {i.name: i for i in IMPORTERS}
FORMATS: tuple[LogFormat, ...] = tuple(f for i in IMPORTERS for f in i.formats)

# metrics.jsonl prefixes of imported keys kept as logged (`<source>/<key>`): not policyshift quantities
SOURCES: tuple[str, ...] = tuple(i.name for i in IMPORTERS if i.scalars)
RAW_PREFIXES: tuple[str, ...] = tuple(f"{source}/" for source in SOURCES)
TABLES: dict[str, list[KeyMap]] = {i.name: list(i.keys) for i in IMPORTERS if i.keys}


def _either(phrases: list[str], last: str = " or ") -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + last + phrases[-1]


FILE_EXPECTED = _either([f.file_phrase for f in FORMATS if f.file_phrase])  # a file given by path
DIR_EXPECTED = _either([f.dir_phrase for f in FORMATS if f.dir_phrase], ", or ")  # a directory searched
LOGS_HELP = ", ".join(f.help for f in FORMATS if f.help)  # `analyze --logs`
COMPLETION_LOGS = ", ".join(f.completions for f in FORMATS if f.completions)  # report hints: what fills the completions panels
CHECKPOINT_TRAINERS = ", ".join(i.title for i in IMPORTERS if i.other_trainer and (i.checkpoints or i.step_prefixes))  # `analyze` help


def lookup(source: str, key: str) -> KeyMap | None:
    """The mapping of one key of `source`'s log (its importer's key table, then its key patterns)."""
    importer = BY_NAME.get(source)
    return importer.lookup(key) if importer is not None else None


def _read_path(path: Path, imported: Imported) -> None:
    if path.is_file():
        fmt = next((f for f in FORMATS if f.matches(path.name)), None)
        if fmt is None:
            raise LogImportError(f"{path}: unknown log file (expected {FILE_EXPECTED})")
        fmt.read(path, imported, {})
        return
    if not path.is_dir():
        raise LogImportError(f"{path}: no such file or directory")
    found = False
    context: dict = {}
    for fmt in FORMATS:
        if fmt.find is None:
            continue
        for item in fmt.find(path, context):
            (fmt.read_found or fmt.read)(item, imported, context)
            found = True
    if not found:
        raise LogImportError(f"{path}: no log found (expected {DIR_EXPECTED})")


def import_logs(paths: list[str]) -> Imported:
    """Every log under `paths`; LogImportError (one line) for a path with nothing importable or a malformed file."""
    imported = Imported(importers=dict(BY_NAME))
    for path in paths:
        _read_path(Path(path).expanduser(), imported)
    return imported


__all__ = ["IMPORTERS", "BY_NAME", "FORMATS", "SOURCES", "RAW_PREFIXES", "TABLES", "Importer", "LogFormat", "CheckpointLayout",
           "ShardLayout", "KeyMap", "Imported", "LogImportError", "import_logs", "lookup", "as_text", "jsonl_objects", "number_rows",
           "one_minus", "FILE_EXPECTED", "DIR_EXPECTED", "LOGS_HELP", "COMPLETION_LOGS", "CHECKPOINT_TRAINERS"]
