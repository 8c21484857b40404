"""Loading the policy, reference, critic and tokenizer with `from_pretrained`, and the one forward
pass every stage shares (logits and values at the response positions)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from policyshift.errors import ModelError  # noqa: F401 (defined in errors.py; old import path)
from policyshift.logprobs import position_ids_from_mask  # noqa: F401 (tensor math, lives with the log-probs; old import path)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def local_path_or_hub_id(path: str) -> str:
    """The expanded local path, or the hub id. A path that cannot be a hub id ('./x', '/x', '~/x',
    'a/b/c', or 'x' with no slash while offline) fails fast instead of retrying the hub."""
    expanded = os.path.expanduser(path)
    p = Path(expanded)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or (offline and "/" not in path)
    if not p.exists() and (looks_local or offline):
        raise ModelError(f"model path not found: {path}")
    return expanded


def _fuse_gelu(config) -> None:
    # GPT-2's "gelu_new" is the tanh approximation written as ~8 elementwise ops (each with an autograd
    # node); "gelu_pytorch_tanh" is the same function (max difference 2.4e-7) in one fused kernel.
    if getattr(config, "activation_function", None) == "gelu_new":
        config.activation_function = "gelu_pytorch_tanh"


def _zero_dropout_config(config) -> None:
    # RL needs deterministic forward passes: the logprobs of rollout and update must agree, and
    # dropout in the reference/critic/RM would add noise to KL, values and scores.
    for key, value in list(config.to_dict().items()):
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(config, key, 0.0)


def disable_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.eval()  # eval() also switches off any train-only stochasticity the model has


def load_config(path: str, kind: str, trust_remote_code: bool):
    from transformers import AutoConfig

    local = local_path_or_hub_id(path)
    try:
        return local, AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {kind} config from '{path}': {str(exc).splitlines()[0]}") from None


def damaged_weights(local: str) -> str:
    """Which safetensors file of a model directory does not open (truncated, garbage)."""
    from safetensors import safe_open

    for file in sorted(Path(local).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    f.get_slice(name)
        except Exception:  # noqa: BLE001 — any failure to open is the finding
            return f"{file} is damaged"
    return "a weights file is damaged"


def from_pretrained_error(exc: Exception, kind: str, path: str, local: str, value_error_is_kind: bool = False) -> ModelError | None:
    """The one-line ModelError for what `from_pretrained` raised; None when it is not a loading failure (a bug: re-raise).
    `value_error_is_kind`: transformers' "Unrecognized configuration class ... for this kind of AutoModel" means the
    directory holds another kind of model (the Auto class was chosen by policyshift, not by the user)."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if value_error_is_kind and isinstance(exc, ValueError):
        return ModelError(f"'{path}' is not a {kind} ({first[:160]})")
    if isinstance(exc, (OSError, ValueError, RuntimeError)):  # missing weight files; shape mismatches
        return ModelError(f"cannot load {kind} from '{path}': {first[:200]}")
    if type(exc).__name__ == "SafetensorError":  # safetensors' own Exception subclass: a damaged weights file
        return ModelError(f"cannot load {kind} from '{path}': {damaged_weights(local)} ({first[:160]})")
    return None


def _load(auto_cls, path: str, kind: str, dtype: str, trust_remote_code: bool, **kwargs):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars drown our own console output
    local, config = load_config(path, kind, trust_remote_code)
    architectures = config.architectures or []
    if auto_cls.__name__ == "AutoModelForCausalLM" and architectures and all(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures):
        raise ModelError(f"'{path}' is a {architectures[0]}, not a causal language model")
    is_classifier = architectures and all(a.endswith("ForSequenceClassification") for a in architectures)
    if "num_labels" in kwargs and is_classifier and config.num_labels != kwargs["num_labels"]:
        raise ModelError(f"'{path}' has {config.num_labels} output labels; a {kind} needs a single-logit head (num_labels=1)")
    for key, value in kwargs.items():
        setattr(config, key, value)
    _zero_dropout_config(config)
    _fuse_gelu(config)
    try:
        model = auto_cls.from_pretrained(local, config=config, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    except Exception as exc:
        error = from_pretrained_error(exc, kind, path, local, value_error_is_kind=True)
        if error is None:
            raise
        raise error from None
    return disable_dropout(model)


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False):
    """A causal LM; a LoRA adapter directory (a LoRA run's final/) comes back merged into the base it names."""
    from transformers import AutoModelForCausalLM

    if (Path(os.path.expanduser(path)) / "adapter_config.json").is_file():
        from policyshift.lora import load_merged_adapter

        return load_merged_adapter(os.path.expanduser(path), lambda base: load_causal_lm(base, dtype, trust_remote_code))
    return _load(AutoModelForCausalLM, path, "causal language model", dtype, trust_remote_code)


