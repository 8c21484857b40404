"""Policy-gradient losses: the clipped surrogate (Schulman et al. 2017) with clip-higher (DAPO, Yu et al.
2025) and dual clip (Ye et al. 2020), its sequence-level form GSPO (Zheng et al. 2025), the clipped
value loss — and how per-token losses are aggregated into one number (the loss *shape*).

Shapes: B = batch, T = response length; mask (B, T) is 1 on real tokens, 0 on padding.
Every loss returns (loss, stats); stats are detached 0-dim tensors for logging. `aggregate(per_token,
mask)` turns per-token losses into the loss (default: the token mean of this batch, masked_mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from policyshift.masked import masked_mean, masked_sum, masked_var

Aggregate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# ---------------------------------------------------------------------------- loss aggregation
# Each mode divides a sum of per-token losses by a size of the whole *minibatch* (all of its micro-batches,
# all processes), so the micro-batch shares add up to the minibatch loss exactly; README "Loss shapes".
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", "micro_batch_token_mean")


@dataclass(frozen=True)
class LossNormalizer:
    """The minibatch sizes an aggregation divides by (over every micro-batch and process)."""

    tokens: torch.Tensor | float  # real response tokens (micro_batch_token_mean: this micro-batch's × the number of micro-batches)
    sequences: torch.Tensor | float  # responses
    max_new_tokens: int  # Dr. GRPO's constant


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str, norm: LossNormalizer) -> torch.Tensor:
    """This micro-batch's share of the minibatch loss.
    token_mean               Σ_{i,t} l / Σ_i |y_i|            every token counts the same (DAPO; TRL "dapo", verl "token-mean")
    seq_mean_token_mean      (1/N) Σ_i (1/|y_i|) Σ_t l         every sequence counts the same (original GRPO; TRL "grpo")
    seq_mean_token_sum_norm  Σ_{i,t} l / (N · max_new_tokens)  a constant divisor, no length bias (Dr. GRPO; TRL "dr_grpo")
    micro_batch_token_mean   each micro-batch's token mean, averaged over micro-batches (earlier builds' aggregation: short
                             micro-batches weigh more; equals token_mean with one micro-batch)."""
    x = _zero_pad(per_token, mask)
    if mode in ("token_mean", "micro_batch_token_mean"):
        return masked_sum(x, mask) / norm.tokens
    if mode == "seq_mean_token_mean":
        return (masked_sum(x, mask, 1) / mask.sum(1).clamp(min=1)).sum() / norm.sequences
    if mode == "seq_mean_token_sum_norm":
        return masked_sum(x, mask) / (norm.sequences * norm.max_new_tokens)
    raise ValueError(f"unknown loss aggregation {mode!r}; one of {', '.join(AGGREGATIONS)}")


def _zero_pad(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Padding can hold anything (inf logprobs, nan values). masked_mean's torch.where hides that in
    # the forward pass, but backward then computes 0 · d(op)/dx at the pad, and 0 · inf = nan leaks
    # into every gradient. Replacing the padding by 0 *before* any arithmetic avoids both.
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    clip_range_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
    aggregate: Optional[Aggregate] = None,
) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate: l_t = max(−A_t ρ_t, −A_t clip(ρ_t, 1−ε_low, 1+ε_high)), ρ_t = π_new/π_old.

    The max of the two negated terms is the pessimistic bound: once the ratio has moved past the clip
    range in the direction the advantage favours, the clipped (constant) term wins and the token's
    gradient is exactly 0. ε_high > ε_low (clip-higher, DAPO: 0.28 vs 0.2) lets low-probability tokens
    with A > 0 grow further, which keeps entropy from collapsing. Dual clip c > 1 (Ye et al. 2020; verl
    clip_ratio_c = 3): for A < 0, l_t = min(l_t, −c·A_t) bounds the loss of a token whose ratio exploded
    (its gradient is then 0). (B, T) ×3, mask (B, T) → loss (0-dim), stats {clip_frac, clip_frac_low,
    clip_frac_high, dual_clip_frac, approx_kl, ratio_mean, ratio_var}.
    """
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = _zero_pad(new_logprobs - old_logprobs.detach(), mask)  # padding → ρ = 1, never exp(inf)
    advantages = _zero_pad(advantages.detach(), mask)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    per_token = torch.maximum(pg_unclipped, pg_clipped)
    dual = torch.zeros_like(per_token, dtype=torch.bool)
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual = (advantages < 0) & (bound < per_token)
        per_token = torch.where(dual, bound, per_token)
    loss = aggregate(per_token, mask) if aggregate is not None else masked_mean(per_token, mask)

    with torch.no_grad():
        stats = _ratio_stats(pg_unclipped, pg_clipped, ratio, log_ratio, mask)
        if dual_clip is not None:
            stats["dual_clip_frac"] = masked_mean(dual.to(ratio.dtype), mask)
    return loss, stats


def _ratio_stats(pg_unclipped, pg_clipped, ratio, log_ratio, mask, clipped_ratio=None) -> dict:
    """Shared statistics of a clipped surrogate: where the clip was active (strictly larger: inside the range
    the two terms tie and the token still has gradient), below 1 − ε_low (A < 0) or above 1 + ε_high (A > 0) of
    `clipped_ratio` (the ratio that is clipped: the token's, or GSPO's sequence ratio); the k3 estimate of
    KL(π_old‖π_new) from tokens sampled by π_old, (ρ − 1) − log ρ ≥ 0; token ratio mean and variance."""
    clipped = pg_clipped > pg_unclipped
    clipped_ratio = ratio if clipped_ratio is None else clipped_ratio
    share = lambda flags: masked_mean(flags.to(ratio.dtype), mask)  # noqa: E731
    return {
        "clip_frac": share(clipped),
        "clip_frac_low": share(clipped & (clipped_ratio < 1.0)),
        "clip_frac_high": share(clipped & (clipped_ratio > 1.0)),
        "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_var": masked_var(ratio, mask),
    }


