"""PPO losses (Schulman et al. 2017) as token-level masked means over a minibatch.

Shapes: B = batch, T = response length; mask (B, T) is 1 on real tokens, 0 on padding.
Every loss returns (loss, stats); stats are detached 0-dim tensors for logging.
"""

import torch

from policyshift.masked import masked_mean, masked_var


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
) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate: L = mean_t max(−A_t ρ_t, −A_t clip(ρ_t, 1−ε, 1+ε)), ρ_t = π_new/π_old.

    (B, T) ×3, mask (B, T) → loss (0-dim), stats {clip_frac, approx_kl, ratio_mean, ratio_var}.
    The max of the two negated terms is the pessimistic bound: once the ratio has moved past
    1 ± ε in the direction the advantage favours, the clipped (constant) term wins and the
    token's gradient is exactly 0.
    """
    log_ratio = _zero_pad(new_logprobs - old_logprobs.detach(), mask)  # padding → ρ = 1, never exp(inf)
    advantages = _zero_pad(advantages.detach(), mask)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(pg_unclipped, pg_clipped), mask)

    with torch.no_grad():
        stats = {
            # strictly larger: inside [1−ε, 1+ε] the two terms tie and the token still has gradient
            "clip_frac": masked_mean((pg_clipped > pg_unclipped).to(ratio.dtype), mask),
            # k3 estimate of KL(π_old‖π_new) from tokens sampled by π_old: (ρ − 1) − log ρ ≥ 0
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_var": masked_var(ratio, mask),
        }
    return loss, stats


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
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
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((err_clipped > err_unclipped).to(err_clipped.dtype), mask)}
    return loss, stats


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked token-mean of the per-token entropy. (B, T) → 0-dim. The trainer subtracts ent_coef × this."""
    return masked_mean(_zero_pad(entropy, mask), mask)


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
