"""LoRA through peft (`model.lora.r > 0`): the policy, and optionally the critic, train a low-rank
adapter on a frozen base. The reference π_ref is the same model with its adapter switched off, so
the base weights are held once and KL(π‖π_ref) is exactly 0 before the first update (LoRA's B starts
at zero)."""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from policyshift.errors import ModelError

ADAPTER_FILE = "adapter_model.safetensors"


def is_peft(model) -> bool:
    # Without peft imported nothing can be a PeftModel: full fine-tuning never pays for the import.
    return "peft" in sys.modules and isinstance(model, sys.modules["peft"].PeftModel)


@contextlib.contextmanager
def _quiet_peft():
    with warnings.catch_warnings():
        # peft asks transformers `is_gradient_checkpointing`, a deprecated name: one FutureWarning per call
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


class _UpdateOnlyDropout(nn.Dropout):
    """Adapter dropout only in gradient-enabled passes (the PPO update). Rollout sampling, values and
    the reference run under no_grad, so the recorded log π_old stay a deterministic function of θ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, training=torch.is_grad_enabled())


# Attention projections to adapt when peft has no default for the architecture, first match wins: the query and
# value projections (what peft picks for Llama, Qwen2, Mistral, Gemma), else a fused query/key/value projection
# (Phi-3's qkv_proj, which peft 0.21 has no default for; GPT-NeoX's query_key_value).
FALLBACK_TARGETS = (("q_proj", "v_proj"), ("qkv_proj",), ("query_key_value",), ("c_attn",))


def default_target_modules(model: nn.Module) -> list[str] | None:
    """None (peft's own default) when peft knows the architecture; else the first FALLBACK_TARGETS group whose
    names are all linear layers of the model; else None, and peft's error asks for model.lora.target_modules."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    if getattr(model.config, "model_type", None) in PEFT_DEFAULTS:
        return None
    from transformers.pytorch_utils import Conv1D

    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    for group in FALLBACK_TARGETS:
        if set(group) <= linear:
            return list(group)
    return None


def apply_lora(model: nn.Module, lora_cfg, task: str = "causal"):
    """`model` wrapped in a peft PeftModel with a fresh adapter; only the adapter (and, for the critic,
    its value/score head, trained in full through peft's modules_to_save) requires grad.
    `task`: "causal" (policy) or "critic" (a sequence-classification critic)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    config = LoraConfig(
        r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules) if lora_cfg.target_modules else default_target_modules(model),
        task_type=TaskType.CAUSAL_LM if task == "causal" else TaskType.SEQ_CLS,
        # GPT-2-style Conv1D layers store W as (in, out); saying so up front spares a peft warning per layer.
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
    )
    with _quiet_peft():
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as exc:  # no default target_modules for this architecture; names not found
            raise ModelError(f"model.lora: {str(exc).splitlines()[0][:240]}") from None
    base_path = peft_model.peft_config["default"].base_model_name_or_path
    if base_path and Path(base_path).exists():  # saved adapters name their base; make that work from any directory
        peft_model.peft_config["default"].base_model_name_or_path = str(Path(base_path).resolve())
    for module in peft_model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, d in dropouts.items():
                if isinstance(d, nn.Dropout):
                    dropouts[name] = _UpdateOnlyDropout(d.p)
    return peft_model.eval()  # like every model here (the wrapper itself starts in train mode)


class AdapterOffReference(nn.Module):
    """π_ref = the policy's PeftModel run with its adapter disabled. The PeftModel is kept out of
    nn.Module's registry, so nothing done to the reference (requires_grad_(False), .to(), .eval(),
    state_dict) reaches the adapter or the shared base, and it owns no weights of its own."""

    def __init__(self, peft_model):
        super().__init__()
        object.__setattr__(self, "peft_model", peft_model)  # not a submodule, on purpose (see above)
        self.config = peft_model.get_base_model().config

    def forward(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        # Callers find the device with `next(m.parameters()).device` (rollout, probes). Answer with an
        # empty tensor where the shared weights live: right after any move of the policy, and setting
        # its requires_grad cannot touch a real weight.
        p = next(self.peft_model.parameters())
        yield nn.Parameter(p.new_empty(0), requires_grad=False)

    def extra_repr(self) -> str:
        return f"adapter off: {type(self.peft_model.get_base_model()).__name__}"


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The plain model's state dict (same keys as the un-wrapped HF model) with the adapter merged in:
    W + scaling·B·A, computed on the side so the live model is never touched (merge + unmerge would
    not give back the same floats). A model without an adapter: its own state_dict()."""
    if not is_peft(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    out = {}
    for key, value in base.state_dict().items():
        parts = key.split(".")
        if any(p.startswith("lora_") for p in parts) or "original_module" in parts:
            continue  # adapter factors; the frozen copy of a head that peft trains as modules_to_save
        if "modules_to_save" in parts:  # the trained copy of that head, under the head's own name
            i = parts.index("modules_to_save")
            parts = parts[:i] + parts[i + 2 :]
        out[".".join(p for p in parts if p != "base_layer")] = value
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and not module.merged and not module.disable_adapters:
                key = f"{name}.weight"
                for adapter in module.active_adapters:
                    if adapter in module.lora_A or adapter in module.lora_embedding_A:
                        out[key] = out[key] + module.get_delta_weight(adapter).to(out[key].dtype)
    return out


def save_pretrained(model, path: Path | str, **kwargs) -> None:
    """`model.save_pretrained(path, **kwargs)` without importing DeepSpeed in a process that never did: transformers
    unwraps the model through accelerate's extract_model_from_parallel, which imports DeepSpeed (1-4 CPU s, when it
    is installed) only to add DeepSpeedEngine to the wrappers it strips, and no DeepSpeedEngine exists where
    DeepSpeed was never imported. A DeepSpeed run imported it at `prepare`: its saves go through unchanged. Every save
    of a plain HF model goes through here (checkpoints, stage outputs, the merged LoRA model, an engine's weight dir)."""
    other = sys.modules.get("accelerate.utils.other")
    available = getattr(other, "is_deepspeed_available", None)
    if "deepspeed" in sys.modules or available is None:
        model.save_pretrained(path, **kwargs)
        return
    other.is_deepspeed_available = lambda: False
    try:
        model.save_pretrained(path, **kwargs)
    finally:
        other.is_deepspeed_available = available


def save_adapter(model, out_dir: Path) -> None:
    """adapter_config.json (base_model_name_or_path = the base's path) + adapter_model.safetensors."""
    # save_embedding_layers=False: we never resize the vocabulary, and "auto" may ask the hub about the base.
    model.save_pretrained(out_dir, save_embedding_layers=False)


def load_adapter(model, directory: Path) -> None:
    """Adapter weights from `save_adapter` into the live PeftModel (resume: same floats, same tensors)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory) / ADAPTER_FILE
    if not path.is_file():
        raise ModelError(f"{directory} holds no LoRA adapter ({ADAPTER_FILE}); was it saved by a run with model.lora.r = 0?")
    result = set_peft_model_state_dict(model, load_file(str(path)))
    # missing_keys lists every base weight (not in an adapter file, rightly); only adapter weights count
    misfit = result.unexpected_keys + [k for k in result.missing_keys if ".lora_" in k or ".modules_to_save." in k]
    if misfit:
        raise ModelError(f"the adapter in {directory} does not fit this model ({misfit[0]}); was it trained with other model.lora settings?")


def load_merged_adapter(directory, load_base):
    """A plain model from an adapter directory (a LoRA run's final/): the base it names, loaded with
    `load_base(path)` (so dtype, dropout and the checks of models.py apply), with the adapter merged in."""
    from peft import PeftModel

    base_path = json.loads((Path(directory) / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = load_base(base_path)
    with _quiet_peft():
        return PeftModel.from_pretrained(base, str(directory)).merge_and_unload()


def save_merged(model, tokenizer, out_dir: Path) -> None:
    """A plain `from_pretrained` checkpoint: the base with the adapter merged in, and the tokenizer."""
    save_pretrained(model.get_base_model(), out_dir, state_dict=merged_state_dict(model))
    tokenizer.save_pretrained(out_dir)
