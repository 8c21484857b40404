"""Finding a run's checkpoints by its trainer's conventions (`policyshift analyze`).

Layouts read (docs/guides/analyze.md):
- an HF model directory: config.json + weights (safetensors or .bin, sharded or not), or a peft
  LoRA adapter (adapter_config.json naming its base);
- HF Trainer / TRL: OUTPUT_DIR/checkpoint-N/ (N = global step, also in its trainer_state.json);
  the final model saved at OUTPUT_DIR itself counts when OUTPUT_DIR/trainer_state.json gives its step;
- OpenRLHF: the HF model at --ckpt.output_dir, and --ckpt.save_hf's CKPT_PATH/global_step{N}_hf/ (and best_global_step{N}_hf/);
- verl: global_step_N/actor/huggingface/ once the HF weights are saved there (or the model merger's
  output); per-rank FSDP shards (model_world_size_W_rank_R.pt) must be merged first;
- policyshift: RUN_DIR/checkpoints/step-N/policy/ and RUN_DIR/final/.
Sequence classifiers (critics, reward models saved beside the policy) are not policies and are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from policyshift.analysis.ingest import IMPORTERS
from policyshift.analysis.ingest.hf import ADAPTER_FILE, WEIGHT_FILES, has_weight_shards, is_adapter_dir, is_model_dir, save_in_progress  # noqa: F401 (re-exported)
from policyshift.errors import DiscoveryError  # noqa: F401 (defined in errors.py; old import path)


def _step_name() -> re.Pattern:
    prefixes = list(dict.fromkeys(p for i in IMPORTERS for p in i.step_prefixes))
    suffixes = list(dict.fromkeys(s for i in IMPORTERS for s in i.step_suffixes))
    tail = f"(?:{'|'.join(map(re.escape, suffixes))})?" if suffixes else ""
    return re.compile(rf"^(?:{'|'.join(map(re.escape, prefixes))})[-_]?(\d+){tail}$")


# a path component that carries the step, from every importer's step_prefixes: checkpoint-N (HF/TRL), step-N (policyshift),
# global_step_N (verl), global_stepN[_hf] (OpenRLHF / DeepSpeed), iter-N ...
STEP_NAME = _step_name()
LAYOUTS = tuple(layout for i in IMPORTERS for layout in i.checkpoints)
SHARDS = tuple(shard for i in IMPORTERS for shard in i.shards)
MAX_DEPTH = 4  # RUN/global_step_N/actor/huggingface is the deepest layout read


def _run_layouts() -> str:
    phrases = [layout.expected for layout in LAYOUTS if layout.expected]
    return ", ".join(phrases[:-1]) + " or " + phrases[-1]


EXPECTED = ("an HF model directory (config.json + model.safetensors/pytorch_model.bin, or a LoRA adapter_config.json), "
            f"or a run directory with {_run_layouts()}")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int | None  # None: no step in its name or trainer state (the caller numbers it)
    layout: str  # which convention found it, shown in the report


# verl's model merger with LoRA writes the base weights to the target and the adapter to target/lora_adapter/
# (verl 0.9.1 model_merger/base_model_merger.py L394-419): the policy is the adapter on its base, not the base
LORA_ADAPTER = "lora_adapter"


def _is_classifier(path: Path) -> bool:
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return bool(architectures) and all(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures)


def _state_step(path: Path) -> int | None:
    """The step a model directory's own files record (an HF Trainer trainer_state.json's global_step), if any."""
    for importer in IMPORTERS:
        if importer.checkpoint_step is not None:
            step = importer.checkpoint_step(path)
            if step is not None:
                return step
    return None


def step_from_path(path: Path, root: Path | None = None) -> int | None:
    """The step in the nearest path component named like checkpoint-N/step-N/global_step_N (below `root`
    when given), else the trainer_state.json beside the weights."""
    parts = path.relative_to(root).parts if root is not None and path != root else (path.name,)
    for part in reversed(parts):
        match = STEP_NAME.match(part)
        if match:
            return int(match.group(1))
    return _state_step(path)


def _layout(path: Path) -> str:
    kind = _layout_of(path)
    return kind + " (LoRA adapter)" if is_adapter_dir(path) and kind != "LoRA adapter" else kind


def _layout_of(path: Path) -> str:
    layout = next((layout for layout in LAYOUTS if layout.matches(path)), None)
    if layout is not None:
        return layout.label
    return "LoRA adapter" if is_adapter_dir(path) else "HF model directory"


def _walk(root: Path, depth: int = 0):
    """Directories under `root` (not itself), breadth first, to MAX_DEPTH; hidden and temporary ones
    (a save in progress: policyshift's .tmp-step-N) skipped; no descent into a model directory."""
    if depth >= MAX_DEPTH:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        yield child
        if not is_model_dir(child):
            yield from _walk(child, depth + 1)


def _unmerged_shards(root: Path) -> list[str]:
    """One note per directory of per-rank training shards with no HF weights beside them."""
    notes = []
    for directory in [root, *_walk(root)]:
        try:
            names = [f.name for f in directory.iterdir()]
        except OSError:
            continue
        for shard in SHARDS:
            if any(shard.pattern(n) for n in names) and not shard.merged(directory):
                notes.append(shard.note(directory))
                break
    return notes


def check_run_path(path: str | Path) -> Path:
    """A PATH of `analyze`: a directory that is there (DiscoveryError, one line, otherwise)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DiscoveryError(f"{path}: no such file or directory (expected {EXPECTED})")
    if not root.is_dir():
        raise DiscoveryError(f"{path}: not a directory (expected {EXPECTED})")
    return root


def find_checkpoints(path: str | Path) -> tuple[list[Checkpoint], list[str]]:
    """The policy checkpoints under `path` in step order, and one note per thing skipped.

    `path` is a model directory itself, or a run directory searched by the layouts above. Raises
    DiscoveryError (one line) when nothing loadable is there."""
    root = check_run_path(path)
    notes: list[str] = []
    found: list[Checkpoint] = []
    for directory in _walk(root):
        if _saved_model(directory) and not _is_classifier(directory):
            if is_adapter_dir(directory / LORA_ADAPTER):  # verl's merger: base weights here, the trained adapter below
                directory = directory / LORA_ADAPTER
            unfinished = _being_written(root, directory)
            if unfinished:
                notes.append(unfinished)
                continue
            if not is_model_dir(directory):
                continue
            step = step_from_path(directory, root)
            if step is None:
                step = _unnamed_step(root, directory)
            if step is None:
                notes.append(f"{directory}: a model with no step in its name or trainer_state.json; skipped (pass it as its own PATH)")
                continue
            found.append(Checkpoint(directory, step, _layout(directory)))
    if _saved_model(root) and not _is_classifier(root) and (unfinished := _being_written(root.parent, root)):
        raise DiscoveryError(unfinished.replace("; skipped", ": analyze it once its run has written it"))
    if is_model_dir(root) and not _is_classifier(root):
        step = _state_step(root)
        if not found:
            return [Checkpoint(root, step_from_path(root), _layout(root))], notes
        if step is not None:  # a Trainer's output_dir after save_model + save_state: the final model
            found.append(Checkpoint(root, step, "final model of the run"))
        else:
            notes.append(f"{root}: the model saved at the run's top has no trainer_state.json step; skipped (pass it as its own PATH)")
    notes += _unmerged_shards(root)
    if not found:
        if notes:
            raise DiscoveryError(f"{path}: no loadable checkpoint; " + "; ".join(notes))
        raise DiscoveryError(f"{path}: no checkpoint found (expected {EXPECTED})")
    by_step: dict[int, Checkpoint] = {}
    for ckpt in sorted(found, key=lambda c: (c.step, len(c.path.parts))):
        if ckpt.step in by_step:
            notes.append(f"{ckpt.path}: step {ckpt.step} is already {by_step[ckpt.step].path}; skipped")
            continue
        by_step[ckpt.step] = ckpt
    return [by_step[s] for s in sorted(by_step)], notes


def _saved_model(path: Path) -> bool:
    """A model directory, or one that save_pretrained is still filling (its shards there, not its index yet)."""
    return is_model_dir(path) or has_weight_shards(path)


def _being_written(root: Path, directory: Path) -> str | None:
    """The one rule for a checkpoint read while its trainer writes it: it is complete once the file written last is
    there. What every HF model directory shows (hf.save_in_progress: a staging name, shards without their index, an
    index naming a shard not there yet), then the trainer's own last file by the importer whose convention it is
    (policyshift: final/manifest.json; HF Trainer / TRL: checkpoint-N/trainer_state.json; verl:
    latest_checkpointed_iteration.txt). The note that skips it, else None."""
    why = save_in_progress(directory)
    for importer in IMPORTERS:
        if why is None and importer.being_written is not None:
            why = importer.being_written(root, directory)
    return f"{directory}: {why} (being written by its training run); skipped" if why else None


def _unnamed_step(root: Path, directory: Path) -> int | None:
    """The step of a checkpoint whose name carries none, by the importer whose convention it is (policyshift's final/)."""
    for importer in IMPORTERS:
        if importer.unnamed_step is not None:
            step = importer.unnamed_step(root, directory)
            if step is not None:
                return step
    return None
