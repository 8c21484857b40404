"""The mapping from other trainers' logged scalar keys to policyshift quantities, with their meaning.

A source key gets a policyshift key (`target`) only when it measures the same thing the panels and
detectors read under that key — same unit (per token or per sequence), same estimator, same reward
(README "Metrics"). Everything else is shown in the report as logged, under `<source>/<key>` in
metrics.jsonl; keys this table does not know are kept the same way and listed as unknown.

Sources read (the file, version and line that writes each key are cited in the README table):
TRL 1.12 GRPOTrainer/RLOOTrainer (`trainer_state.json` log_history; TensorBoard tags `train/<key>`),
TRL 1.12 PPOTrainer, verl (file logger `{"step", "data"}` JSONL and TensorBoard), OpenRLHF 0.11
(TensorBoard `train/<key>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from policyshift import keys as k


@dataclass(frozen=True)
class KeyMap:
    key: str  # as the source logs it (TensorBoard's "train/" prefix stripped)
    target: str | None  # policyshift metrics key the panels/detectors read; None: shown as logged only
    meaning: str  # unit, estimator, which reward — and why it is or is not fed
    transform: Callable[[float], float] | None = None

    def value(self, x: float) -> float:
        return self.transform(x) if self.transform else x


def _one_minus(x: float) -> float:
    return 1.0 - x


_TRL_GRPO = [
    KeyMap("reward", k.SCORE_MEAN, "per sequence: batch mean of the weighted sum of the reward functions, raw (before group normalization)"),
    KeyMap("reward_std", k.SCORE_STD, "per sequence: batch std of the same summed reward (not the within-group std)"),
    KeyMap("kl", k.KL_K3_TOKEN_MEAN, "per token: k3 estimate of KL(π‖π_ref), masked mean over completion tokens; logged only when β ≠ 0. "
                                     "Not a sequence KL: the KL-budget detector does not read it"),
    KeyMap("entropy", k.ENTROPY, "per token: policy entropy (nats), masked mean over completion tokens"),
    KeyMap("completions/mean_length", k.LENGTH_MEAN, "per sequence: completion length in tokens, batch mean"),
    KeyMap("completions/clipped_ratio", k.EOS_RATE, "fraction of completions cut at max_completion_length (no EOS); fed as 1 − x = EOS rate",
           _one_minus),
    KeyMap("clip_ratio/region_mean", k.CLIP_FRAC, "per token: fraction where the clipped objective is active (ratio outside 1±ε on the "
                                                     "advantage's side), as ppo/clip_frac"),
    KeyMap("frac_reward_zero_std", k.GROUP_ZERO_SPREAD_FRAC, "fraction of GRPO groups whose rewards are all equal (no learning signal), "
                                                          "as group/zero_spread_frac"),
    KeyMap("clip_ratio/low_mean", None, "per token: fraction clipped below 1−ε (negative advantages)"),
    KeyMap("clip_ratio/high_mean", None, "per token: fraction clipped above 1+ε (positive advantages)"),
    KeyMap("clip_ratio/low_min", None, "minimum over processes of clip_ratio/low_mean"),
    KeyMap("clip_ratio/high_max", None, "maximum over processes of clip_ratio/high_mean"),
    KeyMap("completions/min_length", None, "per sequence: shortest completion (tokens)"),
    KeyMap("completions/max_length", None, "per sequence: longest completion (tokens)"),
    KeyMap("completions/mean_terminated_length", None, "per sequence: mean length of completions that ended with EOS"),
    KeyMap("completions/min_terminated_length", None, "per sequence: shortest EOS-terminated completion"),
    KeyMap("completions/max_terminated_length", None, "per sequence: longest EOS-terminated completion"),
    KeyMap("num_tokens", None, "tokens seen so far (prompts + completions)"),
    KeyMap("loss", None, "training loss (GRPO objective; β·KL included when β ≠ 0)"),
    KeyMap("grad_norm", None, "gradient norm before clipping"),
    KeyMap("learning_rate", None, "learning rate"),
    KeyMap("epoch", None, "fraction of the dataset seen"),
    KeyMap("step_time", None, "seconds per step"),
]

_TRL_PPO = [
    KeyMap("objective/scores", k.SCORE_MEAN, "per sequence: reward-model score, raw (before the KL penalty), batch mean"),
    KeyMap("objective/kl", k.KL_SEQ_MEAN, "per sequence: sum over response tokens of the configured estimator (k1 by default, or k3), "
                                         "batch mean — sequence nats, as the KL-budget detector reads"),
    KeyMap("objective/entropy", None, "per sequence: Σ −log π of the sampled tokens (a one-sample sequence entropy), not policyshift's per-token entropy"),
    KeyMap("objective/non_score_reward", None, "per sequence: −β · KL, batch mean"),
    KeyMap("objective/rlhf_reward", None, "per sequence: score − β · KL, batch mean"),
    KeyMap("policy/approxkl_avg", None, "old→new policy KL of the update (½(log ratio)²), averaged over padding too; not KL to the reference"),
    KeyMap("policy/clipfrac_avg", None, "clip fraction of the update, averaged over padding too (not ppo/clip_frac's masked mean)"),
    KeyMap("policy/entropy_avg", None, "per token: entropy averaged over padding too"),
    KeyMap("loss/policy_avg", None, "policy loss"),
    KeyMap("loss/value_avg", None, "value loss"),
    KeyMap("val/clipfrac_avg", None, "value clip fraction"),
    KeyMap("val/ratio", None, "mean probability ratio new/old"),
    KeyMap("val/ratio_var", None, "variance of the ratio (includes padding)"),
    KeyMap("val/num_eos_tokens", None, "number of EOS tokens in the batch"),
    KeyMap("eps", None, "episodes per second"),
    KeyMap("lr", None, "learning rate"),
    KeyMap("episode", None, "episodes so far"),
]

_VERL = [
    KeyMap("critic/score/mean", k.SCORE_MEAN, "per sequence: the reward function's/model's score (token_level_scores summed), raw, batch mean"),
    KeyMap("critic/score/max", k.SCORE + "_max", "per sequence: batch maximum of the score"),
    KeyMap("critic/score/min", k.SCORE + "_min", "per sequence: batch minimum of the score"),
    KeyMap("critic/rewards/mean", None, "per sequence: score after the in-reward KL penalty (when on), batch mean"),
    KeyMap("critic/advantages/mean", None, "advantages, masked mean"),
    KeyMap("response_length/mean", k.LENGTH_MEAN, "per sequence: response length in tokens, batch mean"),
    KeyMap("response_length/clip_ratio", k.EOS_RATE, "fraction of responses that reached max_response_length; fed as 1 − x = EOS rate",
           _one_minus),
    KeyMap("actor/entropy", k.ENTROPY, "per token: policy entropy aggregated by loss_agg_mode (token-mean by default)"),
    KeyMap("actor/pg_clipfrac", k.CLIP_FRAC, "per token: masked mean of (clipped loss > unclipped loss), as ppo/clip_frac"),
    KeyMap("actor/ppo_kl", None, "old→new policy k1 of the update (−log ratio, masked mean): NOT KL to the reference"),
    KeyMap("actor/kl_loss", None, "per token: KL-to-reference loss with actor.kl_loss_type (low_var_kl = k3 by default), "
                                  "aggregated by loss_agg_mode; estimator set in the run's config, so shown as logged"),
    KeyMap("actor/reward_kl_penalty", None, "mean over sequences of the per-token KL penalty in the reward (kl_penalty estimator, k1 by default)"),
    KeyMap("actor/reward_kl_penalty_coeff", None, "β of the in-reward KL penalty"),
    KeyMap("actor/pg_loss", None, "policy-gradient loss"),
    KeyMap("actor/grad_norm", None, "actor gradient norm"),
    KeyMap("actor/lr", None, "actor learning rate"),
    KeyMap("critic/vf_explained_var", k.VALUE_EXPLAINED_VARIANCE, "1 − Var(returns − values)/Var(returns) over response tokens, "
                                                                   "as value/explained_variance"),
    KeyMap("response_length/max", None, "per sequence: longest response (tokens)"),
    KeyMap("response_length/min", None, "per sequence: shortest response (tokens)"),
]

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

# metrics.jsonl prefixes of imported keys kept as logged (`<source>/<key>`): not policyshift quantities
SOURCES = ("trl", "verl", "openrlhf", "tensorboard")
RAW_PREFIXES = tuple(f"{source}/" for source in SOURCES)

TABLES: dict[str, list[KeyMap]] = {"trl": _TRL_GRPO + _TRL_PPO, "verl": _VERL, "openrlhf": _OPENRLHF}
BY_KEY: dict[str, dict[str, KeyMap]] = {source: {m.key: m for m in table} for source, table in TABLES.items()}


def lookup(source: str, key: str) -> KeyMap | None:
    """The mapping of one key; TRL's per-reward-function keys `rewards/<name>/mean|std` by pattern."""
    found = BY_KEY.get(source, {}).get(key)
    if found is None and source == "trl" and key.startswith("rewards/") and key.endswith(("/mean", "/std")):
        return KeyMap(key, None, "per sequence: one reward function's score (unweighted), batch " + key.rsplit("/", 1)[1])
    return found
