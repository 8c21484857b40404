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

import contextlib
import os
import socket
import time
from dataclasses import fields, replace

import torch


def make_accelerator(device: str, mixed_precision: str, collective_timeout_s: float = 600.0):
    """The Accelerator of a run. `accelerate launch` decides the processes (and, with
    --mixed_precision or its config file, the precision unless the config asks for one).
    `collective_timeout_s`: the process group's timeout (train.collective_timeout_s)."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    from policyshift.checks import check_device

    check_device(device, "train.device")  # one line, before accelerate or torch fail on it
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    wanted = None if mixed_precision == "no" else mixed_precision
    if AcceleratorState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One process that builds several trainers (tests, notebooks): accelerate keeps one global state, refuses a
        # second, different precision, and hands a trainer that asks for none (`no` → None, so `accelerate launch
        # --mixed_precision` can set it) the precision of the one before: an fp32 run after a bf16 one ran under bf16
        # autocast. Start from a clean state whenever the precision this run gets would not be the one it asked for.
        target = wanted or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if str(AcceleratorState().mixed_precision) != target:
            AcceleratorState._reset_state(reset_partial_state=True)
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout_s))
    return Accelerator(cpu=device == "cpu" or not has_accelerator, mixed_precision=wanted, kwargs_handlers=[timeout])


class ProcessGroup:
    """The trainer's view of the processes. `rank`, `world_size`, `is_main`."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process
        from accelerate.utils import DistributedType

        kind = accelerator.distributed_type
        # FSDP / DeepSpeed hold a slice of the gradients (and optimizer state) per process, DDP a full copy
        self.sharded = kind in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        self.deepspeed = kind == DistributedType.DEEPSPEED  # steps inside backward (trainer.backward)
        # FSDP and ZeRO-3 also slice the weights: every forward on them is a collective
        self.weights_sharded = kind == DistributedType.FSDP or (self.deepspeed and accelerator.state.deepspeed_plugin.zero_stage == 3)
        # (pid, host) of every rank: who died, when a collective fails (lost_peer_message)
        self.members = self.gather_objects([(os.getpid(), socket.gethostname())]) if self.world_size > 1 else [(os.getpid(), socket.gethostname())]

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


def local_numel(param: torch.Tensor) -> int:
    """Elements of a parameter this process stores: its FSDP2 shard (DTensor), its ZeRO-3 partition, or all."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor.numel()
    return param.to_local().numel() if hasattr(param, "to_local") else param.numel()


def global_numel(param: torch.Tensor) -> int:
    return param.ds_numel if hasattr(param, "ds_numel") else param.numel()


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


def configure_sharding(accelerator, cfg) -> None:
    """Checks and settings accelerate's sharded engines need before `prepare` (a one-line ConfigError
    for what policyshift cannot run)."""
    from policyshift.config import ConfigError

    state = accelerator.state
    if accelerator.distributed_type.name == "FSDP" and not accelerator.is_fsdp2:
        raise ConfigError("FSDP1 is not supported: set fsdp_version: 2 in the accelerate config (see examples/accelerate/fsdp.yaml)")
    sharded = accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")
    if sharded and cfg.model.lora.r > 0:
        raise ConfigError("model.lora under FSDP/DeepSpeed is not supported: the base is frozen (no gradients or optimizer "
                          "state to shard); run LoRA with DDP (examples/accelerate/ddp.yaml)")
    if accelerator.distributed_type.name != "DEEPSPEED":
        return
    # DeepSpeed steps its optimizer inside `backward` once every `gradient_accumulation_steps` calls and
    # divides the loss by that number itself, so its count must be policyshift's micro-batches per
    # minibatch; it needs the micro-batch size (no dataloader passes through `prepare` to infer it).
    p, world = cfg.ppo, accelerator.num_processes
    micro = max(1, cfg.rollout.batch_size // world // p.num_minibatches // p.grad_accum_steps)
    ds = state.deepspeed_plugin.deepspeed_config
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=p.grad_accum_steps,
              train_batch_size=micro * p.grad_accum_steps * world, gradient_clipping=p.max_grad_norm or 0.0)
    # checkpoints and final/ hold whole weights (save_pretrained form): ZeRO-3 must gather them on save
    ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
    accelerator.gradient_accumulation_steps = p.grad_accum_steps


@contextlib.contextmanager
def whole_model_loading(accelerator):
    """Under ZeRO-3, transformers partitions every model it loads (deepspeed.zero.Init) — also the
    reference and reward models, which no DeepSpeed engine would then gather, and a reference deep-copied
    from a partitioned policy. Load whole models instead: `prepare` partitions the policy and critic;
    the frozen reference and reward model stay whole on each process."""
    plugin = accelerator.state.deepspeed_plugin if accelerator.distributed_type.name == "DEEPSPEED" else None
    if plugin is None or plugin.zero_stage != 3:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()  # as accelerate left it


@contextlib.contextmanager
def whole_weights(accelerator, train_model, models, gather_all: bool = True):
    """Weights every process can run the policy and critic submodules on, for the duration: sampling,
    the rollout's forward passes and the probes call them directly, token by token, which sharded
    engines do not expect. DDP / ZeRO-1/2 / one process: nothing to do.

    gather_all (rollout.gather_weights): FSDP2 unshards every unit once (instead of an all-gather per
    layer per generated token) and keeps them unsharded after each forward until the end; ZeRO-3 gathers
    every parameter and takes DeepSpeed's per-module fetch/release hooks off meanwhile (they would
    re-partition mid-generation). Otherwise, for models that fit no single device, FSDP2 unshards only
    the root unit (embeddings, final norm, heads: never reached through a block's hooks when the
    submodules are called directly) and each block gathers itself per forward; ZeRO-3's hooks do the same."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        # The root must be initialized as the root before a submodule runs on its own, or FSDP
        # takes that submodule for the root (torch has no public call for this first step).
        fully_shard.state(train_model)._lazy_init()
        units = [m for m in train_model.modules() if isinstance(m, FSDPModule)] if gather_all else [train_model]
        inner = [m for m in units if m is not train_model]
        for unit in inner:
            unit.set_reshard_after_forward(False, recurse=False)
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
            for unit in inner:
                unit.set_reshard_after_forward(accelerator.state.fsdp_plugin.reshard_after_forward, recurse=False)
    elif accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3 and gather_all:
        import deepspeed

        offload = train_model.optimizer.parameter_offload
        with deepspeed.zero.GatheredParameters(list(models.parameters())):
            offload._remove_module_hooks()
            try:
                yield
            finally:
                offload.setup_zero_stage3_hooks()
    else:
        yield


