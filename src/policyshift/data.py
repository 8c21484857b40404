"""Prompts: loading (files we parse ourselves for line-numbered errors; anything else through
`datasets`), the held-out fixed-prompt split, and a resumable shuffled batch sampler."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

from policyshift.chat import CHAT_FIELD, check_messages, render_chat
from policyshift.errors import DataError  # noqa: F401 (defined in errors.py; old import path)


OUR_FORMATS = (".jsonl", ".json", ".txt")  # parsed here, for line-numbered errors
DATASETS_FORMATS = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}  # read through `datasets`
# utf-8-sig: Windows editors start files with a BOM, which json.loads rejects as "malformed JSON".
ENCODING = "utf-8-sig"


@dataclass(frozen=True)
class PromptRow:
    """A prompt and the other fields of its row (e.g. `answer`, `tests` for a verifiable reward), which
    reward functions receive as keyword arguments."""

    text: str
    fields: dict = dataclass_field(default_factory=dict)
    # A chat row's messages (policyshift.chat); `text` is their rendering in the tokenizer's chat template, made
    # by load_prompt_rows when it is given the tokenizer. The messages are also a field (`messages`).
    messages: tuple | None = None


def _row_from(record, field: str, where: str) -> PromptRow:
    if isinstance(record, dict) and field not in record and CHAT_FIELD in record:
        messages = check_messages(record[CHAT_FIELD], where)
        return PromptRow("", dict(record), messages)  # rendered by load_prompt_rows, which knows the tokenizer
    text = _prompt_from(record, field, where)
    extra = {k: v for k, v in record.items() if k != field} if isinstance(record, dict) else {}
    return PromptRow(text, extra)


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


def _parse_json(text: str, where: str, name_line: bool = False):
    """json.loads with every failure as a DataError; `name_line` adds the line of a syntax error
    (a whole .json file; a .jsonl `where` already names its line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = f":{exc.lineno}" if name_line else ""
        raise DataError(f"{where}{line}: malformed JSON ({exc.msg})") from None
    except ValueError as exc:  # json's own limits: an integer of more than 4300 digits
        raise DataError(f"{where}: malformed JSON ({exc})") from None
    except RecursionError:  # "[[[[..." deeper than the interpreter's stack
        raise DataError(f"{where}: malformed JSON (nested too deeply)") from None


def join_prompt_response(prompt: str, response: str) -> str:
    """The response as it continues the prompt: one space is put between them unless either side already has
    whitespace at the boundary. SFT, the reward model and PPO must join the two the same way."""
    if prompt and response and not prompt[-1].isspace() and not response[0].isspace():
        return " " + response
    return response


def check_data_file(path, what: str = "data") -> Path:
    """The file of a JSONL input, there (DataError naming `what` otherwise): called by the commands before any model loads."""
    path = Path(path).expanduser()  # YAML values and `--x=~/d.jsonl` get no shell ~ expansion
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    return path


def iter_jsonl(path, what: str = "data"):
    """(where, record) for each non-blank line of a JSONL file, `where` = "path:line" for errors;
    the one reader of JSONL inputs (prompts, SFT data, preference pairs)."""
    path = check_data_file(path, what)
    with path.open(encoding=ENCODING) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                where = f"{path}:{lineno}"
                yield where, _parse_json(line, where)


def _read_jsonl(path: Path, field: str) -> list[PromptRow]:
    return [_row_from(record, field, where) for where, record in iter_jsonl(path, "prompt")]


def _read_json(path: Path, field: str) -> list[PromptRow]:
    data = _parse_json(path.read_text(encoding=ENCODING), str(path), name_line=True)
    if isinstance(data, dict) and isinstance(data.get(field), list):
        data = data[field]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of prompts")
    return [_row_from(r, field, f"{path}[{i}]") for i, r in enumerate(data)]


def _read_txt(path: Path) -> list[PromptRow]:
    with path.open(encoding=ENCODING) as f:
        return [PromptRow(line.rstrip("\n")) for line in f if line.strip()]


def _read_with_datasets(source: str, field: str, split: str) -> list[PromptRow]:
    import datasets

    path = Path(source)
    kind = DATASETS_FORMATS.get(path.suffix.lower()) if path.is_file() else None
    from datasets.utils import logging as ds_logging

    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # "Generating train split": not a line the user acts on, and it buries our errors
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split=split) if kind else datasets.load_dataset(source, split=split)
    except Exception as exc:  # datasets raises many types (FileNotFound, ConnectionError, DatasetNotFound...)
        raise DataError(f"cannot load prompts from '{source}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        if bars:
            ds_logging.enable_progress_bar()
    if field not in ds.column_names and CHAT_FIELD not in ds.column_names:
        raise DataError(f"{source}: no '{field}' column (columns: {', '.join(ds.column_names)}); set data.prompt_field")
    return [_row_from(row, field, f"{source} row {i}") for i, row in enumerate(ds)]


def load_prompts(source: str, field: str = "prompt", split: str = "train", tokenizer=None) -> list[str]:
    """Prompt texts from a .jsonl/.json/.txt file, a .csv/.parquet file, a directory of data files or a
    hub dataset id (via `datasets`); chat rows rendered with `tokenizer`'s chat template."""
    return [row.text for row in load_prompt_rows(source, field, split, tokenizer)]


def check_prompt_source(source: str) -> tuple[Path, str]:
    """What load_prompt_rows finds without reading anything: a source is given, and a prompt file (named by its
    suffix, or an existing path) is a file that is there. The commands call it before any model loads. Returns the
    source's path (~ expanded) and its lower-case suffix, which load_prompt_rows reads by."""
    if not str(source).strip():  # Path("") is ".", which would load the working directory as a dataset
        raise DataError("no prompt source given (data.prompts is empty)")
    path = Path(source).expanduser()  # `--data.prompts=~/p.jsonl` and YAML values reach us without the shell's ~ expansion
    suffix = path.suffix.lower()  # PROMPTS.JSONL is JSONL, not one JSON text per prompt
    if not path.is_dir() and (suffix in OUR_FORMATS or suffix in DATASETS_FORMATS or path.exists()) and not path.is_file():
        raise DataError(f"prompt file not found: {path if str(source).startswith('~') else source}")
    return path, suffix


def load_prompt_rows(source: str, field: str = "prompt", split: str = "train", tokenizer=None) -> list[PromptRow]:
    """As load_prompts, keeping each row's other fields. Chat rows (`{"messages": [...]}`) are rendered here
    with `tokenizer`'s chat template (policyshift.chat), so every later stage sees one prompt text."""
    path, suffix = check_prompt_source(source)
    if str(source).startswith("~"):
        source = str(path)
    if path.is_dir():
        prompts = _read_with_datasets(source, field, split)
    elif suffix in OUR_FORMATS or suffix in DATASETS_FORMATS or path.exists():
        try:
            if suffix == ".jsonl":
                prompts = _read_jsonl(path, field)
            elif suffix == ".json":
                prompts = _read_json(path, field)
            elif suffix in DATASETS_FORMATS:
                prompts = _read_with_datasets(source, field, "train")  # data_files load as one "train" split
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
    return render_rows(prompts, tokenizer, str(source))


def render_rows(rows: list[PromptRow], tokenizer, source: str) -> list[PromptRow]:
    """Each chat row with its text rendered by the tokenizer's chat template (generation prompt added)."""
    if not any(row.messages is not None for row in rows):
        return rows
    if tokenizer is None:
        raise DataError(f"{source}: chat prompts ('{CHAT_FIELD}') are rendered with a tokenizer's chat template; none was given")
    return [PromptRow(render_chat(row.messages, tokenizer, f"{source} row {i}"), row.fields, row.messages) if row.messages is not None else row
            for i, row in enumerate(rows)]


def split_fixed_prompts(prompts: list, n_fixed: int, seed: int) -> tuple[list, list[str]]:
    """Hold out `n_fixed` prompts (a seeded choice) that the policy never trains on: (training prompts or
    rows, held-out texts). The choice is among distinct texts, and every copy of a held-out text leaves the
    training set: a duplicated prompt would otherwise be both trained on and "held out"."""
    if n_fixed < 0:
        raise DataError(f"analysis.num_prompts must be >= 0; got {n_fixed}")
    if n_fixed == 0:
        return list(prompts), []
    text = lambda p: p.text if isinstance(p, PromptRow) else p  # noqa: E731
    distinct = list(dict.fromkeys(map(text, prompts)))  # first occurrences, in order
    if n_fixed >= len(distinct):
        raise DataError(
            f"analysis.num_prompts ({n_fixed}) must be smaller than the number of distinct prompts ({len(distinct)})"
        )
    order = list(range(len(distinct)))
    random.Random(seed).shuffle(order)
    held = {distinct[i] for i in order[:n_fixed]}
    return [p for p in prompts if text(p) not in held], [p for p in distinct if p in held]


class PromptSampler:
    """Endless batches over the prompts, reshuffled every epoch from (seed, epoch) so that the
    position (epoch, index) alone restores the stream on resume."""

    def __init__(self, prompts: list[str], batch_size: int, seed: int, shuffle: bool = True):
        if not prompts:  # next_batch would index an empty order
            raise DataError("no prompts to sample from")
        self.prompts, self.batch_size, self.seed, self.shuffle = prompts, batch_size, seed, shuffle
        self.epoch, self.index = 0, 0
        self._order = self._order_for(0)

    def _order_for(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed * 100003 + epoch).shuffle(order)
        return order

    def next_batch(self) -> list:
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
