"""Hugging Face model directories: what `from_pretrained` loads (config.json + weights, or a peft LoRA
adapter), and the generic step names (iter-N, iteration_N, step_N) of trainers that save HF models.
"""

from __future__ import annotations

from pathlib import Path

from policyshift.analysis.ingest.base import Importer

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_FILE = "adapter_config.json"


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_FILE).is_file()


def is_model_dir(path: Path) -> bool:
    """A directory from_pretrained loads as a model (weights present) or a LoRA adapter."""
    return is_adapter_dir(path) or ((path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES))


IMPORTER = Importer(
    name="hf",
    title="HF directories",
    order=80,
    step_prefixes=("iter", "iteration"),
    scalars=False,
)
