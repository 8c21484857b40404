"""Rollout: sample responses with a KV cache, take the policy's logprobs at the sampling
temperature, and score the same tokens under the reference and the critic.

We sample with our own loop over the model's KV cache rather than `generate`: `generate` fills any
option we leave unset from the checkpoint's generation_config (a hub model's top_k=50, top_p, a
repetition penalty...), and any such truncation of the sampling distribution biases the KL estimate
(TRL #925, #1161). Here the token is drawn from exactly softmax(logits / T), and the logprob we keep
is log softmax(logits / T) of the drawn token.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from policyshift.chat import end_of_turn_ids
from policyshift.kv_cache import cache_kwargs
from policyshift.kl import entropy_from_logprobs, exact_kl_from_logprobs, gather_tokens, log_softmax_t
from policyshift.models import position_ids_from_mask, response_logits


@dataclass(frozen=True)
class Rollout:
    """One batch of episodes. Shapes: B episodes, P prompt tokens (left-padded), R response tokens
    (right-padded; a row's real tokens run up to and including its first EOS)."""

    prompts: list[str]
    responses: list[str]
    query_ids: torch.Tensor  # (B, P)
    query_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, R)
    response_mask: torch.Tensor  # (B, R) float, 1 on real response tokens
    has_eos: torch.Tensor  # (B,) bool
    logprobs: torch.Tensor  # (B, R) log π_old(a_t|s_t) at the sampling temperature
    ref_logprobs: torch.Tensor | None  # (B, R) log π_ref(a_t|s_t) at the same temperature; None: kl.score_reference false
    values: torch.Tensor | None  # (B, R) V_old(s_t); None: a critic-free estimator
    exact_kl: torch.Tensor | None  # (B, R) full-vocabulary KL(π‖π_ref) at each state (logged, never optimized)
    entropy: torch.Tensor  # (B, R) policy entropy at each state
    scores: torch.Tensor | None = None  # (B,) reward of each episode, after penalties/normalization
    # (B, R) log π_engine(a_t|s_t) from a rollout engine with its own copy of the weights (vLLM): the
    # logprobs above are then the training model's, and these only measure the mismatch. None otherwise.
    engine_logprobs: torch.Tensor | None = None
    group_ids: torch.Tensor | None = None  # (B,) long: rows with the same id are the n samples of one prompt

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask.long()], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1).long()

    def __len__(self) -> int:
        return self.query_ids.shape[0]

    def select(self, index: torch.Tensor) -> "Rollout":
        """Rows `index` (a minibatch), keeping everything aligned."""
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                picked[f.name] = value[index]
            elif isinstance(value, list):
                picked[f.name] = [value[i] for i in index.tolist()]
            else:
                picked[f.name] = value
        return replace(self, **picked)


def truncate_after_eos(response_ids: torch.Tensor, eos_token_id, pad_token_id: int):
    """Mask 1 up to and including the first end-of-turn token of each row; later tokens become padding.
    `eos_token_id`: one id, a list of ids (any of them ends the turn: policyshift.chat.end_of_turn_ids), or None."""
    B, R = response_ids.shape
    if eos_token_id is None or (not isinstance(eos_token_id, int) and len(eos_token_id) == 0):
        return response_ids, response_ids.new_ones(B, R, dtype=torch.float), response_ids.new_zeros(B, dtype=torch.bool)
    is_eos = torch.isin(response_ids, torch.as_tensor(eos_token_id, device=response_ids.device))
    has_eos = is_eos.any(1)
    first_eos = torch.where(has_eos, is_eos.float().argmax(1), R)  # argmax returns the first maximum
    mask = (torch.arange(R, device=response_ids.device)[None, :] <= first_eos[:, None]).float()
    return torch.where(mask.bool(), response_ids, torch.full_like(response_ids, pad_token_id)), mask, has_eos


