"""Input checks the commands share: each turns a value that would fail deep inside torch or
transformers (a traceback mid-run, or worse, a run that trains on mismatched ids) into one line that
names the setting, before any work starts."""

from __future__ import annotations

import math
import warnings

import torch

from policyshift.config import ConfigError
from policyshift.models import ModelError


def check_device(value: str | None, key: str) -> None:
    """`auto`/None pass; anything else must name a device this torch can use."""
    if value in (None, "auto"):
        return
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{key} {value!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"{key} is {value!r} but {why}; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key} is {value!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        return
    backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise ConfigError(f"{key} is {value!r} but this machine has no {device.type} device; use cpu or auto")


def model_context(config) -> int | None:
    """The number of positions a model can read (None: unbounded, e.g. rotary models without a limit)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_vocabularies(policy, tokenizer, reference, model_cfg) -> None:
    """The tokenizer's ids must index the policy's embedding (a larger tokenizer crashes mid-rollout),
    a tokenizer given apart from the policy must be the one saved with it (same size, other ids would
    train silently on scrambled text), and the reference must have the policy's vocabulary (the
    per-token KL between two vocabularies is undefined). `model_cfg`: the run's `model` section."""
    from pathlib import Path

    from policyshift.models import load_tokenizer, same_vocabulary

    policy_name, tokenizer_name = model_cfg.policy or "(given object)", model_cfg.tokenizer or model_cfg.policy or "(given object)"
    rows = policy.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelError(f"tokenizer {tokenizer_name} has {len(tokenizer)} tokens but policy {policy_name} embeds only {rows}: "
                         "they are not a pair (set model.tokenizer to the policy's own)")
    own = Path(model_cfg.policy).expanduser() if model_cfg.policy and model_cfg.tokenizer and model_cfg.tokenizer != model_cfg.policy else None
    if own is not None and (own / "tokenizer_config.json").is_file() and not same_vocabulary(load_tokenizer(str(own)), tokenizer):
        raise ModelError(f"tokenizer {tokenizer_name} is not the one saved with policy {policy_name} (other tokens or ids); "
                         "drop model.tokenizer or point it at the policy's own")
    # a LoRA run's reference is the policy with its adapter off (no embedding of its own to compare)
    if reference is not None and reference is not policy and hasattr(reference, "get_input_embeddings"):
        ref_rows = reference.get_input_embeddings().num_embeddings
        if ref_rows != rows:
            raise ModelError(f"reference {model_cfg.reference or '(given object)'} has a {ref_rows}-token vocabulary, policy {policy_name} "
                             f"{rows}: the KL to the reference needs the same vocabulary")


def prompt_budget(max_prompt_length: int, max_new_tokens: int, context: int | None, new_tokens_key: str) -> int:
    """`max_prompt_length`, shrunk so that prompt + response fits the model's `context` (no warning: fit_prompt_budget's)."""
    budget = max_prompt_length
    if context is not None and budget + max_new_tokens > context:
        budget = context - max_new_tokens
        if budget < 1:
            raise ConfigError(f"{new_tokens_key} ({max_new_tokens}) leaves no room for a prompt in the model's {context}-token context")
    return budget


def fit_prompt_budget(tokenizer, prompts: list[str], max_prompt_length: int, max_new_tokens: int, context: int | None,
                      new_tokens_key: str) -> int:
    """The prompt budget: `max_prompt_length`, shrunk so that prompt + response fits the model's
    `context`. Prompts longer than it are cut from the left; one warning line says how many and why —
    none when no prompt is affected (a shrunk budget that cuts nothing is not news)."""
    budget = prompt_budget(max_prompt_length, max_new_tokens, context, new_tokens_key)
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    too_long = sum(n > budget for n in lengths)
    if too_long:
        why = (f" (prompt + {max_new_tokens} response tokens must fit the model's {context}-token context)" if budget < max_prompt_length
               else "")
        warnings.warn(f"{too_long} of {len(prompts)} prompts are longer than {budget} tokens{why}; they are cut from the left", stacklevel=3)
    return budget


