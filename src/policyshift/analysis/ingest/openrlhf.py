"""OpenRLHF 0.11: TensorBoard `train/<key>` scalars, the HF model at --save_path and --save_hf_ckpt's
CKPT_PATH/global_step{N}_hf/, and DeepSpeed shards (--ckpt_path) that are not an HF model.
"""

from __future__ import annotations

import re
from pathlib import Path

from policyshift.analysis.ingest.hf import is_model_dir
from policyshift.analysis.ingest.base import CheckpointLayout, Importer, KeyMap, ShardLayout
from policyshift import keys as k

# OpenRLHF --ckpt_path, HF Trainer + DeepSpeed
DEEPSPEED_SHARD = re.compile(r"^(mp_rank_\d+_model_states|zero_pp_rank_\d+_mp_rank_\d+_(optim|model)_states)\.pt$")

_OPENRLHF = [
    KeyMap("reward", k.SCORE_MEAN, "per sequence: the reward model's/function's reward, raw (before the KL penalty), batch mean"),
    KeyMap("response_length", k.LENGTH_MEAN, "per sequence: response length in tokens, batch mean"),
    KeyMap("kl", None, "mean over sequences of each sequence's per-token-mean KL (estimator k1 by default): neither a pooled token mean nor a "
                       "sequence sum, so no detector reads it"),
    KeyMap("return", None, "per sequence: reward with the KL penalty, batch mean"),
    KeyMap("policy_loss", None, "policy loss"),
    KeyMap("ppo_kl", None, "old→new policy KL of the update: NOT KL to the reference"),
    KeyMap("ppo_clip_ratio", None, "clip fraction of the update"),
    KeyMap("entropy_loss", None, "entropy term of the loss"),
    KeyMap("group_reward_std", None, "within-group reward std (group_norm / GRPO)"),
    KeyMap("critic_loss", None, "value loss"),
    KeyMap("values", None, "critic values"),
    KeyMap("actor_lr", None, "actor learning rate"),
    KeyMap("critic_lr", None, "critic learning rate"),
]



def _is_model(directory: Path) -> bool:
    return is_model_dir(directory)


IMPORTER = Importer(
    name="openrlhf",
    title="OpenRLHF",
    order=30,
    keys=tuple(_OPENRLHF),
    tensorboard_tags=lambda keys: bool(keys & {"policy_loss", "ppo_clip_ratio", "response_length", "return", "group_reward_std"}),
    tensorboard_strip="train/",
    checkpoints=(CheckpointLayout("OpenRLHF HF checkpoint", lambda p: p.name.startswith("global_step") and p.name.endswith("_hf"),
                                  "global_stepN_hf/ (OpenRLHF)"),),
    step_prefixes=("global_step", "global-step"),
    step_suffixes=("_hf",),
    shards=(ShardLayout(
        pattern=lambda name: bool(DEEPSPEED_SHARD.match(name)), merged=_is_model,
        note=lambda d: (f"{d}: DeepSpeed shards, not an HF model; save HF weights (OpenRLHF --save_hf_ckpt) "
                        f"or convert with DeepSpeed's zero_to_fp32.py first")),),
)
