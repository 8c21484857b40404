"""Rollout engines: what draws the response tokens.

An engine has one job, sampling, and a tiny interface:

    engine.generate(query_ids, query_mask, max_new_tokens, temperature, eos_token_id, stop_at_eos, generator, exact=False)
        -> (token_ids (B, R) long, rollout.SampledSteps or None, engine_logprobs (B, R) float or None)
    engine.shares_training_weights: bool
    engine.sync_weights(policy) -> None      # after every update

`HFEngine(policy)` (the default, rollout.engine=hf) samples with the training policy itself (our KV-cache
sampler, `rollout.sample`): its per-step logprobs (and, with `exact`, entropies and hidden states, from
which the exact KL is taken) are the training model's, so they need no extra forward pass, and there is
nothing to sync. No engine returns (B, R, V) logits.

An engine with its own copy of the weights (`VLLMEngine`, or `HFEngine(copy, shares_training_weights=False)`,
which is how the CPU tests exercise the same logic) only supplies tokens. The logprobs PPO uses are then
recomputed by the training model in one forward pass (`generate_rollout`), and the engine's own logprobs
are kept to measure the rollout-vs-train mismatch (rollout/logprob_diff_*, rollout/engine_kl_k3): a stale
sync, a bf16 engine, or a different kernel shows up there instead of silently biasing the PPO ratio.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

import torch

from policyshift.config import ConfigError
from policyshift.lora import merged_state_dict, save_pretrained  # merged_state_dict: the policy's weights under plain HF names, LoRA merged in
from policyshift.rollout import sample

VLLM_MISSING = "rollout.engine=vllm needs vLLM: pip install 'policyshift[vllm]' (GPU only)"
VLLM_NO_GPU = "rollout.engine=vllm needs a CUDA GPU (none is available); use rollout.engine=hf"


class HFEngine:
    """Sampling with a Hugging Face causal LM and our exact-softmax KV-cache sampler.

    `shares_training_weights=True` (default): `model` IS the training policy; the sampler's SampledSteps are
    returned and reused for the logprobs, `sync_weights` is a no-op. `False`: `model` is a separate copy; only the
    tokens and the copy's logprobs log softmax(logits/T)[token] come back, and `sync_weights` loads the
    policy's weights into it."""

    def __init__(self, model, shares_training_weights: bool = True):
        self.model = model
        self.shares_training_weights = shares_training_weights

    @torch.no_grad()
    def generate(self, query_ids, query_mask, max_new_tokens: int, temperature: float, eos_token_id, stop_at_eos: bool = True, generator=None,
                 exact: bool = False):
        tokens, steps = sample(self.model, query_ids, query_mask, max_new_tokens, temperature, eos_token_id, stop_at_eos, generator,
                               exact=exact and self.shares_training_weights)
        if self.shares_training_weights:
            return tokens, steps, None
        return tokens, None, steps.logprobs

    @torch.no_grad()
    def sync_weights(self, policy) -> None:
        if self.shares_training_weights:
            return
        weights = merged_state_dict(policy)
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        # A missing key is fine only when it is tied to a loaded one (GPT-2's lm_head.weight = wte.weight).
        loaded = {id(p) for name, p in self.model.named_parameters(remove_duplicate=False) if name in weights}
        params = dict(self.model.named_parameters(remove_duplicate=False))
        missing = [k for k in missing if not (k in params and id(params[k]) in loaded)]
        if missing or unexpected:
            raise RuntimeError(f"engine weight sync: missing {missing[:5]}, unexpected {unexpected[:5]}")


