"""Per-step metrics from a scored rollout (pure: tensors in, floats out). Every mean over tokens is
masked; sequence quantities sum over a row's real tokens. README "Metrics" documents each key."""

from __future__ import annotations

import math

import numpy as np
import torch

from policyshift import keys as K
from policyshift.advantages import group_mean_std, shape_rewards, zero_spread
from policyshift.textstats import distinct_n, repeated_ngram_rate
from policyshift.kl import kl_k1, kl_k3
from policyshift.masked import masked_mean, masked_sum


def _stats(prefix: str, x: torch.Tensor) -> dict:
    x = x.float()
    return {
        f"{prefix}_mean": x.mean().item(),
        f"{prefix}_std": x.std().item() if x.numel() > 1 else 0.0,
        f"{prefix}_min": x.min().item(),
        f"{prefix}_max": x.max().item(),
    }


def rollout_metrics(rollout, kl_per_token: torch.Tensor | None, beta: float, beta_in_reward: float) -> dict:
    """`kl_per_token`: the configured estimator (None when the reference did not score the batch: no KL keys).
    `beta_in_reward`: β when KL is in the reward (0 as a loss term), for the shaped return. Value keys only with a critic."""
    mask = rollout.response_mask
    token_ids = [ids[: int(n)].tolist() for ids, n in zip(rollout.response_ids, rollout.lengths)]
    metrics = {K.KL_BETA: beta}
    if kl_per_token is not None:
        k1 = kl_k1(rollout.logprobs, rollout.ref_logprobs)
        k3 = kl_k3(rollout.logprobs, rollout.ref_logprobs)
        metrics.update({
            K.KL_TOKEN_MEAN: masked_mean(kl_per_token, mask).item(),
            K.KL_SEQ_MEAN: masked_sum(kl_per_token, mask, 1).mean().item(),
            K.KL_K1_TOKEN_MEAN: masked_mean(k1, mask).item(),
            K.KL_K3_TOKEN_MEAN: masked_mean(k3, mask).item(),
        })
    if rollout.exact_kl is not None:
        metrics.update({
            K.KL_EXACT_TOKEN_MEAN: masked_mean(rollout.exact_kl, mask).item(),
            K.KL_EXACT_SEQ_MEAN: masked_sum(rollout.exact_kl, mask, 1).mean().item(),
        })
    shaped = shape_rewards(rollout.scores, kl_per_token if kl_per_token is not None else torch.zeros_like(mask), beta_in_reward, mask)
    metrics.update({
        **_stats(K.SCORE, rollout.scores),
        K.SHAPED_RETURN_MEAN: masked_sum(shaped, mask, 1).mean().item(),
        K.LENGTH_MEAN: mask.sum(1).mean().item(),
        K.EOS_RATE: rollout.has_eos.float().mean().item(),
        K.REP_NGRAM_RATE: sum(repeated_ngram_rate(t, 3) for t in token_ids) / len(token_ids),
        K.DISTINCT_2: distinct_n(token_ids, 2),
    })
    if rollout.entropy is not None:  # rollout.exact_kl false: absent, not zero
        metrics[K.ENTROPY] = masked_mean(rollout.entropy, mask).item()
    if kl_per_token is not None:
        metrics[K.KL_PENALTY_MEAN] = (beta * masked_sum(kl_per_token, mask, 1)).mean().item()
    if rollout.values is not None:
        metrics[K.VALUE_MEAN] = masked_mean(rollout.values, mask).item()
    if rollout.engine_logprobs is not None:
        metrics.update(engine_mismatch_metrics(rollout.logprobs, rollout.engine_logprobs, mask))
    return metrics


def advantage_metrics(advantages: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, group_ids: torch.Tensor, num_generations: int) -> dict:
    """Advantage mean/std/max |A| over the real response tokens (after any whitening/normalization: what the loss
    weighs). With groups (n > 1): the mean over groups of the std of their n scores, and the fraction of groups
    whose scores are all equal — every advantage 0 under a group baseline, so no learning signal."""
    real = advantages[mask.bool()]
    out = {
        f"{K.ADVANTAGE}/mean": real.mean().item() if real.numel() else math.nan,
        f"{K.ADVANTAGE}/std": real.std().item() if real.numel() > 1 else 0.0,
        f"{K.ADVANTAGE}/max_abs": real.abs().max().item() if real.numel() else math.nan,
    }
    if num_generations > 1:
        _, std = group_mean_std(scores, group_ids)
        _, first = np.unique(group_ids.cpu().numpy(), return_index=True)  # one row per group
        out[K.GROUP_REWARD_STD_MEAN] = std[torch.as_tensor(first, device=std.device)].mean().item()
        out[K.GROUP_ZERO_SPREAD_FRAC] = zero_spread(scores, group_ids).float().mean().item()
    return out


def engine_mismatch_metrics(train_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    """How far the rollout engine's logprobs (vLLM) are from the training model's on the same tokens,
    over real response tokens only. engine_kl_k3: the k3 estimate of KL(π_engine‖π_train) (the tokens
    were drawn from π_engine), i.e. mean of (r − 1) − log r with r = π_train/π_engine."""
    real = mask.bool()
    diff = torch.where(real, (train_logprobs - engine_logprobs).abs(), torch.zeros_like(train_logprobs))
    return {
        K.ENGINE_LOGPROB_DIFF_MEAN: masked_mean(diff, mask).item(),
        # diff is +0 off the real tokens and abs() ≥ 0, so with no real token the max is already 0.0; the
        # numel test (shape only, no device sync) is for an empty batch, where max() would raise.
        K.ENGINE_LOGPROB_DIFF_MAX: diff.max().item() if diff.numel() else 0.0,
        K.ENGINE_KL_K3: masked_mean(kl_k3(engine_logprobs, train_logprobs), mask).item(),
    }
