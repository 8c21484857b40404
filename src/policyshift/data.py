"""Prompts: loading (files we parse ourselves for line-numbered errors; anything else through
`datasets`), the held-out fixed-prompt split, and a resumable shuffled batch sampler."""

from __future__ import annotations

import json
import random
from pathlib import Path


class DataError(ValueError):
    """A bad prompt source; the message is one line naming the file, line and problem."""


def _prompt_from(record, field: str, where: str) -> str:
    if isinstance(record, str):
        text = record
    elif isinstance(record, dict):
        if field not in record:
            keys = ", ".join(map(str, record)) or "none"
            raise DataError(f"{where}: no '{field}' field (fields: {keys}); set data.prompt_field")
        text = record[field]
        if not isinstance(text, str):
            raise DataError(f"{where}: '{field}' must be a string, got {type(text).__name__}")
    else:
        raise DataError(f"{where}: expected an object with a '{field}' field or a string, got {type(record).__name__}")
    if not text.strip():
        raise DataError(f"{where}: empty prompt")
    return text


def _read_jsonl(path: Path, field: str) -> list[str]:
    prompts = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            prompts.append(_prompt_from(record, field, f"{path}:{lineno}"))
    return prompts


def _read_json(path: Path, field: str) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get(field), list):
        data = data[field]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of prompts")
    return [_prompt_from(r, field, f"{path}[{i}]") for i, r in enumerate(data)]


def _read_txt(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.open(encoding="utf-8") if line.strip()]


def _read_with_datasets(source: str, field: str, split: str) -> list[str]:
    import datasets

    path = Path(source)
    kind = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix)
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split=split) if kind else datasets.load_dataset(source, split=split)
    except Exception as exc:  # datasets raises many types (FileNotFound, ConnectionError, DatasetNotFound...)
        raise DataError(f"cannot load prompts from '{source}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if field not in ds.column_names:
        raise DataError(f"{source}: no '{field}' column (columns: {', '.join(ds.column_names)}); set data.prompt_field")
    return [_prompt_from(t, field, f"{source} row {i}") for i, t in enumerate(ds[field])]


def load_prompts(source: str, field: str = "prompt", split: str = "train") -> list[str]:
    """Prompts from a .jsonl/.json/.txt file, a .csv/.parquet file or a hub dataset id (via `datasets`)."""
    path = Path(source)
    if path.suffix in (".jsonl", ".json", ".txt") or path.exists():
        if not path.is_file():
            raise DataError(f"prompt file not found: {source}")
        try:
            if path.suffix == ".jsonl":
                prompts = _read_jsonl(path, field)
            elif path.suffix == ".json":
                prompts = _read_json(path, field)
            elif path.suffix in (".csv", ".parquet", ".arrow"):
                prompts = _read_with_datasets(source, field, "train")
            else:
                prompts = _read_txt(path)
        except UnicodeDecodeError:
            raise DataError(f"{source}: not a UTF-8 text file") from None
        except OSError as exc:
            raise DataError(f"cannot read prompt file {source}: {exc.strerror}") from None
    else:
        prompts = _read_with_datasets(source, field, split)
    if not prompts:
        raise DataError(f"no prompts in {source}")
    return prompts


def split_fixed_prompts(prompts: list[str], n_fixed: int, seed: int) -> tuple[list[str], list[str]]:
    """Hold out `n_fixed` prompts (a seeded choice) that the policy never trains on."""
    if n_fixed == 0:
        return prompts, []
    if n_fixed >= len(prompts):
        raise DataError(f"analysis.num_prompts ({n_fixed}) must be smaller than the number of prompts ({len(prompts)})")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_fixed])
    return [p for i, p in enumerate(prompts) if i not in held], [prompts[i] for i in sorted(held)]


class PromptSampler:
    """Endless batches over the prompts, reshuffled every epoch from (seed, epoch) so that the
    position (epoch, index) alone restores the stream on resume."""

    def __init__(self, prompts: list[str], batch_size: int, seed: int, shuffle: bool = True):
        self.prompts, self.batch_size, self.seed, self.shuffle = prompts, batch_size, seed, shuffle
        self.epoch, self.index = 0, 0
        self._order = self._order_for(0)

    def _order_for(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed * 100003 + epoch).shuffle(order)
        return order

    def next_batch(self) -> list[str]:
        batch = []
        while len(batch) < self.batch_size:
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._order_for(self.epoch)
            batch.append(self.prompts[self._order[self.index]])
            self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._order_for(self.epoch)
