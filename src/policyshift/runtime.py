"""The engine behind the update: one object that knows how DDP, FSDP2 and DeepSpeed accumulate,
all-reduce, clip and step, so that `PPOTrainer.update` reads as the algorithm alone.

  - gradients of a minibatch are accumulated over its micro-batches; under DDP/FSDP only the last
    micro-batch all-reduces (`no_sync` before it), DeepSpeed accumulates itself and steps inside its
    `backward` at the boundary named here;
  - a micro-batch's loss is a token mean over *every process's* tokens of that micro-batch: DDP averages
    gradients over processes, so each process scales its token mean by n_local·W / n_global;
  - clipping is over the sharded gradients under FSDP/DeepSpeed (and unscales under fp16);
  - per-process update statistics are merged weighted by each process's token count.
With one process every branch is the identity (plus the division by the accumulation count).
"""

from __future__ import annotations

import contextlib
import math

import torch

from policyshift.faults import fault_point


class Runtime:
    def __init__(self, accelerator, group, train_model, trained_params: list, grad_accum_steps: int):
        self.accelerator, self.group, self.train_model = accelerator, group, train_model
        self.trained_params, self.grad_accum_steps = trained_params, grad_accum_steps
        self.step = 0  # the step being trained (for the fault hooks of the kill tests)

    def accumulating(self, last: bool):
        """Around one micro-batch's forward and backward: gradients are all-reduced after the last one only."""
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.train_model)

    def backward(self, loss: torch.Tensor, mask: torch.Tensor, last: bool) -> None:
        """One micro-batch's gradients, accumulated over grad_accum_steps micro-batches. DeepSpeed
        accumulates itself: its backward divides by its gradient_accumulation_steps (set equal by
        configure_sharding) and its step clips, steps and zeroes only at the boundary named here."""
        loss = self.across_processes(loss, mask)
        if self.group.deepspeed:
            self.train_model.set_gradient_accumulation_boundary(last)
            self.train_model.backward(loss)
            self.train_model.step()
        else:
            self.accelerator.backward(loss / self.grad_accum_steps)
        fault_point("kill_in_update", self.step)

    def across_processes(self, loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The micro-batch loss whose process-average (what DDP/FSDP/DeepSpeed apply) is the token
        mean over every process's tokens: scale this process's token mean by n_local·W / n_global."""
        if self.group.world_size == 1:
            return loss
        n_local = mask.sum()
        return loss * (n_local * self.group.world_size / self.group.sum(n_local.detach()).clamp(min=1))

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        if self.group.sharded or self.accelerator.mixed_precision == "fp16":
            norm = self.accelerator.clip_grad_norm_(self.trained_params, max_norm)  # sharded grads / unscaling
            return torch.as_tensor(math.nan if norm is None else norm, dtype=torch.float32)
        return torch.nn.utils.clip_grad_norm_(self.trained_params, max_norm, foreach=True)  # DDP: grads already all-reduced

    def token_weighted(self, means: dict[str, float], tokens: float, device) -> dict[str, float]:
        """Per-process update statistics → one value per key, weighted by each process's token count."""
        if self.group.world_size == 1:
            return means
        keys = sorted(means)
        local = torch.tensor([[means[k] if math.isfinite(means[k]) else 0.0 for k in keys], [tokens * math.isfinite(means[k]) for k in keys]],
                             dtype=torch.float64, device=device)
        local[0] *= local[1]
        total = self.group.sum(local)
        return {k: (total[0, i] / total[1, i]).item() if total[1, i] > 0 else math.nan for i, k in enumerate(keys)}
