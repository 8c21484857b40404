"""OpenRLHF 0.11 (dotted flags since 0.10.2): TensorBoard `train/<key>` and `rollout/<key>` scalars, the HF model at
--ckpt.output_dir and --ckpt.save_hf's CKPT_PATH/global_step{N}_hf/ and best_global_step{N}_hf/ (the best eval
metric's checkpoint), and DeepSpeed shards (--ckpt.path) that are not an HF model.

Keys checked against OpenRLHF 0.11.2 (openrlhf/models/loss.py L195-259: ppo_clip_ratio, ppo_kl, vllm_kl;
trainer/ppo_utils/experience_maker.py L215-227 kl at rollout, L250-266 group_reward_std, L285-321 reward with the
length penalties and return; trainer/ray/ppo_actor.py L304-374 kl under --algo.kl.use_loss, entropy_loss;
trainer/ppo_trainer.py L355-372 best_global_step, L414-429 rollout/*). Its logs carry no saved config, so a key
whose meaning depends on a flag (the length penalties, --algo.kl.use_loss, token-level loss) is shown, not fed.
"""

from __future__ import annotations

import re
from pathlib import Path

from policyshift.analysis.ingest.hf import is_model_dir
from policyshift.analysis.ingest.base import CheckpointLayout, Importer, KeyMap, ShardLayout, one_minus
from policyshift import keys as k

# OpenRLHF --ckpt.path, HF Trainer + DeepSpeed
DEEPSPEED_SHARD = re.compile(r"^(mp_rank_\d+_model_states|zero_pp_rank_\d+_mp_rank_\d+_(optim|model)_states)\.pt$")

_PENALTIES = ("includes the DAPO overlong / stop-properly length penalties when they are on (--reward.overlong_buffer_len, "
              "--reward.stop_properly_penalty_coef), which the logs do not say: not fed")
_OPENRLHF = [
    KeyMap("reward", None, "per sequence: the reward model's/function's reward, batch mean; " + _PENALTIES),
    KeyMap("rollout/reward_mean", None, "per sequence: reward over the whole rollout batch, mean; " + _PENALTIES),
    KeyMap("rollout/reward_std", None, "per sequence: reward over the whole rollout batch, std; " + _PENALTIES),
    KeyMap("group_reward_std", None, "per sample: the unbiased std of its group's rewards, batch mean (= mean over groups); " + _PENALTIES),
    KeyMap("response_length", k.LENGTH_MEAN, "per sequence: response length in tokens, batch mean"),
    KeyMap("rollout/response_length_mean", k.LENGTH_MEAN, "per sequence: response length in tokens over the whole rollout batch, mean"),
    KeyMap("truncated", k.EOS_RATE, "per sequence: 1 when the response stopped at the length limit, batch mean; fed as 1 − x = EOS rate",
           one_minus),
    KeyMap("rollout/truncated_rate", k.EOS_RATE, "share of the rollout batch's responses stopped at the length limit; fed as 1 − x = EOS rate",
           one_minus),
    KeyMap("ppo_clip_ratio", k.CLIP_FRAC, "per token: share where the clipped surrogate is the smaller (clipped objective active), pooled "
                                          "masked mean per micro-batch, as ppo/clip_frac"),
    KeyMap("kl", None, "KL to the reference: without --algo.kl.use_loss the mean over sequences of each one's per-token mean at rollout "
                       "time; with it, a pooled token mean under the current policy (estimator --algo.kl.estimator). Which one is not "
                       "in the logs, and neither is a pooled token mean of a known estimator: not fed"),
    KeyMap("return", None, "per sequence: baseline-subtracted reward minus the KL penalty, summed over tokens, batch mean"),
    KeyMap("policy_loss", None, "policy loss"),
    KeyMap("ppo_kl", None, "old→new policy k1 of the update (pooled token mean of log π_old − log π_new): NOT KL to the reference"),
    KeyMap("vllm_kl", None, "per token: k1 estimate of KL(π_vLLM‖π_train), pooled mean of log π_vLLM − log π_old (with IS correction on): "
                            "the training–inference mismatch, not in a policyshift unit (k1 can be < 0)"),
    KeyMap("entropy_loss", None, "entropy of the policy on the rollout tokens, aggregated per token or per sequence (--actor.loss_agg_mode, "
                                 "not in the logs): not fed"),
    KeyMap("logprobs_diff", None, "per sequence: mean log π_old − log π_ref at rollout time"),
    KeyMap("critic_loss", None, "value loss"),
    KeyMap("values", None, "critic values"),
    KeyMap("actor_lr", None, "actor learning rate"),
    KeyMap("critic_lr", None, "critic learning rate"),
    KeyMap("rollout/num_samples", None, "responses in the rollout batch"),
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
    checkpoints=(CheckpointLayout("OpenRLHF HF checkpoint", lambda p: p.name.startswith(("global_step", "best_global_step")) and p.name.endswith("_hf"),
                                  "global_stepN_hf/ (OpenRLHF)"),),
    step_prefixes=("global_step", "global-step", "best_global_step"),
    step_suffixes=("_hf",),
    shards=(ShardLayout(
        pattern=lambda name: bool(DEEPSPEED_SHARD.match(name)), merged=_is_model,
        note=lambda d: (f"{d}: DeepSpeed shards, not an HF model; save HF weights (OpenRLHF --ckpt.save_hf) "
                        f"or convert with DeepSpeed's zero_to_fp32.py first")),),
)