def check_output_dir(path: str | None, flag: str) -> None:
    """An output directory named by a flag: not empty, not an existing file, and one this process can write
    (it, or the nearest directory above it that exists: found now, not when the result is saved after the work)."""
    import os
    from pathlib import Path

    if path is None or not str(path).strip():
        raise ConfigError(f"{flag} is empty; name the directory to write to")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a directory")
    parent = next((q for q in p.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a directory")
    nearest = p if p.exists() else parent
    if nearest is not None and not os.access(nearest, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {nearest} is not writable")


def check_named_inputs(models=(), prompts=(), rewards=()) -> None:
    """The files and directories a command names, there before the first model loads (minutes on a real
    model), in this order: model paths (a local path must exist; a hub id is fetched by the load; a path, or
    (flag, path) for a line that names the flag as the later load's would), prompt sources, rewards ((model,
    function) pairs: the function's file or module, the model's directory). None entries are inputs not given.
    One line for the first that is missing."""
    from policyshift.data import check_prompt_source
    from policyshift.models import local_path_or_hub_id
    from policyshift.rewards import check_reward_source

    for entry in models:
        flag, path = entry if isinstance(entry, tuple) else (None, entry)
        if path:
            try:
                local_path_or_hub_id(path)
            except ModelError as exc:
                if flag is None:
                    raise
                raise ModelError(f"{flag} {path}: {exc}") from None
    for source in prompts:
        if source is not None:
            check_prompt_source(source)
    for model, function in rewards:
        check_reward_source(model, function)


def from_pretrained_checked(auto_cls, path: str, kind: str, **kwargs):
    """`auto_cls.from_pretrained(path, **kwargs)` as saved (the training stages fine-tune the model as
    it is: unlike models.load_*, no dropout or activation changes), with a missing, damaged or
    unusable model as one ModelError line that names the damaged file."""
    from policyshift.models import from_pretrained_error, local_path_or_hub_id

    local = local_path_or_hub_id(path)
    try:
        return auto_cls.from_pretrained(local, **kwargs)
    except Exception as exc:
        error = from_pretrained_error(exc, kind, path, local)  # the same translation as models.load_*
        if error is None:
            raise
        raise error from None


# ---- the stage commands (sft, reward-model): flat configs ----------------------------------------------
POSITIVE = ("steps", "batch_size", "n_layer", "n_embd", "n_head", "n_positions", "seq_len", "vocab_size", "max_length")


def validate_stage(cfg) -> None:
    """Value checks for SFTConfig / RewardModelConfig that a type cannot express (the PPO config has its own)."""
    for name in POSITIVE:
        if hasattr(cfg, name) and getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1; got {getattr(cfg, name)}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"lr must be > 0; got {cfg.lr}")
    if not 0 <= cfg.eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be in [0, 1); got {cfg.eval_fraction}")
    if cfg.log_every < 0:
        raise ConfigError(f"log_every must be >= 0; got {cfg.log_every}")
    check_output_dir(cfg.output_dir, "output_dir")
    check_device(cfg.device, "device")
    if hasattr(cfg, "n_head") and getattr(cfg, "model", None) is None:  # SFT building a new GPT-2
        if cfg.n_embd % cfg.n_head:
            raise ConfigError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
        if cfg.seq_len > cfg.n_positions:
            raise ConfigError(f"seq_len ({cfg.seq_len}) is longer than the model's n_positions ({cfg.n_positions})")
        if cfg.tokenizer is None and cfg.vocab_size < 258:
            raise ConfigError(f"vocab_size must be >= 258 (256 bytes + EOS + PAD) for a trained byte-level tokenizer; got {cfg.vocab_size}")


def fit_stage_length(cfg, field: str, model_path: str) -> None:
    """A pretrained model's context bounds seq_len / max_length: longer is cut to it, with one warning line."""
    from policyshift.models import load_config

    context = model_context(load_config(model_path, "model", False)[1])
    value = getattr(cfg, field)
    if context is not None and value > context:
        warnings.warn(f"{field} {value} is longer than {model_path}'s {context}-token context; using {context}", stacklevel=2)
        setattr(cfg, field, context)


def fit_prompt_length(policy, tokenizer, prompts: list[str], max_prompt_length: int, max_new_tokens: int) -> int:
    """The prompt budget: data.max_prompt_length, shrunk so prompt + response fits the model's context.
    Longer prompts are cut from the left; say how many, once."""
    return fit_prompt_budget(tokenizer, prompts, max_prompt_length, max_new_tokens, model_context(policy.config), "rollout.max_new_tokens")