def load_sequence_classifier(path: str, dtype: str = "float32", trust_remote_code: bool = False, kind="sequence-classification model",
                             trained_head: bool = False):
    """`trained_head`: the checkpoint must already be a sequence classifier (a reward model), not a
    body that would get a random head (fine for a critic, useless as a reward)."""
    from transformers import AutoModelForSequenceClassification

    if trained_head:
        architectures = load_config(path, kind, trust_remote_code)[1].architectures or []
        if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ModelError(f"'{path}' is a {architectures[0]}, not a sequence-classification reward model (its score head would be random)")
    return _load(AutoModelForSequenceClassification, path, kind, dtype, trust_remote_code, num_labels=1)


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str = "left"):
    """Tokenizer with a pad token. Without one we reuse EOS (or UNK): masks in policyshift come from
    lengths and the first EOS, never from comparing token ids with the pad id, so the overlap is safe."""
    from transformers import AutoTokenizer

    local = local_path_or_hub_id(path)
    try:
        tok = AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot load tokenizer from '{path}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else (tok.unk_token or tok.convert_ids_to_tokens(0))
    tok.padding_side = padding_side
    tok.truncation_side = "left"  # keep the end of a long prompt: it is what the response continues
    return tok


def freeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    return disable_dropout(model)


def response_logits(model, input_ids, attention_mask, n_response: int) -> torch.Tensor:
    """Logits that predicted each response token: positions P−1 … P+R−2 of [prompt | response]."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=n_response + 1,  # skip the LM head on prompt positions
        use_cache=False,
    )
    return out.logits[:, -(n_response + 1) : -1].float()


def _value_head(critic) -> nn.Module:
    for name in ("score", "classifier", "v_head"):
        head = getattr(critic, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ModelError(f"critic {type(critic).__name__} has no score/classifier head")


def critic_values(critic, input_ids, attention_mask, n_response: int) -> torch.Tensor:
    """Per-token values V(s_t) for the states before each response token. The critic is a
    sequence-classification model whose scalar head is applied at every position (so it can start
    from the reward model: values then begin near the final score)."""
    backbone = getattr(critic, critic.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask), use_cache=False
    ).last_hidden_state[:, -(n_response + 1) : -1]
    return _value_head(critic)(hidden).squeeze(-1).float()


class SharedValueHead(nn.Module):
    """Value head on the policy's own last hidden state (model.share_critic_backbone)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden).squeeze(-1)


