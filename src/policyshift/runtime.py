"""The engine behind the update: one object that knows how DDP, FSDP2 and DeepSpeed accumulate,
all-reduce, clip and step, so that `PPOTrainer.update` reads as the algorithm alone.

  - gradients of a minibatch are accumulated over its micro-batches; under DDP/FSDP only the last
    micro-batch all-reduces (`no_sync` before it), DeepSpeed accumulates itself and steps inside its
    `backward` at the boundary named here;
  - a micro-batch's loss is its share of the minibatch loss over *every process's* tokens (the aggregation
    divides by minibatch sizes summed over processes); DDP averages gradients over processes, so it is × W;
  - clipping is over the sharded gradients under FSDP/DeepSpeed (and unscales under fp16);
  - the runtime owns the skip decision (`finish_update`): a non-finite gradient on any process never reaches the
    weights, on every engine — under DeepSpeed it is decided before `engine.step()`;
  - per-process update statistics are merged weighted by each process's token count.
With one process and no DeepSpeed every branch is the identity.
"""

from __future__ import annotations

import contextlib
import math

import torch

from policyshift.faults import fault_active, fault_point


class Runtime:
    def __init__(self, accelerator, group, train_model, trained_params: list, grad_accum_steps: int):
        self.accelerator, self.group, self.train_model = accelerator, group, train_model
        self.trained_params, self.grad_accum_steps = trained_params, grad_accum_steps
        self.step = 0  # the step being trained (for the fault hooks of the kill tests)
        if group.deepspeed and hasattr(getattr(train_model, "optimizer", None), "check_grad_overflow"):
            # ZeRO-1/2 in bf16 only discards a non-finite step when told to check (stage 3, fp32 and fp16 always do):
            # with it on, DeepSpeed's own clean-up clears the gradients when finish_update has decided to skip
            train_model.optimizer.check_grad_overflow = True

    def accumulating(self, last: bool):
        """Around one micro-batch's forward and backward: gradients are all-reduced after the last one only."""
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.train_model)

    def backward(self, share: torch.Tensor, last: bool) -> None:
        """Backward of this micro-batch's `share` of the minibatch loss (the shares of every micro-batch and
        process add up to it: losses.aggregate_loss). DeepSpeed accumulates itself: its step clips, steps and
        zeroes only at the boundary named here."""
        loss = self.to_engine(share)
        if fault_active("nonfinite_grad", self.step):  # the guard's test: a NaN gradient on every process
            loss = loss * float("nan")
        if self.group.deepspeed:
            self.train_model.set_gradient_accumulation_boundary(last)
            self.train_model.backward(loss)
            if not last:
                self.train_model.step()  # between boundaries a no-op that counts DeepSpeed's micro-steps
        else:
            self.accelerator.backward(loss)
        fault_point("kill_in_update", self.step)

    def finish_update(self, max_norm: float, optimizer) -> tuple[torch.Tensor, bool]:
        """After a minibatch's last backward: decide whether its gradient may reach the weights, and step if so.
        → (gradient norm before clipping, stepped). Non-finite on any process → no step on any process.

        DDP/FSDP/one process: clip, then step only if the norm is finite (else zero the gradients).
        DeepSpeed: the decision is taken *before* engine.step(), from the reduced gradient partitions every process
        holds (the ZeRO optimizer's has_overflow, an all-reduce over the processes); engine.step() then clips and
        steps — or, for a non-finite gradient, takes its overflow path, which clears the gradients and leaves the
        weights and the optimizer state alone. That DeepSpeed did what was decided is checked (was_step_applied)."""
        if not self.group.deepspeed:
            norm = self.clip_gradients(max_norm)
            finite = bool(torch.isfinite(norm))
            if finite:
                optimizer.step()
            else:
                optimizer.zero_grad(set_to_none=True)
            return norm, finite
        engine = self.train_model
        zero = engine.optimizer
        finite = not bool(zero.has_overflow(partition_gradients=getattr(zero, "partition_gradients", True)))
        engine.step()
        if engine.was_step_applied() != finite:
            raise RuntimeError(f"DeepSpeed {'stepped on a non-finite' if finite is False else 'skipped a finite'} gradient "
                               f"(the runtime decided {'to step' if finite else 'to skip'})")
        norm = engine.get_global_grad_norm()
        return torch.as_tensor(math.nan if norm is None else float(norm), dtype=torch.float32), finite

    def to_engine(self, share: torch.Tensor) -> torch.Tensor:
        """What the engine must back-propagate for the summed gradient to be the minibatch loss's: DDP/FSDP/
        DeepSpeed *average* gradients over the W processes (× W), and DeepSpeed's backward divides by its
        gradient_accumulation_steps (× that; set equal to ppo.grad_accum_steps by configure_sharding)."""
        factor = self.group.world_size * (self.grad_accum_steps if self.group.deepspeed else 1)
        return share if factor == 1 else share * factor

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
