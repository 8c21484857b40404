"""Advantage estimators: per-token rewards, GAE with a critic, and the critic-free family that uses
the other samples of the same prompt (a *group*) as the baseline — one registry, one entry each.

Each response is one episode: the state at step t is prompt + response[:t], the action is token t,
and the episode ends after the last real token (the first EOS, or the length cap).
Shapes: B = batch, T = response length; mask (B, T) is 1 on real tokens (a prefix of each row);
group_ids (B,) long: rows with the same id are the n samples of one prompt.

Every estimator is a pure function (AdvantageInputs) -> (advantages (B, T), returns (B, T) or None)
and *declares* what it needs (a critic, groups of n ≥ 2); the trainer, model builder, checkpointing,
config validation and detectors ask the registry entry, never test its name.

KL placed in the reward works the same way for every estimator: the per-token reward is
r_t = −β·kl_t, plus the (estimator-adjusted) sequence score at the last token, and a critic-free
estimator's token advantage is the discounted reward-to-go Σ_{s≥t} γ^{s−t} r_s (OpenRLHF's
construction). With KL as a loss term instead (or β = 0) and γ = 1 this is the adjusted score on
every token of the response, as in the GRPO/RLOO papers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from policyshift.masked import masked_moments, masked_whiten


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


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class AdvantageInputs:
    """What an estimator may read. `beta` is the KL coefficient *in the reward* (0 when KL is a loss term)."""

    scores: torch.Tensor  # (B,) sequence scores after penalties/normalization
    kl: torch.Tensor  # (B, T) per-token KL estimate (kl.estimator)
    beta: float
    mask: torch.Tensor  # (B, T)
    group_ids: torch.Tensor  # (B,) long
    values: Optional[torch.Tensor] = None  # (B, T) V_old(s_t), estimators with a critic only
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True  # gae: whiten the advantages over the batch
    scale: str = "group"  # grpo: divide by the group's std ("group"), the batch's ("batch") or nothing ("none")
    std_eps: float = 1e-4  # grpo: A = (r − mean)/(std + eps); TRL's 1e-4
    all_sum: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # sums over processes: whole-batch statistics


@dataclass(frozen=True)
class Estimator:
    name: str
    compute: Callable[[AdvantageInputs], tuple[torch.Tensor, Optional[torch.Tensor]]]
    needs_critic: bool  # builds, trains, checkpoints and saves a critic; logs value metrics
    needs_groups: bool  # needs rollout.num_generations ≥ 2 samples of each prompt
    paper: str
    kl_placement: str  # the placement its paper / reference implementation uses (documentation: docs/guides/algorithms.md)


ESTIMATORS: dict[str, Estimator] = {}


def register(name: str, *, needs_critic: bool = False, needs_groups: bool = False, paper: str, kl_placement: str):
    def add(fn):
        ESTIMATORS[name] = Estimator(name, fn, needs_critic, needs_groups, paper, kl_placement)
        return fn

    return add


def get_estimator(name: str) -> Estimator:
    return ESTIMATORS[name]


# ---------------------------------------------------------------------------- group statistics


def group_mean_std(scores: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's group mean and (unbiased, n − 1) std of the scores, broadcast back to the rows. (B,) → (B,), (B,).
    Group ids need not be contiguous or sorted; a group of one has std 0 (no spread to measure)."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    x = scores.double()
    sums = torch.zeros(len(counts), dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    means = sums / counts
    sq = torch.zeros_like(means).index_add_(0, inverse, (x - means[inverse]) ** 2)
    std = torch.sqrt(sq / (counts - 1).clamp(min=1))
    return means[inverse].to(scores.dtype), std[inverse].to(scores.dtype)


def zero_spread(scores: torch.Tensor, group_ids: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """(G,) bool per group (in torch.unique order): all n scores equal up to `tol` — every advantage of the
    group is 0 under a group baseline, so it carries no learning signal (DAPO's dynamic sampling drops these)."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    G = int(inverse.max()) + 1 if len(inverse) else 0
    hi = torch.full((G,), -torch.inf, dtype=torch.float64, device=scores.device).scatter_reduce(0, inverse, scores.double(), "amax")
    lo = torch.full((G,), torch.inf, dtype=torch.float64, device=scores.device).scatter_reduce(0, inverse, scores.double(), "amin")
    return (hi - lo) <= tol


def group_has_signal(estimator: "Estimator", x: AdvantageInputs, tol: float = 1e-6) -> torch.Tensor:
    """(G,) bool per group (in torch.unique order): the estimator gives some real token of the group a non-zero
    advantage — what dynamic sampling keeps. Asked of the estimator itself on the group alone (no batch-wide
    statistics: whitening an all-zero group leaves it 0), so KL in the reward counts: a group with equal scores
    still learns −β·kl reward-to-go (verl's DAPO recipe filters on `seq_final_reward`, which includes it)."""
    unique, inverse = torch.unique(x.group_ids, return_inverse=True)
    out = torch.zeros(len(unique), dtype=torch.bool, device=x.group_ids.device)
    for g in range(len(unique)):
        rows = (inverse == g).nonzero().flatten()
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        part = replace(x, scores=x.scores[rows], kl=x.kl[rows], mask=x.mask[rows], group_ids=x.group_ids[rows],
                       values=pick(x.values), all_sum=None)
        advantages, _ = estimator.compute(part)
        out[g] = bool((torch.where(part.mask.bool(), advantages, 0.0).abs() > tol).any())
    return out


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = Σ_{s≥t} γ^{s−t} r_s over the real tokens (GAE with V ≡ 0 and λ = 1); padding → 0."""
    return compute_gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[0]


def _outcome_advantages(seq_advantage: torch.Tensor, x: AdvantageInputs) -> torch.Tensor:
    """A sequence-level advantage as token advantages: it is the reward of the last token, −β·kl_t the
    reward of every token, and each token's advantage its discounted reward-to-go."""
    return reward_to_go(shape_rewards(seq_advantage, x.kl, x.beta, x.mask), x.mask, x.gamma)


# ---------------------------------------------------------------------------- the estimators


@register("gae", needs_critic=True, paper="Schulman et al. 2016 (GAE); PPO-RLHF: Ziegler et al. 2019, Ouyang et al. 2022",
          kl_placement="reward")
def gae_advantages(x: AdvantageInputs):
    """PPO with a critic. r_t = −β·kl_t + s·[t = last]; δ_t = r_t + γV_{t+1} − V_t; A_t = δ_t + γλA_{t+1};
    returns = A + V (the value targets); then A whitened over the batch's real tokens (ppo.whiten_advantages)."""
    advantages, returns = compute_gae(shape_rewards(x.scores, x.kl, x.beta, x.mask), x.values, x.mask, x.gamma, x.lam)
    if x.whiten:
        advantages = whiten_advantages(advantages, x.mask, all_sum=x.all_sum)
    return advantages, returns


@register("grpo", needs_groups=True, kl_placement="loss",
          paper="Shao et al. 2024 (DeepSeekMath, GRPO); scale none = Liu et al. 2025 (Dr. GRPO)")
def grpo_advantages(x: AdvantageInputs):
    """A_i = (r_i − mean_g r) / (std_g r + eps) for the n samples of a group g (std unbiased, as TRL and verl).
    scale "batch": divide by the std of the whole batch's scores instead (TRL scale_rewards="batch");
    "none": no division — Dr. GRPO, which shows the std division up-weights prompts that are almost always
    solved or failed (a difficulty bias). Then as token advantages (module docstring)."""
    mean, std = group_mean_std(x.scores, x.group_ids)
    centred = x.scores - mean
    if x.scale == "group":
        centred = centred / (std + x.std_eps)
    elif x.scale == "batch":
        ones = torch.ones_like(x.scores)
        batch_std = masked_moments(x.scores, ones, unbiased=True, all_sum=x.all_sum)[1].sqrt()
        centred = centred / (batch_std + x.std_eps)
    return _outcome_advantages(centred, x), None


@register("rloo", needs_groups=True, kl_placement="reward",
          paper="Ahmadian et al. 2024 (Back to Basics: REINFORCE leave-one-out); Kool et al. 2019")
def rloo_advantages(x: AdvantageInputs):
    """A_i = r_i − mean_{j≠i} r_j, the mean of the *other* n − 1 samples as the baseline (unbiased: it does
    not depend on sample i) = n/(n − 1)·(r_i − mean_g r). Then as token advantages (module docstring)."""
    mean, _ = group_mean_std(x.scores, x.group_ids)
    _, inverse, counts = torch.unique(x.group_ids, return_inverse=True, return_counts=True)
    n = counts[inverse].to(x.scores.dtype)
    return _outcome_advantages(n / (n - 1).clamp(min=1) * (x.scores - mean), x), None


@register("reinforce_pp", kl_placement="reward", paper="Hu 2025 (REINFORCE++); its recommendation: k1 KL in the reward")
def reinforce_pp_advantages(x: AdvantageInputs):
    """REINFORCE++: r_t = −β·kl_t + s·[t = last] (the paper puts k1 KL in the reward, per token);
    G_t = Σ_{s≥t} γ^{s−t} r_s; A = (G − mean)/std over the batch's real tokens (global whitening stands in
    for the critic's baseline). Needs no groups: works with one sample per prompt."""
    returns = reward_to_go(shape_rewards(x.scores, x.kl, x.beta, x.mask), x.mask, x.gamma)
    return masked_whiten(returns, x.mask, all_sum=x.all_sum), None


@register("reinforce_pp_baseline", needs_groups=True, kl_placement="reward",
          paper="Hu 2025 (REINFORCE++ with baseline; verl reinforce_plus_plus_baseline)")
def reinforce_pp_baseline_advantages(x: AdvantageInputs):
    """s_i − mean_g s (the group mean as the baseline), as token rewards with −β·kl_t, reward-to-go, then
    whitened over the batch's real tokens."""
    mean, _ = group_mean_std(x.scores, x.group_ids)
    returns = _outcome_advantages(x.scores - mean, x)
    return masked_whiten(returns, x.mask, all_sum=x.all_sum), None
