"""`python -m accelerate.commands.launch --config_file cpu_2proc.yaml tests/sharded_launch.py MODE train ...`:
the policyshift CLI with accelerate switched to FSDP2 or DeepSpeed ZeRO-2/3 on CPU processes.

accelerate runs FSDP and DeepSpeed only when the processes own GPUs. Here the Accelerator is built
as for 2 CPU processes (gloo) and its state is then switched to FSDP2 (`fully_shard`, blocks wrapped
by the models' `_no_split_modules`) or DeepSpeed (`deepspeed.initialize`): from `prepare` on, the
trainer runs accelerate's and the engines' own code paths, as under a GPU config file."""

import functools
import sys

from accelerate import DeepSpeedPlugin, FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import DistributedType

import policyshift.trainer as trainer
from policyshift.cli import entry

build = trainer.make_accelerator


def sharded_accelerator(mode: str, device: str, mixed_precision: str, *args):
    """mode: fsdp2 | zero2 | zero3; `args`: make_accelerator's others (the collective timeout)."""
    accelerator = build(device, mixed_precision, *args)
    state = accelerator.state
    if mode == "fsdp2":
        state.fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
                                                           state_dict_type="FULL_STATE_DICT")
        if mixed_precision != "no":  # accelerate does this when it builds an FSDP state: bf16 compute, fp32 sharded weights
            state.fsdp_plugin.set_mixed_precision(mixed_precision)
        kind = DistributedType.FSDP
    else:
        # what a user's config would say; configure_sharding must override the accumulation steps
        plugin = DeepSpeedPlugin(zero_stage=int(mode[-1]), gradient_accumulation_steps=1, gradient_clipping=1.0, zero3_init_flag=False)
        plugin.set_mixed_precision(mixed_precision)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins = plugin
        kind = DistributedType.DEEPSPEED
        accelerator.deepspeed_engine_wrapped = None  # set by Accelerator.__init__ only when it saw DeepSpeed
    # both shared states: every AcceleratorState() copies PartialState's fields over its own
    state.distributed_type = PartialState().distributed_type = kind
    return accelerator


if __name__ == "__main__":
    trainer.make_accelerator = functools.partial(sharded_accelerator, sys.argv.pop(1))
    sys.exit(entry())
