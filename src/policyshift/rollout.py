"""Rollout: sample responses with a KV cache, take the policy's logprobs at the sampling
temperature, and score the same tokens under the reference and the critic, without ever holding
(batch, length, vocabulary) logits (see policyshift.logprobs).

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
from policyshift.kl import gather_tokens
from policyshift.kv_cache import cache_kwargs
from policyshift.logprobs import (check_head, chunk_tokens, output_head, reference_logprobs, response_hidden, scatter_rows, token_logprobs,
                                  vocab_size)
from policyshift.models import position_ids_from_mask


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
    logprobs: torch.Tensor  # (B, R) log π_old(a_t|s_t) at the sampling temperature (0 on padding)
    ref_logprobs: torch.Tensor | None  # (B, R) log π_ref(a_t|s_t) at the same temperature; None: kl.score_reference false
    values: torch.Tensor | None  # (B, R) V_old(s_t); None: a critic-free estimator
    # (B, R) full-vocabulary KL(π‖π_ref) and policy entropy at each state (logged, never optimized); None
    # with rollout.exact_kl false (exact_kl also without a reference pass). All of these hold 0 on padding.
    exact_kl: torch.Tensor | None
    entropy: torch.Tensor | None
    scores: torch.Tensor | None = None  # (B,) reward of each episode, after penalties/normalization
    # (B, R) log π_engine(a_t|s_t) from a rollout engine with its own copy of the weights (vLLM): the
    # logprobs above are then the training model's, and these only measure the mismatch. None otherwise.
    engine_logprobs: torch.Tensor | None = None
    group_ids: torch.Tensor | None = None  # (B,) long: rows with the same id are the n samples of one prompt
    # (B, R) importance weights π_train_old/π_engine of the training–inference mismatch correction (losses.mismatch_weights),
    # applied to the policy loss; None without an engine of its own weights or with algorithm.mismatch_correction none
    is_weights: torch.Tensor | None = None

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


@dataclass(frozen=True)
class SampledSteps:
    """What the sampler keeps of each step's distribution softmax(logits/T) instead of its logits:
    (B, R) logprob of the drawn token; with `exact`, the (B, R) entropy and the (B, R, H) last hidden
    state that produced the logits (the exact KL against the reference is taken from it afterwards,
    chunk by chunk). Never a (B, R, V) tensor."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None

    def trim(self, R: int) -> "SampledSteps":
        return SampledSteps(*(None if x is None else x[:, :R] for x in (self.logprobs, self.entropy, self.hidden)))