class VLLMEngine:
    """vLLM (GPU only) in this process, sharing the GPU with the training models.

    Tokens are drawn from exactly softmax(logits/T): top_p=1, top_k disabled, min_p=0, no repetition
    penalty, and the checkpoint's generation_config is ignored (generation_config="vllm"). The logprobs it
    returns are those of that processed distribution (logprobs_mode="processed_logprobs", vLLM ≥ 0.10.2);
    with an older vLLM they are the raw T=1 logprobs, usable only at T=1 (else None: no mismatch metric).
    Nothing here is exercised by CI (no GPU); tests/test_engines.py checks it against a fake `vllm`."""

    shares_training_weights = False

    def __init__(self, policy, tokenizer, gpu_memory_utilization: float = 0.3, seed: int = 0, max_model_len: int | None = None,
                 enable_prefix_caching: bool = True, trust_remote_code: bool = False):
        try:
            import vllm
        except ImportError:
            raise ConfigError(VLLM_MISSING) from None
        if not torch.cuda.is_available():
            raise ConfigError(VLLM_NO_GPU)
        # The engine core must live in THIS process: sync_weights hands it the training tensors directly
        # (no serialization, no copy through another process), and CUDA is already initialized here, which
        # rules out forking a worker anyway. Must be set before the LLM is built.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self._vllm = vllm
        # vLLM loads from a directory: write the current policy there (merged LoRA, resumed weights and
        # policies passed in as objects all come out right), with our tokenizer so its EOS is ours.
        self._dir = tempfile.mkdtemp(prefix="policyshift-vllm-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)
        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy  # a peft wrapper: its base's config
        save_pretrained(base, self._dir, state_dict=merged_state_dict(policy))
        tokenizer.save_pretrained(self._dir)
        dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[next(policy.parameters()).dtype]
        self.processed_logprobs = _version_at_least(vllm, "0.10.2")
        kwargs = dict(
            model=self._dir, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching, trust_remote_code=trust_remote_code,
            generation_config="vllm",  # never take top_k/top_p/repetition_penalty defaults from the checkpoint
        )
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len  # prompt budget + max_new_tokens: a small KV cache is enough
        if self.processed_logprobs:
            kwargs["logprobs_mode"] = "processed_logprobs"  # logprobs after temperature, i.e. of the sampling distribution
        self.llm = vllm.LLM(**kwargs)

    def generate(self, query_ids, query_mask, max_new_tokens: int, temperature: float, eos_token_id, stop_at_eos: bool = True, generator=None,
                 exact: bool = False):  # exact: nothing to keep, the training model scores vLLM's tokens
        SamplingParams = self._vllm.SamplingParams
        # Prompts as token ids, left padding stripped (vLLM takes unpadded, variable-length prompts).
        prompts = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(query_ids, query_mask)]
        # Reproducible from the trainer's generator: one draw per call, one seed per request.
        base_seed = None
        if generator is not None:
            base_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        stop_ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)  # end-of-turn ids
        params = [
            SamplingParams(
                n=1, temperature=temperature, top_p=1.0, top_k=-1, min_p=0.0, repetition_penalty=1.0,  # top_k=-1: off in every vLLM ≥ 0.10
                max_tokens=max_new_tokens, logprobs=0,  # 0: just the sampled token's logprob
                ignore_eos=not stop_at_eos, stop_token_ids=stop_ids if stop_at_eos else [],
                seed=None if base_seed is None else base_seed + i, detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rows, logprob_rows = [], []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            if len(ids) < max_new_tokens and not (stop_at_eos and ids and ids[-1] in stop_ids):
                # Only the model's context can cut a row short; fit_prompt_length leaves room, so this is a bug.
                raise RuntimeError(f"vLLM returned {len(ids)} of {max_new_tokens} tokens with no EOS (finish_reason={completion.finish_reason})")
            rows.append(ids)
            if completion.logprobs is not None:
                logprob_rows.append([step[token].logprob for step, token in zip(completion.logprobs, ids)])
        R = max(max(len(r) for r in rows), 1)
        pad = stop_ids[0] if stop_ids else 0  # positions after a row's EOS: masked by truncate_after_eos
        tokens = torch.full((len(rows), R), pad, dtype=torch.long)
        engine_logprobs = torch.zeros(len(rows), R)
        for i, ids in enumerate(rows):
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if logprob_rows:
                engine_logprobs[i, : len(ids)] = torch.tensor(logprob_rows[i], dtype=torch.float)
        usable = len(logprob_rows) == len(rows) and (self.processed_logprobs or temperature == 1.0)
        device = query_ids.device
        return tokens.to(device), None, engine_logprobs.to(device) if usable else None

    @torch.no_grad()
    def sync_weights(self, policy) -> None:
        """Load the policy's current weights into vLLM's model (in place, so CUDA graphs stay valid) and
        drop the prefix cache, whose KV entries were computed with the old weights."""
        items = list(merged_state_dict(policy).items())

        def load(model):  # runs inside vLLM's worker, which is in this process (see __init__)
            model.load_weights(items)  # vLLM's own loader: plain HF names, handles fused/transposed layouts

        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(load)
        else:  # older vLLM: the worker's model directly
            load(self.llm.llm_engine.model_executor.driver_worker.model_runner.model)
        self.llm.reset_prefix_cache()


def _version_at_least(module, version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(getattr(module, "__version__", "0")) >= Version(version)
    except InvalidVersion:  # a dev build with an odd version string: assume it is recent
        return True


def make_engine(rollout_cfg, policy, tokenizer, *, seed: int = 0, max_model_len: int | None = None, trust_remote_code: bool = False):
    """The engine rollout.engine asks for. `policy` is the training policy (an HF causal LM, maybe with
    LoRA); `max_model_len` the prompt budget + rollout.max_new_tokens (vLLM sizes its KV cache by it)."""
    if rollout_cfg.engine == "hf":
        return HFEngine(policy)
    if rollout_cfg.engine == "vllm":
        return VLLMEngine(policy, tokenizer, rollout_cfg.vllm_gpu_memory_utilization, seed, max_model_len, trust_remote_code=trust_remote_code)
    raise ConfigError(f"rollout.engine must be 'hf' or 'vllm'; got {rollout_cfg.engine!r}")