def gather_state(accelerator, train_model, optimizer, engine_dir) -> dict:
    """Collective (every process calls it): what a checkpoint needs from a sharded engine, whole, on
    the main process — {"model": weights of the whole PolicyAndCritic, "optimizer": FSDP2's optimizer
    state keyed by parameter name}. DeepSpeed keeps its optimizer state in its own per-process files,
    written here to `engine_dir` (saved as the checkpoint's `engine/`)."""
    model = accelerator.get_state_dict(train_model)  # FSDP2: full + CPU on the main process; ZeRO-3: 16-bit consolidated
    if accelerator.distributed_type.name == "DEEPSPEED":
        train_model.save_checkpoint(str(engine_dir), tag="state")
        return {"model": model, "optimizer": None, "engine_dir": engine_dir}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"model": model, "optimizer": get_optimizer_state_dict(train_model, optimizer.optimizer, options=options)}


def load_state(accelerator, train_model, optimizer, ckpt, optimizer_state) -> None:
    """Collective: the counterpart of `gather_state` (every process reads the checkpoint's files)."""
    if accelerator.distributed_type.name == "DEEPSPEED":  # the engine's files hold weights and optimizer state
        train_model.load_checkpoint(str(ckpt / "engine"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=False)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    from policyshift.checkpoint import saved_weights

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(train_model, saved_weights(ckpt, train_model.critic is not None, train_model.value_head is not None), options=options)
    set_optimizer_state_dict(train_model, optimizer.optimizer, optimizer_state, options=options)


# what a collective raises when another process is gone (gloo: its socket closed; NCCL: an abort) or silent too long
_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out", "timeout", "nccl", "gloo",
              "socket closed", "connection refused", "end of file")


def _is_dead(pid: int) -> bool:
    """A process of this host that has exited (gone, or a zombie its launcher has not reaped yet)."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return state in ("Z", "X")


def lost_peer_message(group: ProcessGroup, exc: BaseException, timeout_s: float, wait_s: float = 3.0) -> str | None:
    """One line for a collective that failed because another process of the run died or went silent: which rank
    (pid, host), what this process does; None when `exc` is not such a failure (it is then a bug or a user
    error, reported as such). The dead process is looked for for up to `wait_s` (its socket may close a moment
    before the kernel marks it exited)."""
    if group.world_size == 1:
        return None
    text = str(exc).lower()
    import torch.distributed as dist

    if not (isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(k in text for k in _PEER_LOST))):
        return None
    me, host = group.rank, socket.gethostname()
    deadline = time.monotonic() + wait_s
    while True:
        dead = [r for r, (pid, h) in enumerate(group.members) if r != me and h == host and _is_dead(pid)]
        if dead or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if dead:
        who = ", ".join(f"rank {r} (pid {group.members[r][0]})" for r in dead)
        return f"{who} of {group.world_size} stopped (killed, crashed, or its own error line above); rank {me} stops too"
    if "timed out" in text or "timeout" in text:
        return (f"rank {me}: a collective waited train.collective_timeout_s = {timeout_s:g} s for the other processes; one of them "
                "stopped responding (hung, or on another host and gone)")
    return f"rank {me}: the connection to another process of the run was lost ({str(exc).strip().splitlines()[0][:160]})"