@torch.no_grad()
def sample(model, query_ids, query_mask, max_new_tokens: int, temperature: float, eos_token_id, stop_at_eos: bool = True, generator=None):
    """Ancestral sampling with a KV cache. Returns (tokens (B, R), logits (B, R, V)) with R ≤ max_new_tokens:
    raw logits of each step, so logprobs/entropy/KL can be taken at the same temperature."""
    B, P = query_ids.shape
    # One mask for the whole generation, sliced per step (no torch.cat per token).
    attention_mask = torch.cat([query_mask.long(), query_mask.new_ones(B, max_new_tokens, dtype=torch.long)], dim=1)
    prompt_mask = attention_mask[:, :P]
    out = model(input_ids=query_ids, attention_mask=prompt_mask, position_ids=position_ids_from_mask(prompt_mask),
                use_cache=True, logits_to_keep=1)  # the LM head only where the next token is predicted
    next_position = prompt_mask.sum(1, keepdim=True)  # each row continues after its own last prompt token
    tokens, step_logits = [], []
    done = torch.zeros(B, dtype=torch.bool, device=query_ids.device)
    for t in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        probs = torch.softmax(logits / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator)
        tokens.append(token)
        step_logits.append(logits)
        if eos_token_id is not None:  # one id or a list: any end-of-turn token ends the row
            done |= torch.isin(token.squeeze(1), torch.as_tensor(eos_token_id, device=token.device))
            if stop_at_eos and bool(done.all()):
                break
        if t == max_new_tokens - 1:
            break  # the next token's logits would be thrown away
        out = model(input_ids=token, attention_mask=attention_mask[:, : P + t + 1], position_ids=next_position,
                    use_cache=True, **cache_kwargs(out))
        next_position = next_position + 1
    return torch.cat(tokens, 1), torch.stack(step_logits, 1)


@torch.no_grad()
def generate_rollout(models, ref_policy, tokenizer, prompts: list[str], cfg, max_prompt_length: int, generator=None, *, engine=None) -> Rollout:
    """Sample one response per prompt and record everything the PPO update and the metrics need.
    `models` is a PolicyAndCritic; `cfg` a RolloutConfig; `engine` (policyshift.engines) draws the tokens:
    None or one sharing the training weights samples with the policy itself and reuses its step logits;
    an engine with its own weights (vLLM) only supplies tokens, and the policy's logits are recomputed
    here by the training model (its logprobs are the ones PPO uses; the engine's are kept in
    `engine_logprobs` to measure the mismatch)."""
    device = next(models.policy.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_length)
    query_ids, query_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    eos_ids = end_of_turn_ids(models.policy, tokenizer)  # the tokenizer's EOS and the model's end-of-turn tokens
    args = (query_ids, query_mask, cfg.max_new_tokens, cfg.temperature, eos_ids, cfg.stop_at_eos, generator)
    if engine is None:
        raw_ids, logits, engine_lp = *sample(models.policy, *args), None
    else:  # step logits come back only from an engine that samples with the training weights
        raw_ids, logits, engine_lp = engine.generate(*args)
        raw_ids = raw_ids.to(device)
    response_ids, response_mask, has_eos = truncate_after_eos(raw_ids, eos_ids, tokenizer.pad_token_id)
    # Trim columns past the longest real response: no forward pass ever runs on pure padding.
    R = max(int(response_mask.sum(1).max()), 1)
    response_ids, response_mask = response_ids[:, :R], response_mask[:, :R]

    input_ids = torch.cat([query_ids, response_ids], 1)
    attention_mask = torch.cat([query_mask, response_mask.long()], 1)
    if logits is None:  # an engine with its own weights: the training model scores its tokens in one forward pass
        logits = response_logits(models.policy, input_ids, attention_mask, R)
        if engine_lp is not None:
            engine_lp = torch.where(response_mask.bool(), engine_lp[:, :R].to(device).float(), 0.0)
    else:
        logits = logits[:, :R]
    # One log-softmax per model, shared by the logprobs, the exact KL and the entropy.
    logp = log_softmax_t(logits, cfg.temperature)
    # ref_policy None (kl.score_reference false): no reference forward, no KL for this batch
    ref_logp = log_softmax_t(response_logits(ref_policy, input_ids, attention_mask, R), cfg.temperature) if ref_policy is not None else None
    return Rollout(
        prompts=list(prompts),
        responses=tokenizer.batch_decode(torch.where(response_mask.bool(), response_ids, tokenizer.pad_token_id), skip_special_tokens=True),
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        has_eos=has_eos,
        logprobs=gather_tokens(logp, response_ids),
        ref_logprobs=gather_tokens(ref_logp, response_ids) if ref_logp is not None else None,
        values=models.values(input_ids, attention_mask, R) if models.has_critic else None,
        exact_kl=exact_kl_from_logprobs(logp, ref_logp) if ref_logp is not None else None,
        entropy=entropy_from_logprobs(logp),
        engine_logprobs=engine_lp,
    )
