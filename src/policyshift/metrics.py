"""Per-step metrics from a scored rollout (pure: tensors in, floats out). Every mean over tokens is
masked; sequence quantities sum over a row's real tokens. README "Metrics" documents each key."""

from __future__ import annotations

import torch

from policyshift.analysis.textstats import distinct_n, repeated_ngram_rate
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


def rollout_metrics(rollout, kl_per_token: torch.Tensor, beta: float, shaped_rewards: torch.Tensor) -> dict:
    mask = rollout.response_mask
    k1 = kl_k1(rollout.logprobs, rollout.ref_logprobs)
    k3 = kl_k3(rollout.logprobs, rollout.ref_logprobs)
    token_ids = [ids[: int(n)].tolist() for ids, n in zip(rollout.response_ids, rollout.lengths)]
    metrics = {
        "kl/beta": beta,
        "kl/token_mean": masked_mean(kl_per_token, mask).item(),
        "kl/seq_mean": masked_sum(kl_per_token, mask, 1).mean().item(),
        "kl/k1_token_mean": masked_mean(k1, mask).item(),
        "kl/k3_token_mean": masked_mean(k3, mask).item(),
        **_stats("reward/score", rollout.scores),
        "reward/shaped_return_mean": masked_sum(shaped_rewards, mask, 1).mean().item(),
        "reward/kl_penalty_mean": (beta * masked_sum(kl_per_token, mask, 1)).mean().item(),
        "response/length_mean": mask.sum(1).mean().item(),
        "response/eos_rate": rollout.has_eos.float().mean().item(),
        "response/rep_ngram_rate": sum(repeated_ngram_rate(t, 3) for t in token_ids) / len(token_ids),
        "response/distinct_2": distinct_n(token_ids, 2),
        "value/mean": masked_mean(rollout.values, mask).item(),
    }
    if rollout.exact_kl is not None:  # rollout.exact_kl false: absent, not zero
        metrics["kl/exact_token_mean"] = masked_mean(rollout.exact_kl, mask).item()
        metrics["kl/exact_seq_mean"] = masked_sum(rollout.exact_kl, mask, 1).mean().item()
    if rollout.entropy is not None:
        metrics["policy/entropy"] = masked_mean(rollout.entropy, mask).item()
    if rollout.engine_logprobs is not None:
        metrics.update(engine_mismatch_metrics(rollout.logprobs, rollout.engine_logprobs, mask))
    return metrics


def engine_mismatch_metrics(train_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    """How far the rollout engine's logprobs (vLLM) are from the training model's on the same tokens,
    over real response tokens only. engine_kl_k3: the k3 estimate of KL(π_engine‖π_train) (the tokens
    were drawn from π_engine), i.e. mean of (r − 1) − log r with r = π_train/π_engine."""
    real = mask.bool()
    diff = torch.where(real, (train_logprobs - engine_logprobs).abs(), torch.zeros_like(train_logprobs))
    return {
        "rollout/logprob_diff_abs_mean": masked_mean(diff, mask).item(),
        # diff is +0 off the real tokens and abs() ≥ 0, so with no real token the max is already 0.0; the
        # numel test (shape only, no device sync) is for an empty batch, where max() would raise.
        "rollout/logprob_diff_max": diff.max().item() if diff.numel() else 0.0,
        "rollout/engine_kl_k3": masked_mean(kl_k3(engine_logprobs, train_logprobs), mask).item(),
    }
