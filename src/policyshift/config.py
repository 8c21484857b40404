"""Configuration: nested dataclasses, loaded from YAML, overridden with dotted CLI flags
(`--ppo.clip_range 0.1`), validated with one-line errors.

Defaults follow the literature (Ziegler et al. 2019; Huang et al. 2024 "N+ implementation details of
RLHF with PPO"; TRL's PPOConfig): clip ε 0.2, value clip 0.2, vf_coef 0.1, γ 1.0, λ 0.95,
4 PPO epochs, k1 estimator with a fixed β 0.05 in the per-token reward, temperature 1.0.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from policyshift.errors import ConfigError, OneLineError  # noqa: F401 (defined in errors.py; old import path)


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters (with "...") for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class LoRAConfig:
    r: int = 0  # LoRA rank; 0 trains the full model. With r > 0 the reference is the policy with its adapter off
    alpha: float = 16.0  # scaling = alpha / r
    dropout: float = 0.0  # adapter dropout; 0 keeps rollout and update logprobs identical (docs/background/how-it-works.md#correctness-details)
    target_modules: Optional[list[str]] = None  # module names to adapt; null: peft's default for the architecture
    critic: bool = False  # the critic gets its own adapter (+ a trained value head) instead of full fine-tuning
    save_merged: bool = False  # final/merged/: adapter merged into the base weights (a plain from_pretrained model)


@dataclass
class ModelConfig:
    policy: str = ""  # from_pretrained path or hub id of the SFT model to fine-tune
    reference: Optional[str] = None  # default: a frozen copy of the policy
    critic: Optional[str] = None  # default: reward model's backbone if it shares the policy's tokenizer, else the policy
    share_critic_backbone: bool = False  # value head on the policy's own backbone (saves memory, couples the losses)
    tokenizer: Optional[str] = None  # default: the policy's
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights of every loaded model (prefer bfloat16 with vLLM); logprobs and losses are computed in fp32
    trust_remote_code: bool = False  # passed to from_pretrained: run a checkpoint's own modelling code (only for checkpoints you trust)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass of the update (memory for time)


@dataclass
class DataConfig:
    # .jsonl/.json/.txt (parsed here, errors with line numbers), .csv/.parquet, a directory, or a hub dataset id (through
    # `datasets`); a row may hold chat `messages` instead of a prompt
    prompts: str = ""
    prompt_field: str = "prompt"  # the column (or JSON key) that holds the prompt text; a row may hold chat `messages` instead
    split: str = "train"  # the split of a hub dataset or `datasets`-loaded file
    # longer prompts are truncated from the left (the end of a prompt matters most; a warning counts them); shrunk so
    # prompt + rollout.max_new_tokens fit the model's context (an error if nothing is left for the prompt)
    max_prompt_length: int = 64
    shuffle: bool = True  # draw prompts in a seeded, resumable shuffled order (false: file order)


@dataclass
class RolloutConfig:
    batch_size: int = 16  # episodes (responses) per step, over all processes
    # n responses sampled per prompt (a group): each step draws batch_size / n prompts. Groups stay whole on one
    # process and through every filter; group estimators (algorithm.advantage grpo, rloo, …) need n ≥ 2. n must divide
    # batch_size, and with W processes batch_size / n must divide by W
    num_generations: int = 1
    max_new_tokens: int = 48  # response tokens sampled per prompt at most (the response is cut at the first end-of-turn token)
    temperature: float = 1.0  # logprobs are taken at this temperature, with no top-k/top-p (unbiased KL)
    stop_at_eos: bool = True  # False generates max_new_tokens always (benchmarks); responses are still cut at the first EOS
    # vllm: pip install policyshift[vllm], GPU only, weights synced after each update; logprobs are still the training model's
    engine: Literal["hf", "vllm"] = "hf"
    vllm_gpu_memory_utilization: float = 0.3  # share of GPU memory vLLM may take (the training models need the rest)
    # FSDP / ZeRO-3: gather the whole policy and critic on every process for sampling and probes (fast);
    # false: one block at a time per forward, for models that fit no single device (slow: an all-gather per
    # block per token, and every process generates max_new_tokens so the collectives line up)
    gather_weights: bool = True
    # Memory (docs/guides/scale-out.md#memory-batch-length-vocabulary). Rows per forward pass of the reference, the
    # critic and (with an engine holding its own weights) the policy's scoring; null: the whole batch.
    forward_batch_size: Optional[int] = None
    # Response tokens whose full-vocabulary logits exist at once, in the rollout and in the update (where
    # each chunk is recomputed in the backward); null: 2^24 // vocabulary size (64 MiB of fp32 logits).
    logit_chunk_size: Optional[int] = None
    # The exact full-vocabulary KL(π‖π_ref) and the policy entropy of every training batch (kl/exact_*,
    # policy/entropy, loss/entropy): false skips them (those metrics are then absent); the fixed-prompt
    # evaluations always compute them.
    exact_kl: bool = True


@dataclass
class RewardConfig:
    model: Optional[str] = None  # HF sequence-classification reward model (may use its own tokenizer)
    function: Optional[str] = None  # "module:function" or "path/to/file.py:function", f(prompts, responses) -> floats
    batch_size: int = 32  # reward-model forward batch
    max_length: int = 512  # reward-model input tokens
    # what the reward model reads (docs/guides/rewards-and-models.md#what-the-reward-model-sees): auto = the generated token ids when it
    # shares the policy's vocabulary, else its tokenizer's chat template when it has one, else text
    template: Literal["auto", "tokens", "chat", "text"] = "auto"
    keep_eos: Optional[bool] = None  # null: the rendering's own convention (tokens keep the end token, text drops it, chat: the template's)
    missing_eos_penalty: Optional[float] = None  # subtracted from the score of responses that never emit EOS
    normalize: bool = False  # divide scores by a running std and subtract a running mean (Welford over all steps)
    clip: Optional[float] = None  # clip scores to ±clip after normalization
    # a NaN/inf score: stop naming the sample, or drop the episode — with num_generations > 1 its whole group (counted)
    on_nonfinite: Literal["error", "skip"] = "error"


@dataclass
class KLConfig:
    estimator: Literal["k1", "k2", "k3"] = "k1"  # KL(π‖π_ref) per token: k1 = log π/π_ref, k2 = ½(log r)², k3 = (r − 1) − log r (Schulman 2020); k1 as TRL PPO
    beta: float = 0.05  # β, the KL coefficient (TRL PPO 0.05); 0 = no penalty (the reference still scores every batch)
    controller: Literal["fixed", "adaptive"] = "fixed"  # fixed β, or the adaptive controller of Ziegler et al. 2019 (β follows kl.target over kl.horizon)
    target: float = 6.0  # adaptive controller: target sequence KL in nats (Ziegler et al.)
    horizon: int = 10000  # adaptive controller: episodes
    # reward: r_t −= β·KL_t in the per-token reward (classic RLHF, Ziegler et al. 2019); loss: + β·KL as a loss term
    # (GRPO/verl style; k2 or k3: k1's gradient is 0 in expectation, so k1 as a loss is refused in one line)
    placement: Literal["reward", "loss"] = "reward"
    # the reference scores every batch even at β = 0: the per-step KL curve is the backbone of the analysis.
    # false (β = 0 and a fixed controller only) skips it for speed: no kl/* step metrics (the report says those curves
    # are missing); the fixed-prompt evaluations still measure KL to the reference
    score_reference: bool = True


@dataclass
class AlgorithmConfig:
    # the advantage estimator (policyshift.advantages.ESTIMATORS): gae (PPO with a critic; Schulman et al. 2016),
    # grpo (Shao et al. 2024), rloo (Ahmadian et al. 2024), reinforce_pp / reinforce_pp_baseline (Hu 2025).
    # γ, λ, ε, whitening stay in the ppo section.
    advantage: Literal["gae", "grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = "gae"
    scale: Literal["group", "batch", "none"] = "group"  # grpo: divide by the group std, the batch std, or not (none = Dr. GRPO, Liu et al. 2025)
    std_eps: float = 1e-4  # grpo: A = (r − mean)/(std + eps) (TRL 1e-4)
    # how per-token losses become the minibatch loss (docs/guides/algorithms.md#loss-shapes): token_mean (DAPO; TRL's default "dapo"),
    # seq_mean_token_mean (original GRPO), seq_mean_token_sum_norm (Dr. GRPO: / (N · max_new_tokens)),
    # micro_batch_token_mean (the mean of each micro-batch's token mean, what earlier builds did; = token_mean with one micro-batch)
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", "micro_batch_token_mean"] = "token_mean"
    # token: PPO's per-token ratio; sequence: GSPO (Zheng et al. 2025), one length-normalized ratio per response,
    # clipped with sequence_clip_range(_high) instead of ppo.clip_range
    ratio_level: Literal["token", "sequence"] = "token"
    sequence_clip_range: float = 3e-4  # GSPO ε_low (the paper's 3e-4)
    sequence_clip_range_high: Optional[float] = 4e-4  # GSPO ε_high (the paper's 4e-4); null = sequence_clip_range
    # DAPO dynamic sampling (Yu et al. 2025): drop groups whose rewards have zero spread and sample more prompts
    # until the batch is full, at most max_sampling_rounds generation rounds per step (then flat groups fill it)
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 4  # DAPO dynamic sampling: generation rounds per step at most (then flat groups fill the batch)
    # training–inference mismatch (an engine with its own weights: vLLM, a bf16 copy): weight the policy loss by the
    # importance ratio π_train_old/π_engine of the sampled tokens, truncated at or masked beyond mismatch_cap, per token
    # or per response (TRL's vllm_importance_sampling_mode, default sequence_mask, cap 3). The shared-weights HF engine
    # samples with the training model itself: nothing to correct, so it never applies there.
    mismatch_correction: Literal["sequence_mask", "sequence_truncate", "token_mask", "token_truncate", "none"] = "sequence_mask"
    mismatch_cap: float = 3.0  # the ratio bound of mismatch_correction: truncated at it, or masked beyond it (TRL vllm_importance_sampling_cap)


@dataclass
class PPOHyperparams:
    epochs: int = 4  # passes of the update over each step's batch (TRL PPO 4)
    num_minibatches: int = 1  # the batch is split into this many minibatches per epoch, one optimizer step each
    grad_accum_steps: int = 1  # each minibatch is split into this many micro-batches
    clip_range: float = 0.2  # ε (ε_low with clip_range_high)
    clip_range_high: Optional[float] = None  # ε_high, clip-higher (DAPO: 0.28); null = clip_range
    dual_clip: Optional[float] = None  # c > 1: the loss of an A < 0 token is at most −c·A (Ye et al. 2020; verl 3.0)
    clip_range_value: float = 0.2  # value-function clip around the rollout's values (TRL PPO 0.2); critic only
    vf_coef: float = 0.1  # weight of the value loss (TRL PPO 0.1); critic only
    ent_coef: float = 0.0  # weight of the entropy bonus (0: none)
    gamma: float = 1.0  # GAE discount γ (Schulman et al. 2016); also discounts the critic-free estimators' reward-to-go
    lam: float = 0.95  # GAE λ (Schulman et al. 2016; TRL PPO 0.95)
    whiten_advantages: bool = True  # gae: whiten advantages over the batch (Huang et al. 2024); the other estimators normalize as their papers do
    max_grad_norm: Optional[float] = 1.0  # clip the gradient norm to this (null: no clipping)
    lr: float = 1e-5  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    adam_eps: float = 1e-8  # AdamW ε
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"  # learning-rate schedule after warm-up
    warmup_steps: int = 0  # steps of linear learning-rate warm-up


@dataclass
class ProbeSuiteConfig:
    """One probe suite (docs/guides/probes.md): fixed prompts, a scorer, a direction."""

    name: str = ""  # metrics key probe/<name>
    prompts: Optional[str] = None  # prompt file (rows may carry the scorer's fields); null: the built-in scorer's shipped set
    scorer: str = ""  # built-in name (instructions), module:function / file.py:function, or an HF reward/classifier model
    higher_is_better: bool = True  # the suite's direction: whether a higher score is better (its verdict and the probe_change finding)
    prompt_field: str = "prompt"  # the column (or JSON key) that holds the prompt text; a row may hold chat `messages` instead
    stance: Optional[str] = None  # scorer sycophancy: the stance scorer (module:function, file.py:function or an HF model)
    samples_per_prompt: int = 1  # k responses per prompt, averaged per prompt before the suite's mean and standard error


@dataclass
class AnalysisConfig:
    every: int = 10  # PPO steps between fixed-prompt evaluations and detector runs (0: evaluations only at step 0 and the end, detectors every step)
    prompts: Optional[str] = None  # file of fixed prompts; default: held-out slice of data.prompts
    num_prompts: int = 8  # held out from the training prompts when `prompts` is not set
    gold_reward_model: Optional[str] = None  # measured, never optimized: exposes proxy-vs-gold divergence
    gold_reward_function: Optional[str] = None  # a gold scorer as module:function or file.py:function (at most one of the two gold options)
    kl_budget: float = 10.0  # sequence-KL nats beyond which the KL-runaway detector warns
    # end the run cleanly (checkpoint and final model kept) when a finding this severe fires (= train --stop-on)
    stop_on: Literal["none", "warning", "critical"] = "none"
    probes: Optional[list[ProbeSuiteConfig]] = None  # probe suites scored at every evaluation (docs/guides/probes.md)


@dataclass
class TrainConfig:
    steps: int = 100  # PPO steps (rollout + update)
    seed: int = 0  # seeds sampling, minibatch order and initialisation (process r uses seed + r)
    output_dir: str = "runs/ppo"  # the run directory: logs, checkpoints, final/, report.html
    save_every: int = 50  # 0: only the final model
    keep_last_n: int = 2  # checkpoints kept (older ones are pruned)
    device: str = "auto"  # auto | cpu | cuda | mps
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default
    overwrite: bool = False  # remove a previous run in output_dir and start over (only the files a run writes)
    max_consecutive_skips: int = 10  # non-finite losses/gradients in a row before the run stops with an error
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast of every forward (accelerate); "no" defers to `accelerate launch --mixed_precision`
    save_rollouts: bool = False  # RUN_DIR/rollouts/step-N.pt: every process's raw episodes (tokens, logprobs, values, scores, advantages)
    # several processes: seconds a collective may wait for the other processes before this one stops with an error
    # (torch's default is 30 min). It bounds how long the survivors of a crashed or killed process wait; it must
    # exceed the longest one-process stretch between collectives (the main process writing a checkpoint)
    collective_timeout_s: float = 600.0


@dataclass
class TrackingConfig:
    tensorboard: bool = True  # RUN_DIR/tb/
    wandb: bool = False  # pip install policyshift[wandb]; honours WANDB_MODE=offline
    wandb_project: str = "policyshift"  # W&B project
    wandb_entity: Optional[str] = None  # W&B entity (user or team); null: W&B's default
    mlflow: bool = False  # pip install policyshift[mlflow]
    mlflow_tracking_uri: Optional[str] = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///RUN_DIR/mlflow.db
    mlflow_experiment: str = "policyshift"  # MLflow experiment, created when it does not exist
    run_name: Optional[str] = None  # default: the output directory's name


@dataclass
class PPOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    ppo: PPOHyperparams = field(default_factory=PPOHyperparams)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        validate(self)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, overrides: dict | None = None) -> "PPOConfig":
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
        merged = _deep_merge(data or {}, _nest(overrides or {}))
        return build_dataclass(cls, merged, "")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "PPOConfig":
        return cls.from_dict(load_yaml(path), overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the YAML
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = f": {exc.problem}" if getattr(exc, "problem", None) else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}{problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _nest(dotted: dict) -> dict:
    """{"ppo.clip_range": 0.1} -> {"ppo": {"clip_range": 0.1}}"""
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--{key}: '{p}' is a value, not a section")
        node[leaf] = value
    return out


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_dataclass(cls, data: Any, prefix: str):
    """Build dataclass `cls` from a mapping, coercing and checking each field's type."""
    where = prefix.rstrip(".") or "config"
    if data is None and prefix:  # a YAML section whose keys are all commented out: keep its defaults
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_suggest(str(key), names, prefix, cls)}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - all fields have defaults
        raise ConfigError(f"{where}: {exc}") from None