def draw(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One token per row from exactly `probs` (B, V) by inverse CDF: the first index whose cumulative probability
    exceeds u ~ U[0, total). torch.multinomial draws an exponential variate for every vocabulary entry (on CPU at
    batch 64: 20–25 % of a GRPO step, benchmarks/README); this draws one uniform per row. Same distribution, another
    random stream than multinomial's. Zero-probability tokens have zero-width intervals and are never drawn;
    scaling u by the row's own total keeps rounding in the cumsum from reaching past the last token. → (B, 1)."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[1] - 1)


@torch.no_grad()
def sample(model, query_ids, query_mask, max_new_tokens: int, temperature: float, eos_token_id, stop_at_eos: bool = True, generator=None,
           exact: bool = False) -> tuple[torch.Tensor, SampledSteps]:
    """Ancestral sampling with a KV cache from exactly softmax(logits/T). Returns tokens (B, R) with
    R ≤ max_new_tokens and SampledSteps: per step only the drawn token's logprob at T (and with
    `exact` the entropy and the last hidden state); each step's (B, V) logits are dropped at once."""
    B, P = query_ids.shape
    # One mask for the whole generation, sliced per step (no torch.cat per token).
    attention_mask = torch.cat([query_mask.long(), query_mask.new_ones(B, max_new_tokens, dtype=torch.long)], dim=1)
    prompt_mask = attention_mask[:, :P]
    out = model(input_ids=query_ids, attention_mask=prompt_mask, position_ids=position_ids_from_mask(prompt_mask),
                use_cache=True, logits_to_keep=1, output_hidden_states=exact)  # the LM head only where the next token is predicted
    next_position = prompt_mask.sum(1, keepdim=True)  # each row continues after its own last prompt token
    tokens, logprobs, entropy, hidden = [], [], [], []
    done = torch.zeros(B, dtype=torch.bool, device=query_ids.device)
    for t in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        probs = torch.softmax(logits / temperature, dim=-1)
        token = draw(probs, generator)
        tokens.append(token)
        # log p of the drawn token from the probabilities already at hand (one pass over V fewer than a
        # log-softmax; p ≥ its sampling probability, far from fp32 underflow), H = Σ −p log p (entr: 0 at p = 0)
        logprobs.append(gather_tokens(probs, token.squeeze(1)).log())
        if exact:
            if t == 0:
                check_head(model, out.hidden_states[-1][:, -1], logits)  # the KL recomputes these logits from the hidden state
            entropy.append(torch.special.entr(probs).sum(-1))
            hidden.append(out.hidden_states[-1][:, -1])
        if eos_token_id is not None:  # one id or a list: any end-of-turn token ends the row
            done |= torch.isin(token.squeeze(1), torch.as_tensor(eos_token_id, device=token.device))
            if stop_at_eos and bool(done.all()):
                break
        if t == max_new_tokens - 1:
            break  # the next token's logits would be thrown away
        out = model(input_ids=token, attention_mask=attention_mask[:, : P + t + 1], position_ids=next_position,
                    use_cache=True, output_hidden_states=exact, **cache_kwargs(out))
        next_position = next_position + 1
    steps = SampledSteps(torch.stack(logprobs, 1), torch.stack(entropy, 1) if exact else None, torch.stack(hidden, 1) if exact else None)
    return torch.cat(tokens, 1), steps


@torch.no_grad()
def generate_rollout(models, ref_policy, tokenizer, prompts: list[str], cfg, max_prompt_length: int, generator=None, *, engine=None) -> Rollout:
    """Sample one response per prompt and record everything the PPO update and the metrics need.
    `models` is a PolicyAndCritic; `cfg` a RolloutConfig; `engine` (policyshift.engines) draws the tokens:
    None or one sharing the training weights samples with the policy itself and keeps its per-step
    logprobs (and hidden states); an engine with its own weights (vLLM) only supplies tokens, and the
    policy's logprobs are recomputed here by the training model (its logprobs are the ones PPO uses;
    the engine's are kept in `engine_logprobs` to measure the mismatch).

    Memory: the reference, the critic and that policy scoring run on cfg.forward_batch_size rows at a
    time, and logprobs/entropy/exact KL take at most cfg.logit_chunk_size tokens' logits at once
    (policyshift.logprobs). With cfg.exact_kl false the exact KL and the entropy are skipped (None)."""
    device = next(models.policy.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_length)
    query_ids, query_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    eos_ids = end_of_turn_ids(models.policy, tokenizer)  # the tokenizer's EOS and the model's end-of-turn tokens
    args = (query_ids, query_mask, cfg.max_new_tokens, cfg.temperature, eos_ids, cfg.stop_at_eos, generator)
    exact = cfg.exact_kl
    if engine is None:
        raw_ids, steps, engine_lp = *sample(models.policy, *args, exact=exact), None
    else:  # per-step statistics come back only from an engine that samples with the training weights
        raw_ids, steps, engine_lp = engine.generate(*args, exact=exact)
        raw_ids = raw_ids.to(device)
    response_ids, response_mask, has_eos = truncate_after_eos(raw_ids, eos_ids, tokenizer.pad_token_id)
    # Trim columns past the longest real response: no forward pass ever runs on pure padding.
    R = max(int(response_mask.sum(1).max()), 1)
    response_ids, response_mask = response_ids[:, :R], response_mask[:, :R]
    steps = steps.trim(R) if steps is not None else None
    if engine_lp is not None:
        engine_lp = torch.where(response_mask.bool(), engine_lp[:, :R].to(device).float(), 0.0)

    input_ids = torch.cat([query_ids, response_ids], 1)
    attention_mask = torch.cat([query_mask, response_mask.long()], 1)
    T, B = cfg.temperature, len(prompts)
    chunk = chunk_tokens(cfg.logit_chunk_size, vocab_size(models.policy))
    head = output_head(models.policy)
    ref_head = output_head(ref_policy) if ref_policy is not None else None  # None: kl.score_reference false, no reference pass
    parts = []  # per micro-batch: (logprobs, ref_logprobs, exact_kl, entropy, values), each (b, R)
    for rows in torch.arange(B, device=device).split(cfg.forward_batch_size or B):
        ids, am, m = input_ids[rows], attention_mask[rows], response_mask[rows].bool()
        tokens = response_ids[rows][m]
        if steps is None:  # an engine with its own weights: the training model scores its tokens
            hidden = response_hidden(models.policy, ids, am, R)[m]
            lp, ent = token_logprobs(head, hidden, tokens, T, chunk, entropy=exact)
        else:
            hidden = steps.hidden[rows][m] if exact else None
            lp, ent = steps.logprobs[rows][m], steps.entropy[rows][m] if exact else None
        ref_lp = kl = None
        if ref_head is not None:
            ref_lp, kl = reference_logprobs(ref_head, response_hidden(ref_policy, ids, am, R)[m], tokens, T, chunk,
                                            head=head if exact else None, hidden=hidden)
        values = models.values(ids, am, R) if models.has_critic else None
        parts.append([scatter_rows(x, m) for x in (lp, ref_lp, kl, ent)] + [values])
    logprobs, ref_logprobs, exact_kl, entropy, values = (None if p[0] is None else torch.cat(p) for p in zip(*parts))
    return Rollout(
        prompts=list(prompts),
        responses=tokenizer.batch_decode(torch.where(response_mask.bool(), response_ids, tokenizer.pad_token_id), skip_special_tokens=True),
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        has_eos=has_eos,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        values=values,
        exact_kl=exact_kl,
        entropy=entropy,
        engine_logprobs=engine_lp,
    )
