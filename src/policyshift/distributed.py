"""Many processes, one PPO step: what the trainer needs from the process group, on top of
`accelerate` (which launches the processes and wraps the models for DDP, FSDP or DeepSpeed).

Each process samples and scores its own slice of the batch. Everything that must be a property of
the whole batch is computed over all processes, never averaged per process:
  - reward normalization, advantage whitening and the KL controller see every episode;
  - logged metrics are computed on the gathered batch (a masked mean weighted by every process's
    token count, not a mean of per-process means);
  - the loss of a micro-batch is a token mean over the micro-batch of *all* processes (DDP averages
    gradients over processes, so each process scales its token mean by n_local·W / n_global).
With one process every function here is the identity.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace

import torch


def make_accelerator(device: str, mixed_precision: str):
    """The Accelerator of a run. `accelerate launch` decides the processes (and, with
    --mixed_precision or its config file, the precision unless the config asks for one)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    wanted = None if mixed_precision == "no" else mixed_precision
    state = AcceleratorState._shared_state
    if state and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One process that builds several trainers (tests, notebooks): accelerate keeps one global
        # state and refuses a second, different precision. Start from a clean state instead.
        current = str(state.get("mixed_precision", "no"))
        if wanted is not None and current != wanted:
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device == "cpu" or not has_accelerator, mixed_precision=wanted)


class ProcessGroup:
    """The trainer's view of the processes. `rank`, `world_size`, `is_main`."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process
        from accelerate.utils import DistributedType

        # FSDP / DeepSpeed hold a slice of the weights (and gradients) per process, DDP a full copy
        self.sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)

    def local_slice(self, items: list) -> list:
        """This process's contiguous share of a batch that every process drew identically."""
        n = len(items) // self.world_size
        return items[self.rank * n : (self.rank + 1) * n]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x
        return self.accelerator.reduce(x.clone(), reduction="sum")

    def any(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.accelerator.device)).item() > 0)

    def gather_rows(self, x: torch.Tensor, pad_first: bool = False) -> torch.Tensor:
        """Concatenate every process's rows (dim 0, rank order); dim 1 is padded with zeros to the
        longest (at the start for left-padded prompts) — the masks gathered alongside say what is real."""
        if self.world_size == 1:
            return x
        if x.dim() > 1:
            x = self.accelerator.pad_across_processes(x.contiguous(), dim=1, pad_index=0, pad_first=pad_first)
        if x.dtype == torch.bool:  # gloo cannot all-gather bool tensors
            return self.accelerator.gather(x.to(torch.uint8)).bool()
        return self.accelerator.gather(x.contiguous())

    def gather_objects(self, items: list) -> list:
        if self.world_size == 1:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()


def gather_rollout(rollout, group: ProcessGroup):
    """One Rollout holding every process's episodes (for metrics and distributions)."""
    if group.world_size == 1:
        return rollout
    out = {}
    for f in fields(rollout):
        value = getattr(rollout, f.name)
        if isinstance(value, torch.Tensor):
            out[f.name] = group.gather_rows(value, pad_first=f.name.startswith("query"))
        elif isinstance(value, list):
            out[f.name] = group.gather_objects(value)
    return replace(rollout, **out)
