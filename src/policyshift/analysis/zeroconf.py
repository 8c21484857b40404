"""`policyshift analyze RUN_DIR` with no other flag: what the run itself records chooses the inputs.

- the reference: the model the run started from, as the run wrote it down — a TRL model card's
  `base_model:`, a LoRA checkpoint's adapter_config.json `base_model_name_or_path`, a checkpoint's config.json
  `_name_or_path`, verl's saved config `actor_rollout_ref.model.path` — the first that is a local model directory;
- the logs: every log the importers find in the run directories (what `--logs RUN_DIR` would read);
- the fixed prompts: the distinct prompts of the run's own logged completions (training prompts, said so), at most
  `MAX_PROMPTS`.
Each choice is one line; a flag given overrides it. Nothing is chosen silently: when the run records nothing
usable, the one-line error names the flag to pass.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from policyshift.analysis.ingest.base import model_card_metadata
from policyshift.errors import DataError

MAX_PROMPTS = 64  # fixed prompts sampled from a larger prompt set (every checkpoint samples every fixed prompt)


@dataclass
class Choices:
    reference: str | None = None
    prompts: str | None = None
    logs: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # one per choice made, for stderr


def _model_dir(path: Path) -> bool:
    from policyshift.analysis.ingest.hf import is_model_dir

    return path.is_dir() and is_model_dir(path)


def _card_base(directory: Path) -> str | None:
    base = model_card_metadata(directory / "README.md").get("base_model")
    base = base[0] if isinstance(base, list) and len(base) == 1 else base  # the Hub allows a list of bases
    return str(base) if isinstance(base, str) and base else None


def _json_field(path: Path, key: str) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def reference_candidates(paths: list[str]) -> list[tuple[str, str]]:
    """(model path, where the run records it) in the order they are tried."""
    found = []
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.is_dir():
            continue
        base = _card_base(root)
        if base:
            found.append((base, f"{root / 'README.md'} base_model"))
        for adapter in sorted(root.rglob("adapter_config.json"))[:20]:
            base = _json_field(adapter, "base_model_name_or_path")
            if base:
                found.append((base, f"{adapter} base_model_name_or_path"))
        for config in sorted(root.rglob("config.json"))[:20]:
            base = _json_field(config, "_name_or_path")
            if base and Path(base).expanduser().resolve() != config.parent.resolve():
                found.append((base, f"{config} _name_or_path"))
        from policyshift.analysis.ingest.verl import run_config

        for directory in (root, *(p for p in root.iterdir() if p.is_dir())):
            path = run_config(directory).get("actor_rollout_ref.model.path")
            if isinstance(path, str):
                found.append((path, "verl's saved config actor_rollout_ref.model.path"))
                break
    return found


def choose(paths: list[str], reference: str | None, prompts: str | None, logs: list[str] | None, out_dir: str) -> Choices:
    """The inputs `analyze` was not given, from what the runs under `paths` record; DataError (one line) when a
    needed one cannot be found."""
    chosen = Choices(reference=reference, prompts=prompts, logs=list(logs or []))
    if not logs:
        from policyshift.analysis.ingest import LogImportError, import_logs

        for path in paths:
            try:
                import_logs([path])
            except LogImportError:
                continue
            chosen.logs.append(path)
        if chosen.logs:
            chosen.lines.append(f"logs: imported from the run directory ({', '.join(chosen.logs)}); --logs overrides")
    if reference is None:
        for path, where in reference_candidates(paths):
            if _model_dir(Path(path).expanduser()):
                chosen.reference = path
                chosen.lines.append(f"reference: {path} (from {where}); --reference overrides")
                break
        else:
            recorded = ", ".join(f"{p} ({w})" for p, w in reference_candidates(paths)[:3])
            raise DataError("no --reference given and the run records no local model it started from"
                            + (f" (recorded: {recorded}, not a local model directory)" if recorded else "")
                            + "; pass --reference SFT_PATH")
    if prompts is None:
        chosen.prompts = _logged_prompts(chosen.logs, out_dir)
        chosen.lines.append(f"prompts: {MAX_PROMPTS} at most of the run's own logged *training* prompts ({chosen.prompts}); "
                            "--prompts overrides")
    return chosen


def _logged_prompts(logs: list[str], out_dir: str) -> str:
    from policyshift.analysis.ingest import import_logs

    seen: list[str] = []
    if logs:
        for row in import_logs(logs).completions:
            if row.get("prompt") and row["prompt"] not in seen:
                seen.append(row["prompt"])
    if not seen:
        raise DataError("no --prompts given and the run logged no completions to take training prompts from; pass --prompts FILE")
    if len(seen) > MAX_PROMPTS:
        seen = random.Random(0).sample(seen, MAX_PROMPTS)
    # a file of its own (--out is written only at the end, by rename): the run's config records its path
    handle, name = tempfile.mkstemp(prefix="policyshift_training_prompts_", suffix=".jsonl")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps({"prompt": p}) + "\n" for p in seen))
    return name


def bounded(rows: list, limit: int = MAX_PROMPTS, seed: int = 0) -> tuple[list, str | None]:
    """At most `limit` prompt rows, drawn with a fixed seed (file order kept), and the line saying so."""
    if len(rows) <= limit:
        return rows, None
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep], f"prompts: {limit} of the file's {len(rows)} sampled (seed {seed}) as fixed prompts; --max-prompts changes it"