def _suggest(key: str, names: list[str], prefix: str, cls=None) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    # A right key in the wrong section (`ppo.beta`, or `clip_range` at the top): point to its home.
    # Only within PPOConfig: build_dataclass also builds other (flat) configs.
    in_ppo_config = cls is PPOConfig or cls in typing.get_type_hints(PPOConfig).values()
    elsewhere = [k for k in _dotted_keys(PPOConfig) if k.rsplit(".", 1)[-1] == key] if in_ppo_config else []
    if elsewhere:
        return f"; did you mean '{elsewhere[0]}'?"
    return f"; valid keys: {', '.join(names)}"


def _dotted_keys(cls, prefix: str = "") -> list[str]:
    """Every leaf field of a config dataclass as 'section.key'."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _dotted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _field_type(dotted: str, cls: Any):
    """The annotated type of 'section.key' in config dataclass `cls`, or None when there is no such field."""
    tp: Any = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def _coerce(value: Any, tp: Any, name: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, name + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("null", "none", "~") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, args))}; got {short_repr(value)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name} must be true or false; got {short_repr(value)}")
    if tp is int:
        return _to_int(value, name)
    if tp is float:
        return _to_float(value, name)
    if origin is list:
        if _is_mapping_type(args[0]) and not isinstance(value, list):  # a list of sections: no "a,b" shorthand
            raise ConfigError(f"{name} must be a list of mappings; got {short_repr(value)}")
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{name} must be a non-empty list; got {short_repr(value)}")
        return [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(items)]
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{name} must be a string; got {short_repr(value)}")
        return str(value)
    return value


def _to_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise ConfigError(f"{name} must be an integer; got {short_repr(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)  # "12345678901234567891" must not round through a float
        except ValueError:
            pass
    try:
        as_float = float(value)  # "1e3" and 4.0 are integers too
    except ValueError:
        raise ConfigError(f"{name} must be an integer; got {short_repr(value)}") from None
    if not math.isfinite(as_float) or as_float != int(as_float):
        raise ConfigError(f"{name} must be an integer; got {short_repr(value)}")
    return int(as_float)


def _to_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{name} must be a number; got {short_repr(value)}")
    try:
        out = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int beyond float range
        raise ConfigError(f"{name} must be a number; got {short_repr(value)}") from None
    if math.isnan(out):  # every comparison with NaN is False, so it would slip past the range checks
        raise ConfigError(f"{name} must be a number; got {short_repr(value)}")
    return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: PPOConfig) -> None:
    """Value checks that a type cannot express. Runs on every construction."""
    _check(cfg.rollout.batch_size > 0, "rollout.batch_size must be > 0")
    _check(cfg.rollout.max_new_tokens > 0, "rollout.max_new_tokens must be > 0")
    _check(math.isfinite(cfg.rollout.temperature) and cfg.rollout.temperature > 0, "rollout.temperature must be > 0")
    r = cfg.rollout
    _check(r.forward_batch_size is None or 0 < r.forward_batch_size <= r.batch_size,
           f"rollout.forward_batch_size must be in [1, rollout.batch_size = {r.batch_size}] or null; got {r.forward_batch_size}")
    _check(r.logit_chunk_size is None or 0 < r.logit_chunk_size <= r.batch_size * r.max_new_tokens,
           f"rollout.logit_chunk_size must be in [1, rollout.batch_size × max_new_tokens = {r.batch_size * r.max_new_tokens}] or null; "
           f"got {r.logit_chunk_size}")
    _check(cfg.data.max_prompt_length > 0, "data.max_prompt_length must be > 0")
    _check(math.isfinite(cfg.kl.beta) and cfg.kl.beta >= 0, f"kl.beta must be >= 0; got {cfg.kl.beta}")
    _check(cfg.kl.target > 0, "kl.target must be > 0")
    _check(cfg.kl.horizon > 0, "kl.horizon must be > 0")
    p = cfg.ppo
    _check(math.isfinite(p.clip_range) and p.clip_range > 0, f"ppo.clip_range must be > 0; got {p.clip_range}")
    _check(math.isfinite(p.clip_range_value) and p.clip_range_value > 0, f"ppo.clip_range_value must be > 0; got {p.clip_range_value}")
    _check(p.epochs >= 1, "ppo.epochs must be >= 1")
    _check(p.num_minibatches >= 1, "ppo.num_minibatches must be >= 1")
    _check(p.grad_accum_steps >= 1, "ppo.grad_accum_steps must be >= 1")
    _check(
        cfg.rollout.batch_size % (p.num_minibatches * p.grad_accum_steps) == 0,
        f"rollout.batch_size ({cfg.rollout.batch_size}) must be divisible by ppo.num_minibatches × ppo.grad_accum_steps "
        f"({p.num_minibatches} × {p.grad_accum_steps})",
    )
    _check(0 <= p.gamma <= 1, "ppo.gamma must be in [0, 1]")
    _check(0 <= p.lam <= 1, "ppo.lam must be in [0, 1]")
    _check(math.isfinite(p.lr) and p.lr > 0, f"ppo.lr must be > 0; got {p.lr}")
    _check(math.isfinite(p.adam_eps) and p.adam_eps > 0, f"ppo.adam_eps must be > 0; got {p.adam_eps}")
    _check(math.isfinite(p.weight_decay) and p.weight_decay >= 0, f"ppo.weight_decay must be >= 0; got {p.weight_decay}")
    _check(math.isfinite(p.vf_coef) and math.isfinite(p.ent_coef) and p.vf_coef >= 0 and p.ent_coef >= 0,
           "ppo.vf_coef and ppo.ent_coef must be >= 0")
    _check(p.max_grad_norm is None or p.max_grad_norm > 0, "ppo.max_grad_norm must be > 0 or null")
    _check(p.warmup_steps >= 0, "ppo.warmup_steps must be >= 0")
    _check(cfg.reward.batch_size > 0, "reward.batch_size must be > 0")
    _check(cfg.reward.max_length > 0, "reward.max_length must be > 0")
    _check(
        cfg.reward.missing_eos_penalty is None or math.isfinite(cfg.reward.missing_eos_penalty),
        "reward.missing_eos_penalty must be a finite number or null",
    )
    _check(cfg.reward.clip is None or cfg.reward.clip > 0, "reward.clip must be > 0 or null")
    _check(cfg.analysis.every >= 0, "analysis.every must be >= 0")
    _check(cfg.analysis.num_prompts >= 0, "analysis.num_prompts must be >= 0")
    _check(cfg.analysis.kl_budget > 0, "analysis.kl_budget must be > 0")
    _check(cfg.train.steps >= 1, "train.steps must be >= 1")
    _check(cfg.train.save_every >= 0, "train.save_every must be >= 0")
    _check(cfg.train.keep_last_n >= 1, "train.keep_last_n must be >= 1")
    _check(cfg.train.max_consecutive_skips >= 1, "train.max_consecutive_skips must be >= 1")
    _check(cfg.train.num_threads >= 0, "train.num_threads must be >= 0")
    _check(math.isfinite(cfg.train.collective_timeout_s) and cfg.train.collective_timeout_s > 0,
           f"train.collective_timeout_s must be > 0 seconds; got {cfg.train.collective_timeout_s}")
    lora = cfg.model.lora
    _check(lora.r >= 0, f"model.lora.r must be >= 0; got {lora.r}")
    _check(math.isfinite(lora.alpha) and lora.alpha > 0, f"model.lora.alpha must be > 0; got {lora.alpha}")
    _check(0 <= lora.dropout < 1, f"model.lora.dropout must be in [0, 1); got {lora.dropout}")
    _check(lora.r > 0 or not (lora.critic or lora.save_merged), "model.lora.critic/save_merged need model.lora.r > 0")
    _check(lora.r == 0 or not cfg.model.reference, "model.lora: the reference is the policy with its adapter off; drop model.reference or set model.lora.r 0")
    _check(not (lora.critic and cfg.model.share_critic_backbone),
           "model.lora.critic needs a separate critic; with model.share_critic_backbone the value head already reads the policy's adapter")
    _check(0 < cfg.rollout.vllm_gpu_memory_utilization < 1, "rollout.vllm_gpu_memory_utilization must be in (0, 1)")
    validate_probe_suites(cfg.analysis.probes or [], "analysis.probes")
    validate_algorithm(cfg)


BUILTIN_PROBE_SCORERS = ("instructions", "sycophancy")  # policyshift.analysis.suites


def validate_probe_suites(suites: list, where: str) -> None:
    """Names usable as metric keys (probe/<name>), unique; a scorer each; a prompts file unless the scorer is built in."""
    seen = set()
    for i, s in enumerate(suites):
        _check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", s.name or "") is not None,
               f"{where}[{i}].name must be letters, digits, '_', '.' or '-' (it names the metric probe/<name>); got {s.name!r}")
        _check(not s.name.endswith("_se"), f"{where}[{i}].name must not end in '_se' (probe/<name>_se is its standard error); got {s.name!r}")
        _check(s.name not in seen, f"{where}[{i}].name {s.name!r} is used by another suite")
        seen.add(s.name)
        _check(bool(s.scorer.strip()), f"{where}[{i}] ({s.name}): scorer is missing (a built-in name: {', '.join(BUILTIN_PROBE_SCORERS)}; "
                                       "module:function; file.py:function; or an HF reward/classifier model)")
        _check(s.prompts is not None or s.scorer == "instructions",
               f"{where}[{i}] ({s.name}): prompts is missing (only the instructions scorer ships its own prompt set)")
        _check(s.samples_per_prompt >= 1, f"{where}[{i}] ({s.name}): samples_per_prompt must be >= 1; got {s.samples_per_prompt}")
        _check((s.scorer == "sycophancy") == bool(s.stance),
               f"{where}[{i}] ({s.name}): " + ("the sycophancy scorer needs a stance scorer (stance: module:function or an HF model)"
                                              if s.scorer == "sycophancy" else "stance is read only by the sycophancy scorer"))


def validate_algorithm(cfg: PPOConfig) -> None:
    """What the advantage estimator declares it needs, against the rest of the config."""
    from policyshift.advantages import get_estimator

    a, n, b = cfg.algorithm, cfg.rollout.num_generations, cfg.rollout.batch_size
    estimator = get_estimator(a.advantage)
    _check(n >= 1, f"rollout.num_generations must be >= 1; got {n}")
    _check(b % n == 0, f"rollout.num_generations ({n}) must divide rollout.batch_size ({b}): each step samples batch_size / n prompts n times")
    _check(n >= 2 or not estimator.needs_groups,
           f"algorithm.advantage {a.advantage} compares the n samples of each prompt: set rollout.num_generations >= 2")
    _check(math.isfinite(a.std_eps) and a.std_eps >= 0, f"algorithm.std_eps must be >= 0; got {a.std_eps}")
    if not estimator.needs_critic:
        m = cfg.model
        critic_options = [name for name, on in (("model.critic", m.critic), ("model.share_critic_backbone", m.share_critic_backbone),
                                               ("model.lora.critic", m.lora.critic)) if on]
        _check(not critic_options, f"{critic_options[0] if critic_options else ''} configures a critic, but algorithm.advantage "
                                   f"{a.advantage} trains none; drop it or use algorithm.advantage gae")
    p = cfg.ppo
    _check(p.clip_range_high is None or (math.isfinite(p.clip_range_high) and p.clip_range_high >= p.clip_range),
           f"ppo.clip_range_high (ε_high = {p.clip_range_high}) must be >= ppo.clip_range (ε_low = {p.clip_range})")
    _check(p.dual_clip is None or (math.isfinite(p.dual_clip) and p.dual_clip > 1), f"ppo.dual_clip must be > 1 (it bounds −A·ρ at −A·c); got {p.dual_clip}")
    _check(math.isfinite(a.sequence_clip_range) and a.sequence_clip_range > 0, f"algorithm.sequence_clip_range must be > 0; got {a.sequence_clip_range}")
    _check(a.sequence_clip_range_high is None or a.sequence_clip_range_high >= a.sequence_clip_range,
           f"algorithm.sequence_clip_range_high ({a.sequence_clip_range_high}) must be >= algorithm.sequence_clip_range ({a.sequence_clip_range})")
    if a.ratio_level == "sequence":  # GSPO clips the sequence ratio only: a per-token clip option would contradict it
        token_options = [name for name, v in (("ppo.clip_range_high", p.clip_range_high), ("ppo.dual_clip", p.dual_clip)) if v is not None]
        _check(not token_options, f"algorithm.ratio_level sequence (GSPO) clips one ratio per response with algorithm.sequence_clip_range(_high); "
                                  f"{token_options[0] if token_options else ''} clips token ratios: drop it")
    # GSPO's objective is a mean over *sequences* of one clipped sequence ratio each. With token_mean (or a constant
    # divisor) a response's gradient is weighted by its length (lengths 4 and 1 → 0.8/0.2, not 0.5/0.5). verl forces
    # seq-mean-token-mean for GSPO; we refuse instead of silently overriding the field, so the saved config says what ran.
    _check(a.ratio_level != "sequence" or a.loss_aggregation == "seq_mean_token_mean",
           f"algorithm.ratio_level sequence (GSPO) averages over responses: set algorithm.loss_aggregation seq_mean_token_mean "
           f"(got {a.loss_aggregation}, which weighs each response by its length)")
    _check(math.isfinite(a.mismatch_cap) and a.mismatch_cap >= 1, f"algorithm.mismatch_cap must be >= 1 (a ratio of 1 is no mismatch); got {a.mismatch_cap}")
    _check(a.max_sampling_rounds >= 1, f"algorithm.max_sampling_rounds must be >= 1; got {a.max_sampling_rounds}")
    _check(not a.dynamic_sampling or estimator.needs_groups,
           f"algorithm.dynamic_sampling drops groups with zero reward spread: it needs a group estimator (grpo, rloo, reinforce_pp_baseline), not {a.advantage}")
    k = cfg.kl
    # k1 = log π − log π_ref as a loss: its gradient ∇log π has expectation 0 under π — no restoring force at all.
    _check(k.placement != "loss" or k.estimator != "k1",
           "kl.placement loss with kl.estimator k1 has zero expected gradient (E_π[∇log π] = 0): use k2 (its gradient is "
           "that of KL(π‖π_ref)) or k3 (that of KL(π_ref‖π), as verl's low_var_kl)")
    _check(k.score_reference or (k.beta == 0 and k.controller == "fixed"),
           "kl.score_reference false skips the reference, so there is no KL to penalize: it needs kl.beta 0 and kl.controller fixed")


def require_runnable(cfg: PPOConfig, have_policy: bool = False, have_prompts: bool = False, have_reward: bool = False) -> None:
    """Checks needed to train (not to construct: a config may be built up field by field).
    `have_*`: the trainer was handed that piece as an object instead of a path."""
    _check(have_policy or bool(cfg.model.policy), "model.policy is required (a from_pretrained path or hub id)")
    _check(have_prompts or bool(cfg.data.prompts), "data.prompts is required (a prompt file or dataset id)")
    _check(
        have_reward or (cfg.reward.model is None) != (cfg.reward.function is None),
        "set exactly one of reward.model (an HF sequence-classification model) or reward.function (module:function)",
    )
    _check(
        cfg.analysis.gold_reward_model is None or cfg.analysis.gold_reward_function is None,
        "set at most one of analysis.gold_reward_model and analysis.gold_reward_function",
    )


def parse_overrides(argv: list[str], cls: type = PPOConfig) -> dict:
    """['--ppo.clip_range', '0.1', '--kl.beta=0.1'] -> {'ppo.clip_range': 0.1, 'kl.beta': 0.1}.
    Values are parsed as YAML scalars (so 0.1 is a float, null is None, true is a bool), except for
    string fields, which keep the text as typed (YAML 1.1 would turn `--train.output_dir 0100` into 64
    and `--data.prompt_field yes` into True). `cls`: the config dataclass the keys name fields of
    (the stage commands pass SFTConfig / RewardModelConfig)."""
    out: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument '{arg}' (overrides look like --section.key value)")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key} needs a value")
            raw = argv[i + 1]
            i += 2
        tp = _field_type(key, cls)
        if _is_structured_type(tp):
            out[key] = _parse_structured(raw, key)
        elif _is_text_type(tp):
            out[key] = raw
        elif _is_list_type(tp):
            out[key] = _parse_text_list(raw)
        else:
            out[key] = _parse_scalar(raw)
    return out


def _parse_text_list(raw: str):
    """A list of names: JSON (["a", "b"], its strings explicit), else "a,b" or "[a, b]", each item kept as
    typed (_coerce splits on commas; YAML 1.1 would read `[0100, yes]` as [64, True])."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw.strip("[]")
    return value if isinstance(value, list) else raw.strip("[]")