class PolicyAndCritic(nn.Module):
    """The trained models as one module (what DDP/FSDP/DeepSpeed wrap). `forward` gives what the PPO
    update needs from one pass each: the policy's per-token logprobs (and entropy) of the response,
    computed chunk by chunk from its hidden states (policyshift.logprobs: no (B, R, V) logits), and values."""

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None, value_head: SharedValueHead | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic  # separate critic (sequence-classification model)
        self.value_head = value_head  # or a head on the policy's backbone
        # FSDP's transformer-based wrap shards each block its own unit: the blocks are the models' own
        self._no_split_modules = sorted({name for m in (policy, critic) for name in (getattr(m, "_no_split_modules", None) or [])})

    def forward(self, input_ids, attention_mask, response_ids, response_mask, temperature: float = 1.0, chunk_size: int | None = None,
                entropy: bool = True, entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(logprobs, entropy or None, values), each (B, R): log softmax(logits/T) of `response_ids` and the
        entropy at the real response tokens (0 on padding), at most `chunk_size` tokens' logits at a time
        (null: logprobs.chunk_tokens' default); `entropy_grad` false: the entropy is a value only."""
        from policyshift.logprobs import response_hidden, response_token_stats

        R = response_ids.shape[1]
        hidden = response_hidden(self.policy, input_ids, attention_mask, R)
        values = self.value_head(hidden).float() if self.value_head is not None else self.values(input_ids, attention_mask, R)
        logprobs, ent = response_token_stats(self.policy, hidden, response_ids, response_mask, temperature, chunk_size, entropy, entropy_grad)
        return logprobs, ent, values

    @property
    def has_critic(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def values(self, input_ids, attention_mask, n_response: int) -> torch.Tensor:
        if self.critic is None and self.value_head is None:  # a bare policy (compare, probes): no critic to ask
            return torch.zeros(input_ids.shape[0], n_response, device=input_ids.device)
        if self.value_head is None:
            return critic_values(self.critic, input_ids, attention_mask, n_response)
        from policyshift.logprobs import response_hidden

        return self.value_head(response_hidden(self.policy, input_ids, attention_mask, n_response)).float()


def same_vocabulary(tok_a, tok_b) -> bool:
    return tok_a is tok_b or (len(tok_a) == len(tok_b) and tok_a.get_vocab() == tok_b.get_vocab())


def build_critic(policy_path: str, critic_path: str | None, reward_model_path: str | None, shares_vocab_with_rm: bool, dtype: str, trust_remote_code: bool):
    """Critic source: the user's path; else the reward model's backbone when the RM reads the policy's
    tokens (a critic must see the same token ids); else the policy's weights."""
    from transformers.utils import logging as hf_logging

    source = critic_path or (reward_model_path if reward_model_path and shares_vocab_with_rm else policy_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a fresh value head on a causal-LM checkpoint is expected, not a warning
    try:
        critic = load_sequence_classifier(source, dtype, trust_remote_code, kind="critic backbone")
    finally:
        hf_logging.set_verbosity(verbosity)
    critic.requires_grad_(True)
    return critic, source


def reference_from(policy, reference_path: str | None, dtype: str, trust_remote_code: bool):
    """The frozen reference π_ref: a separate checkpoint, or a copy of the policy's initial weights."""
    ref = load_causal_lm(reference_path, dtype, trust_remote_code) if reference_path else copy.deepcopy(policy)
    return freeze(ref)


def build_training_models(model_cfg, policy, ref_policy, reward, reward_model_path, tokenizer, with_critic: bool = True) -> tuple[PolicyAndCritic, nn.Module, str | None]:
    """The trained PolicyAndCritic, the frozen reference (`ref_policy` if given), and where the critic
    came from (None: `with_critic` false, a critic-free estimator — no critic is built at all). `model_cfg` is a ModelConfig; `reward` the reward object (its tokenizer decides
    whether the critic can start from the reward model). With `model_cfg.lora.r > 0` the policy (and
    with lora.critic the critic) is a peft LoRA model and the reference is the policy with its adapter off."""
    m = model_cfg
    lora = m.lora.r > 0
    if lora:
        from policyshift.config import ConfigError
        from policyshift.lora import AdapterOffReference, apply_lora

        if ref_policy is not None:  # (model.reference with LoRA is refused by config.validate)
            raise ConfigError("model.lora: the reference is the policy with its adapter off; drop ref_policy or set model.lora.r 0")
        policy = apply_lora(policy, m.lora, "causal")
        ref = AdapterOffReference(policy)  # shares every base weight with the policy: no second copy
    else:
        ref = ref_policy if ref_policy is not None else reference_from(policy, m.reference, m.dtype, m.trust_remote_code)
    if not with_critic:
        models, source = PolicyAndCritic(policy=policy), None
    elif m.share_critic_backbone:
        models, source = PolicyAndCritic(policy=policy, value_head=SharedValueHead(policy.config.hidden_size)), "policy backbone (shared)"
    else:
        rm_tok = getattr(reward, "tokenizer", None)
        critic, source = build_critic(m.policy, m.critic, reward_model_path, rm_tok is not None and same_vocabulary(rm_tok, tokenizer), m.dtype, m.trust_remote_code)
        if lora and m.lora.critic:
            critic = apply_lora(critic, m.lora, "critic")  # peft freezes the body, trains adapter + score head
        models = PolicyAndCritic(policy=policy, critic=critic)
    if not lora:
        models.requires_grad_(True)
    # With LoRA the frozen bases stay frozen: peft left only the adapters (and the value heads) trainable.
    return models, ref, source