def sequence_policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    clip_range_high: Optional[float] = None,
    aggregate: Optional[Aggregate] = None,
) -> tuple[torch.Tensor, dict]:
    """GSPO (Zheng et al. 2025): one importance ratio per *sequence*, s_i = exp((1/|y_i|) Σ_t log ρ_{i,t}) — the
    geometric mean of its token ratios — clipped as a whole: l_{i,t} = max(−A_{i,t} s_i, −A_{i,t} clip(s_i,
    1−ε_low, 1+ε_high)); token ratios are never clipped one by one. Through autograd ∇s_i = s_i·(1/|y_i|) Σ_t
    ∇log π(y_{i,t}): every token of a sequence gets the same weight, the paper's gradient. Its ε are about
    1e-3 of PPO's (the paper: 3e-4 / 4e-4), since s_i is a length-normalized ratio. Stats as policy_loss's,
    plus seq_ratio_mean/min/max and seq_clip_frac (share of sequences clipped)."""
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = _zero_pad(new_logprobs - old_logprobs.detach(), mask)
    advantages = _zero_pad(advantages.detach(), mask)
    seq_log_ratio = masked_sum(log_ratio, mask, 1) / mask.sum(1).clamp(min=1)  # (B,)
    seq_ratio = torch.exp(seq_log_ratio)[:, None]  # (B, 1), broadcast over the sequence's tokens
    pg_unclipped = -advantages * seq_ratio
    pg_clipped = -advantages * torch.clamp(seq_ratio, 1.0 - clip_range, 1.0 + high)
    per_token = torch.maximum(pg_unclipped, pg_clipped)
    loss = aggregate(per_token, mask) if aggregate is not None else masked_mean(per_token, mask)
    with torch.no_grad():
        stats = _ratio_stats(pg_unclipped, pg_clipped, torch.exp(log_ratio), log_ratio, mask, clipped_ratio=seq_ratio.expand_as(log_ratio))
        s = seq_ratio.squeeze(1)[mask.sum(1) > 0]
        seq_clipped = ((s < 1.0 - clip_range) | (s > 1.0 + high)).to(s.dtype)
        stats |= {
            "seq_ratio_mean": s.mean() if s.numel() else torch.tensor(float("nan")),
            "seq_ratio_min": s.min() if s.numel() else torch.tensor(float("nan")),
            "seq_ratio_max": s.max() if s.numel() else torch.tensor(float("nan")),
            "seq_clip_frac": seq_clipped.mean() if s.numel() else torch.tensor(float("nan")),
        }
    return loss, stats


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
    aggregate: Optional[Aggregate] = None,
) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: ½ mean_t max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, ±ε_v) − R_t)²).

    (B, T) ×3, mask (B, T) → loss (0-dim), stats {clip_frac}. As with the policy, the max keeps the
    pessimistic error: when V has moved more than ε_v away from V_old and the clipped value is
    farther from R, the token contributes a constant and no gradient.
    """
    new_values = _zero_pad(new_values, mask)
    old_values = _zero_pad(old_values.detach(), mask)
    returns = _zero_pad(returns.detach(), mask)
    v_clipped = old_values + torch.clamp(new_values - old_values, -clip_range_value, clip_range_value)
    err_unclipped = (new_values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    per_token = torch.maximum(err_unclipped, err_clipped)
    loss = 0.5 * (aggregate(per_token, mask) if aggregate is not None else masked_mean(per_token, mask))
    with torch.no_grad():
        # active only where clipping changed the value: inside ±ε_v the two errors are equal up to rounding
        # (old + (new − old) vs new), and a rounding "tie" must not count
        clipped = ((new_values - old_values).abs() > clip_range_value) & (err_clipped > err_unclipped)
        stats = {"clip_frac": masked_mean(clipped.to(err_clipped.dtype), mask)}
    return loss, stats


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, aggregate: Optional[Aggregate] = None) -> torch.Tensor:
    """Masked token-mean (or `aggregate`) of the per-token entropy. (B, T) → 0-dim. The trainer subtracts ent_coef × this."""
    entropy = _zero_pad(entropy, mask)
    return aggregate(entropy, mask) if aggregate is not None else masked_mean(entropy, mask)


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var[R − V] / Var[R] over the real tokens. (B, T) ×2 → 0-dim tensor.

    1: V predicts R perfectly; 0: no better than the constant mean; < 0: worse than that.
    Returns nan when Var[R] = 0 up to rounding (constant returns): the ratio is undefined, and nan shows up
    as a gap in the logs instead of a made-up number.
    """
    var_returns = masked_var(returns, mask)
    var_residual = masked_var(returns - values, mask)
    # "0" up to rounding: the float mean of a constant is not exactly that constant, which leaves
    # a variance of ~1e-34 and a meaningless ratio of two rounding errors
    if var_returns <= torch.finfo(var_returns.dtype).eps * masked_mean(returns**2, mask):
        return torch.tensor(float("nan"), dtype=var_returns.dtype, device=var_returns.device)
    return 1.0 - var_residual / var_returns
