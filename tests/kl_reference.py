"""From-logits references the tests compare policyshift's log-probability code against (they compose
policyshift.kl's from-log-probabilities functions with one log_softmax; the library itself never needs them)."""

from __future__ import annotations

import torch

from policyshift.kl import entropy_from_logprobs, exact_kl_from_logprobs, gather_tokens, log_softmax_t


def exact_kl_from_logits(logits: torch.Tensor, ref_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p‖q) = Σ_v p_v (log p_v − log q_v), p = softmax(logits/T), q = softmax(ref_logits/T).

    (..., V), (..., V) → (...). Uses log_softmax: log(softmax(·)) underflows to −inf for
    unlikely tokens and turns the sum into nan.
    """
    return exact_kl_from_logprobs(log_softmax_t(logits, temperature), log_softmax_t(ref_logits, temperature))


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """H(p) = −Σ_v p_v log p_v, p = softmax(logits/T). (..., V) → (...)."""
    return entropy_from_logprobs(log_softmax_t(logits, temperature))


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits/T)[tokens]. (B, T, V), (B, T) → (B, T).

    The temperature must be the one used for sampling: the logprobs are those of the
    distribution the tokens were actually drawn from (PPO's ratio is wrong otherwise).
    """
    return gather_tokens(log_softmax_t(logits, temperature), tokens)
