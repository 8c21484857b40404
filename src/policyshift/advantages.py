"""Per-token rewards and Generalized Advantage Estimation over the response tokens.

Each response is one episode: the state at step t is prompt + response[:t], the action is token t,
and the episode ends after the last real token (the first EOS, or the length cap).
Shapes: B = batch, T = response length; mask (B, T) is 1 on real tokens (a prefix of each row).
"""

import torch

from policyshift.masked import masked_whiten


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, −1 for a row with none. (B, T) → (B,) long.

    Equals mask.sum(1) − 1 for the prefix masks used here; taking the largest masked index
    instead keeps it right if a mask ever has leading padding.
    """
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, beta: float, mask: torch.Tensor) -> torch.Tensor:
    """r_t = −β·kl_t on real tokens (0 on padding), plus the sequence score at the last real token.

    scores (B,), kl (B, T) per-token estimate (any estimator), mask (B, T) → rewards (B, T).
    A row with no real tokens gets all-zero rewards: its score is dropped (there is no action to
    credit it to), rather than written into a padded position.
    """
    m = mask.bool()
    rewards = torch.where(m, -beta * kl, torch.zeros_like(kl))  # where, not *mask: kl on padding may be inf/nan
    last = last_token_index(mask)
    has_tokens = last >= 0
    # the reward model scores the whole response, so its score is the reward of the final action
    score_at_last = torch.zeros_like(rewards).scatter_(
        1, last.clamp(min=0).unsqueeze(1), torch.where(has_tokens, scores.to(rewards.dtype), 0.0).unsqueeze(1)
    )
    return rewards + score_at_last


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(γ, λ) over the response tokens. (B, T) ×3 → advantages (B, T), returns (B, T).

    δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   returns_t = A_t + V_t,
    with V_{t+1} = 0 and A_{t+1} = 0 after the last real token (the episode is over).
    Padded positions of both outputs are 0. Outputs are detached: they are regression targets
    and advantage weights, never something to backpropagate through.
    """
    m = mask.bool()
    zeros = torch.zeros_like(values)
    # Zero padding first: the value head's outputs past EOS are arbitrary, and V_{t+1} at the first
    # pad position must be the terminal value 0, not whatever the head says about padding.
    values = torch.where(m, values.detach(), zeros)
    rewards = torch.where(m, rewards.detach(), zeros)
    mf = m.to(values.dtype)

    T = values.shape[1]
    next_value = zeros[:, 0]  # V_T = 0: no state after the last position
    next_adv = zeros[:, 0]  # A_T = 0
    advantages_reversed = []
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = (delta + gamma * lam * next_adv) * mf[:, t]  # × mask: A on padding stays 0, so A_{last+1} = 0
        advantages_reversed.append(adv_t)
        next_value, next_adv = values[:, t], adv_t
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = advantages + values  # both are 0 on padding
    return advantages, returns


def whiten_advantages(advantages: torch.Tensor, mask: torch.Tensor, all_sum=None) -> torch.Tensor:
    """(A − mean)/std over the real tokens of the batch; padded entries → 0. (B, T) → (B, T).
    `all_sum` sums over processes: the statistics are the whole batch's, not this process's slice."""
    return masked_whiten(advantages, mask, all_sum=all_sum)