def _strip_optional(tp: Any) -> Any:
    """Optional[X] -> X (other types unchanged)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else tp
    return tp


def _is_mapping_type(tp: Any) -> bool:
    tp = _strip_optional(tp)
    return dataclasses.is_dataclass(tp) or tp is dict or typing.get_origin(tp) is dict


def _is_structured_type(tp: Any) -> bool:
    """A field whose value is a mapping or a list of mappings (a section, analysis.probes): on the command
    line its value is YAML (JSON is YAML too), so that it is checked exactly as the same value in a file."""
    tp = _strip_optional(tp)
    if typing.get_origin(tp) is list:
        return _is_mapping_type(typing.get_args(tp)[0])
    return _is_mapping_type(tp)


def _parse_structured(raw: str, key: str):
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (column {mark.column + 1})" if mark else ""
        problem = f": {exc.problem}" if getattr(exc, "problem", None) else ""
        raise ConfigError(f"--{key}: the value is not valid YAML or JSON{where}{problem}; "
                          f"got {short_repr(raw)}") from None


def _is_list_type(tp: Any) -> bool:
    """list[...] or Optional[list[...]]."""
    return typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in typing.get_args(tp))


def _is_text_type(tp: Any) -> bool:
    """str or Optional[str]."""
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def _parse_scalar(raw: str):
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw
    return raw if isinstance(value, (dict, list)) else value
