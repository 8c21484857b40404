"""Per-token log-probabilities, entropy and exact KL from hidden states, a chunk of tokens at a time.

A (batch, length, vocabulary) logits tensor is what makes RLHF memory grow with the vocabulary: at
Qwen's 151,936 tokens, batch 64 × 256 response tokens is 2.5e9 logits (10 GB in fp32) per copy, and a
log-softmax, its exp and the backward each make another. Here the LM head is applied to at most
`chunk` token positions at once, so no more than (chunk, V) logits exist at any time:

    hidden (N, H) ──split──▶ (chunk, H) ──head──▶ (chunk, V) ──log_softmax/T──▶ gather / entropy / KL ──▶ (chunk,)

In the update (autograd on), when there is more than one chunk, each chunk's head + log-softmax +
gather + entropy runs under non-reentrant activation checkpointing: the forward keeps only the chunk's
inputs (its hidden rows and tokens), and the backward recomputes one chunk's logits at a time (autograd
runs the chunks' subgraphs one after the other, latest first), so a micro-batch's memory is bounded by
its chunk, not by length × vocabulary. The price is one more LM-head matmul and log-softmax per chunk
in the backward.

N counts real response tokens only: padding positions are never sent through the head, and the (B, R)
results hold 0 there. Shapes: B batch, R response length, H hidden size, V vocabulary, N = mask.sum().
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from policyshift.errors import ModelError
from policyshift.kl import entropy_from_logprobs, exact_kl_from_logprobs, gather_tokens, log_softmax_t


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left-padded rows must start counting positions at their first real token, exactly as
    # generation does, or the recomputed logprobs differ from the sampled ones.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# rollout.logit_chunk_size null: as many tokens as keep one (chunk, V) fp32 tensor at 64 MiB (110 tokens
# at V = 151,936; 4,096 at V = 4,096, i.e. no chunking at all for small vocabularies and batches). A chunk
# holds up to ~6 such tensors at once (the exact KL's: both log-softmaxes, p, the difference, ...).
LOGITS_PER_CHUNK = 2**24


def chunk_tokens(chunk_size: int | None, vocab_size: int) -> int:
    """Tokens per chunk: the configured size, or LOGITS_PER_CHUNK // V."""
    return int(chunk_size) if chunk_size else max(1, LOGITS_PER_CHUNK // max(1, vocab_size))


def _hf_model(model):
    if hasattr(model, "peft_model"):  # lora.AdapterOffReference (the reference of a LoRA run)
        return _hf_model(model.peft_model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper


def output_head(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden (..., H) → float32 logits (..., V), as the model's own forward computes them: its output
    embedding, then the post-processing the config declares (Gemma 2/3 final-logit softcapping,
    Cohere's logit_scale, Granite's logits_scaling). check_head compares the result with the model's
    own logits once per model, so an architecture with other post-processing fails loudly."""
    hf = _hf_model(model)
    head, cfg = hf.get_output_embeddings(), hf.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    divide = getattr(cfg, "logits_scaling", None)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = head(hidden)
        if scale is not None:
            out = out * scale
        if divide is not None:
            out = out / divide
        out = out.float()
        if cap:
            out = torch.tanh(out / cap) * cap
        return out

    if hasattr(model, "peft_model"):  # the adapter is off for the reference's head too (peft may wrap lm_head)
        def adapter_off(hidden: torch.Tensor) -> torch.Tensor:
            with model.peft_model.disable_adapter():
                return logits(hidden)
        return adapter_off
    return logits


_head_checked: "weakref.WeakSet" = weakref.WeakSet()


def check_head(model, hidden: torch.Tensor, logits: torch.Tensor) -> None:
    """The first time `model` is seen: output_head(model)(hidden) must equal the model's own `logits`
    for the same positions ((n, H), (n, V)); otherwise chunked logprobs would silently be another
    distribution's. ModelError (one line) if not."""
    if model in _head_checked:
        return
    with torch.no_grad():
        mine, theirs = output_head(model)(hidden), logits.float()
        if not torch.allclose(mine, theirs, rtol=1e-2, atol=1e-2 * (1 + float(theirs.abs().max()))):
            raise ModelError(f"{type(_hf_model(model)).__name__}: its logits are not output_embeddings(last hidden state) with a known "
                             f"post-processing (max difference {float((mine - theirs).abs().max()):.3g}); policyshift cannot chunk them")
    _head_checked.add(model)


def response_hidden(model, input_ids, attention_mask, n_response: int) -> torch.Tensor:
    """Last-layer hidden states that predict each response token (positions P−1 … P+R−2 of
    [prompt | response]): (B, R, H). The model runs its own forward (so peft adapters, a disabled
    adapter, FSDP/ZeRO hooks all apply) with the LM head on one position only; that position's logits
    check output_head the first time a model is seen."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                output_hidden_states=True, logits_to_keep=1, use_cache=False)
    hidden = out.hidden_states[-1]
    check_head(model, hidden[:, -1], out.logits[:, -1])
    return hidden[:, -(n_response + 1) : -1]


def agreed_chunk_count(n: int, chunk: int, device) -> int:
    """ceil(n / chunk) (at least 1), the largest over processes when torch.distributed runs: under
    DeepSpeed ZeRO-3 every call of the LM head is a collective (its weight is all-gathered), and the
    processes hold different numbers of real tokens, so they must all make the same number of calls
    (the shorter ones run empty chunks)."""
    count = max(1, -(-n // chunk))
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        t = torch.tensor([count], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        count = int(t)
    return count


def _map_chunks(fn, chunk: int, *rows: torch.Tensor) -> list[torch.Tensor | None]:
    """fn over row-chunks of `rows` (each (N, ...)), its (n,)-shaped outputs concatenated. With autograd
    on and more than one chunk, each chunk runs under non-reentrant checkpointing (only its inputs are
    kept). A single chunk is not checkpointed: what autograd keeps of it is one chunk's worth already,
    and the backward is spared the recomputation (small vocabularies: the default chunk holds it all).
    The number of chunks is the same on every process (agreed_chunk_count)."""
    count = agreed_chunk_count(rows[0].shape[0], chunk, rows[0].device)
    if count == 1:  # also N = 0 (no real token): fn on the empty rows gives the right dtypes and shapes
        return list(fn(*rows))
    run = (lambda *a: checkpoint(fn, *a, use_reentrant=False)) if torch.is_grad_enabled() else fn
    parts = [run(*(r[i * chunk : (i + 1) * chunk] for r in rows)) for i in range(count)]
    return [None if p[0] is None else torch.cat(p) for p in zip(*parts)]


def token_logprobs(head, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float, chunk: int,
                   entropy: bool = False, entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(head(hidden)/T)[tokens] and (with `entropy`) H(softmax(head(hidden)/T)), chunk by chunk.
    (N, H), (N,) → (N,), (N,) or None. `entropy_grad` false: the entropy carries no gradient (it is only
    logged), so the backward never recomputes it."""

    def stats(h, tok):
        logp = log_softmax_t(head(h), temperature)
        lp = gather_tokens(logp, tok)
        if not entropy:
            return lp, None
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            return lp, entropy_from_logprobs(logp)

    lp, ent = _map_chunks(stats, chunk, hidden, tokens)
    return lp, ent


def reference_logprobs(ref_head, ref_hidden: torch.Tensor, tokens: torch.Tensor, temperature: float, chunk: int,
                       head=None, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π_ref(tokens) and, given the policy's `head` and `hidden` for the same positions, the exact
    KL(π‖π_ref) = Σ_v π_v (log π_v − log π_ref,v) at each, both at temperature T, chunk by chunk.
    (N, H), (N,) → (N,), (N,) or None."""

    def stats(ref_h, tok, *policy_h):
        ref_logp = log_softmax_t(ref_head(ref_h), temperature)
        kl = exact_kl_from_logprobs(log_softmax_t(head(policy_h[0]), temperature), ref_logp) if policy_h else None
        return gather_tokens(ref_logp, tok), kl

    ref_lp, kl = _map_chunks(stats, chunk, ref_hidden, tokens, *(() if hidden is None else (hidden,)))
    return ref_lp, kl


def scatter_rows(values: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor | None:
    """(N,) values of the real tokens back to (B, R), 0 on padding (differentiable)."""
    if values is None:
        return None
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask.bool(), values)


def vocab_size(model) -> int:
    # from the config: under ZeRO-3 the head's weight is a 0-element placeholder outside its forward
    return _hf_model(model).config.get_text_config().vocab_size


def response_token_stats(model, hidden: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor, temperature: float,
                         chunk_size: int | None, entropy: bool = False, entropy_grad: bool = False):
    """token_logprobs on the real tokens of a (B, R) response, results back to (B, R) (0 on padding).
    hidden: (B, R, H) from response_hidden(model, ...)."""
    m = response_mask.bool()
    lp, ent = token_logprobs(output_head(model), hidden[m], response_ids[m], temperature, chunk_tokens(chunk_size, vocab_size(model)),
                             entropy, entropy_grad)
    return scatter_rows(lp, m), scatter_rows(ent, m)
