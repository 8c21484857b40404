"""Hugging Face model directories: what `from_pretrained` loads (config.json + weights, or a peft LoRA
adapter), and the generic step names (iter-N, iteration_N, step_N) of trainers that save HF models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from policyshift.analysis.ingest.base import Importer

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", INDEX_FILES[0], "pytorch_model.bin", INDEX_FILES[1])
ADAPTER_FILE = "adapter_config.json"
# save_pretrained's shards: model-00001-of-00003.safetensors (pytorch_model-… for .bin)
SHARD_FILE = re.compile(r"^(?:model|pytorch_model)-(\d+)-of-(\d+)\.(?:safetensors|bin)$")
# a save's staging directory, renamed into place when complete: transformers 4.36-4.38's tmp-checkpoint-N, and the
# *.tmp / *.incomplete / *.partial names of save-then-rename writers (policyshift's own .tmp-step-N is hidden: never walked)
STAGING = re.compile(r"^tmp-checkpoint-\d+$|\.(?:tmp|incomplete|partial)$")


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_FILE).is_file()


def is_model_dir(path: Path) -> bool:
    """A directory from_pretrained loads as a model (weights present) or a LoRA adapter."""
    return is_adapter_dir(path) or ((path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES))


def has_weight_shards(path: Path) -> bool:
    """Weight shards of save_pretrained in `path` (an index may not be written yet)."""
    try:
        return any(SHARD_FILE.match(f.name) for f in path.iterdir())
    except OSError:
        return False


def save_in_progress(path: Path) -> str | None:
    """Why the model in `path` is not all written yet, from the files alone (any trainer): a staging directory's
    name, or save_pretrained's order — every shard first, the index that names them last — caught in between
    (shards and no index yet, or an index naming a shard that is not there). None: nothing says so."""
    if STAGING.search(path.name):
        return f"a save's staging directory ({path.name}, renamed into place when complete)"
    try:
        names = {f.name for f in path.iterdir()}
    except OSError:
        return None
    for index in INDEX_FILES:
        if index in names:
            try:
                shards = set(json.loads((path / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None  # a damaged index is for the load's own error (one line), not "being written"
            missing = sorted(shards - names)
            if missing:
                return f"{index} names {len(missing)} weight file(s) not there yet ({missing[0]})"
    shards = [m for m in map(SHARD_FILE.match, names) if m]
    if shards and not any(index in names for index in INDEX_FILES):
        return f"{len(shards)} of {int(shards[0].group(2))} weight shards and no index yet"
    return None


IMPORTER = Importer(
    name="hf",
    title="HF directories",
    order=80,
    step_prefixes=("iter", "iteration"),
    scalars=False,
)
