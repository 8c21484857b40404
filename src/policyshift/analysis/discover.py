"""Finding a run's checkpoints by its trainer's conventions (`policyshift analyze`).

Layouts read (README "Analyze a run from another trainer"):
- an HF model directory: config.json + weights (safetensors or .bin, sharded or not), or a peft
  LoRA adapter (adapter_config.json naming its base);
- HF Trainer / TRL: OUTPUT_DIR/checkpoint-N/ (N = global step, also in its trainer_state.json);
  the final model saved at OUTPUT_DIR itself counts when OUTPUT_DIR/trainer_state.json gives its step;
- OpenRLHF: the HF model at --save_path, and --save_hf_ckpt's CKPT_PATH/global_step{N}_hf/;
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

from policyshift.data import DataError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_FILE = "adapter_config.json"
# a path component that carries the step: checkpoint-N (HF/TRL), step-N (policyshift), global_step_N (verl),
# global_stepN[_hf] (OpenRLHF / DeepSpeed), step_N
STEP_NAME = re.compile(r"^(?:checkpoint|step|global_step|global-step|iter|iteration)[-_]?(\d+)(?:_hf)?$")
FSDP_SHARD = re.compile(r"^model_world_size_\d+_rank_\d+\.pt$")  # verl's per-rank FSDP state
DEEPSPEED_SHARD = re.compile(r"^(mp_rank_\d+_model_states|zero_pp_rank_\d+_mp_rank_\d+_(optim|model)_states)\.pt$")  # OpenRLHF --ckpt_path, HF+DeepSpeed
MAX_DEPTH = 4  # RUN/global_step_N/actor/huggingface is the deepest layout read


class DiscoveryError(DataError):
    """A path that holds no checkpoint policyshift can load; one line naming it and what was expected."""


EXPECTED = ("an HF model directory (config.json + model.safetensors/pytorch_model.bin, or a LoRA adapter_config.json), "
            "or a run directory with checkpoint-N/ (HF Trainer, TRL), global_step_N/actor/huggingface/ (verl), "
            "global_stepN_hf/ (OpenRLHF) or checkpoints/step-N/policy/ (policyshift)")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int | None  # None: no step in its name or trainer state (the caller numbers it)
    layout: str  # which convention found it, shown in the report


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_FILE).is_file()


def is_model_dir(path: Path) -> bool:
    """A directory from_pretrained loads as a model (weights present) or a LoRA adapter."""
    return is_adapter_dir(path) or ((path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES))


def _is_classifier(path: Path) -> bool:
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return bool(architectures) and all(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures)


def _state_step(path: Path) -> int | None:
    """global_step of an HF Trainer trainer_state.json in `path`, if any."""
    try:
        step = json.loads((path / "trainer_state.json").read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


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
    parts = path.parts
    if path.name == "policy" and len(parts) > 2 and parts[-3] == "checkpoints":
        return "policyshift checkpoint"
    if path.name == "huggingface":
        return "verl HF export"
    if path.name.startswith("checkpoint-"):
        return "HF Trainer / TRL checkpoint"
    if path.name.startswith("global_step") and path.name.endswith("_hf"):
        return "OpenRLHF HF checkpoint"
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
        if any(FSDP_SHARD.match(n) for n in names) and not is_model_dir(directory / "huggingface"):
            notes.append(f"{directory}: verl FSDP shards, not an HF model; merge them first: "
                         f"python -m verl.model_merger merge --backend fsdp --local_dir {directory} --target_dir {directory}/huggingface")
        elif any(DEEPSPEED_SHARD.match(n) for n in names) and not is_model_dir(directory):
            notes.append(f"{directory}: DeepSpeed shards, not an HF model; save HF weights (OpenRLHF --save_hf_ckpt) "
                         f"or convert with DeepSpeed's zero_to_fp32.py first")
    return notes


def find_checkpoints(path: str | Path) -> tuple[list[Checkpoint], list[str]]:
    """The policy checkpoints under `path` in step order, and one note per thing skipped.

    `path` is a model directory itself, or a run directory searched by the layouts above. Raises
    DiscoveryError (one line) when nothing loadable is there."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DiscoveryError(f"{path}: no such file or directory (expected {EXPECTED})")
    if not root.is_dir():
        raise DiscoveryError(f"{path}: not a directory (expected {EXPECTED})")
    notes: list[str] = []
    found: list[Checkpoint] = []
    for directory in _walk(root):
        if is_model_dir(directory) and not _is_classifier(directory):
            step = step_from_path(directory, root)
            if directory.name == "final" and step is None:
                step = _policyshift_last_step(root)
            if step is None:
                notes.append(f"{directory}: a model with no step in its name or trainer_state.json; skipped (pass it as its own PATH)")
                continue
            found.append(Checkpoint(directory, step, _layout(directory)))
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


def _policyshift_last_step(run_dir: Path) -> int | None:
    """The last step a policyshift run logged (its final/ model's step)."""
    from policyshift.analysis.runlog import load_run

    if not (run_dir / "config.yaml").is_file():
        return None
    run = load_run(run_dir)
    return run.last_step or None
