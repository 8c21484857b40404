"""Masked reductions. Every mean over a (batch, time) tensor in policyshift goes through these:
averaging over padded positions is the classic bug in the anchors' logged metrics."""

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    x = torch.where(mask.bool(), x, torch.zeros_like(x))  # where, not x*mask: padding may hold inf/nan
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_moments(x: torch.Tensor, mask: torch.Tensor, unbiased: bool, all_sum=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) over the unmasked entries. `all_sum`: sums a tensor over processes, so the
    moments are the whole batch's (default: this process only)."""
    all_sum = all_sum or (lambda t: t)
    n = all_sum(mask.sum())
    mean = all_sum(masked_sum(x, mask)) / n.clamp(min=1)
    var = all_sum(masked_sum((x - mean) ** 2, mask)) / n.clamp(min=1)
    if unbiased and n > 1:
        var = var * n / (n - 1)  # Bessel's correction over the real tokens only
    return mean, var


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    return masked_moments(x, mask, unbiased)[1]


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, all_sum=None) -> torch.Tensor:
    """(x − mean)/std over the unmasked entries; padded entries come back as 0. `all_sum`: sums a
    tensor over processes, so the statistics are the whole batch's (default: this process only)."""
    mean, var = masked_moments(x, mask, True, all_sum)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))
