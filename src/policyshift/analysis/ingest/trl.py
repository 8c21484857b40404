"""TRL (and the HF Trainer it builds on): trainer_state.json log_history, GRPO's logged completions
(completions/completions_{step:05d}.parquet), TensorBoard `train/<key>` tags, checkpoint-N/ directories.

TRL's trainers log the same key names with different meanings, so the key table depends on the run's *mode*,
read from what the run saved (`run_mode`): the trainer from the model card TRL writes into output_dir
(README.md, `tags: [..., grpo|rloo|dpo|sft]`; trl/trainer/base_trainer.py create_model_card) or from
checkpoint-N/training_args.bin (the pickled GRPOConfig/RLOOConfig/..., read without running any of its code),
and from the saved args the settings that change a key's meaning: scale_rewards, multi_objective_aggregation,
importance_sampling_level, loss_type, beta, reward_weights, num_generations; logging_steps from
trainer_state.json (values averaged over the logging window). A key whose meaning the saved files cannot
establish is shown as logged, never fed. Checked against TRL 1.16.0 (trl/trainer/grpo_trainer.py
L2823-2894 rewards and sampling keys, L3262-3283 kl/entropy/clip ratios, L3302-3317 window average and eval_
prefix, L3337-3357 completions parquet; rloo_trainer.py L1669-1728 kl (k1) and frac_reward_zero_std after the
KL penalty, L1824-1860 sequence-level ratio and clip ratios; dpo_trainer.py L1537-1601 teacher-forced entropy
and implicit rewards); TRL 1.12 PPOTrainer for objective/*.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from policyshift import keys as k
from policyshift.analysis.ingest.base import (CheckpointLayout, model_card_metadata, Importer, Imported, KeyMap, LogFormat, LogImportError, as_text,
                                              number_rows, one_minus)

STATE_FILE = "trainer_state.json"
ARGS_FILE = "training_args.bin"
CARD_FILE = "README.md"
COMPLETIONS = re.compile(r"^completions_(\d+)\.parquet$")
COMPLETION_COLUMNS = ("step", "prompt", "completion")
EVAL_PREFIX = "eval_"  # HF Trainer: evaluation metrics (trainer.evaluate) carry it
TRAINERS = {"grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO", "sft": "SFT", "ppo": "PPO", "reward-trainer": "Reward", "kto": "KTO"}
CONFIG_CLASSES = {"GRPOConfig": "GRPO", "RLOOConfig": "RLOO", "DPOConfig": "DPO", "SFTConfig": "SFT", "PPOConfig": "PPO",
                  "RewardConfig": "Reward", "KTOConfig": "KTO"}


# ---- what the run saved: model card, training_args.bin ------------------------------------------------
class _Opaque:
    """Any object of the pickle: holds its constructor arguments and state, runs nothing."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):  # a pickled callable (copyreg._reconstructor, enum classes) applied
        return _Opaque(*args)


class _ArgsUnpickler(pickle.Unpickler):
    """training_args.bin is torch.save(TrainingArguments): a pickle that names TRL's classes. Every class it
    names becomes an inert record, so reading it imports and runs none of the pickle's code."""

    def find_class(self, module, name):
        return type(name, (_Opaque,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid):
        return None


def _plain(value):
    if isinstance(value, _Opaque):
        args = getattr(value, "args", ())  # an enum member: its value; anything else: not a plain value
        return args[0] if len(args) == 1 and isinstance(args[0], (str, int, float)) else None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else None


def read_training_args(path: Path) -> tuple[str, dict] | None:
    """(config class name, its fields as plain values) of an HF Trainer training_args.bin, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            obj = _ArgsUnpickler(archive.open(name)).load()
    except Exception:  # not a torch.save zip, a torn file, a pickle of something else
        return None
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return None
    return type(obj).__name__, {key: _plain(v) for key, v in state.items() if isinstance(key, str)}


def read_model_card(path: Path) -> str | None:
    """The TRL trainer a model card names (its `tags:` front matter; TRL adds the trainer's tag), or None."""
    tags = model_card_metadata(path).get("tags") or []
    tags = {str(t).strip().lower() for t in (tags if isinstance(tags, list) else [tags])}
    if "trl" not in tags:
        return None
    found = [TRAINERS[t] for t in TRAINERS if t in tags]
    return found[0] if len(found) == 1 else None


@dataclass
class Mode:
    """What a TRL run was: the trainer and the settings that change what its keys mean."""

    trainer: str | None = None  # GRPO, RLOO, DPO, SFT, ...; None: not established
    family: str | None = None  # from the log keys alone: "GRPO or RLOO", "DPO", "SFT"
    how: list[str] = field(default_factory=list)  # where each fact came from
    args: dict = field(default_factory=dict)  # the saved config's fields (empty: no training_args.bin)
    logging_steps: int = 1

    def setting(self, name, default=None):
        return self.args.get(name, default)

    @property
    def group_scaled(self) -> bool | None:
        """frac_reward_zero_std counts groups (True) or flags the batch (False); None: not known."""
        if "scale_rewards" not in self.args:
            return None
        scale = {True: "group", False: "none"}.get(self.args["scale_rewards"], self.args["scale_rewards"])
        return scale in ("group", "none") and self.args.get("multi_objective_aggregation", "sum_then_normalize") == "sum_then_normalize"

    @property
    def sequence_ratio(self) -> bool | None:
        if "importance_sampling_level" not in self.args:
            return None
        return self.args["importance_sampling_level"] == "sequence"

    def summary(self) -> str:
        what = self.trainer or (f"{self.family} (trainer not established: no model card or training_args.bin)" if self.family else "unknown")
        bits = [f"TRL {what}"]
        for name in ("loss_type", "beta", "scale_rewards", "multi_objective_aggregation", "importance_sampling_level", "num_generations",
                     "reward_weights", "steps_per_generation"):
            if name in self.args and self.args[name] is not None:
                bits.append(f"{name}={self.args[name]}")
        if self.logging_steps > 1:
            bits.append(f"logging_steps={self.logging_steps} (each value: the mean over the logging window)")
        return ", ".join(bits) + (f" — from {', '.join(self.how)}" if self.how else "")

    def describe(self) -> dict:
        return {"trainer": self.trainer, "family": self.family, "from": self.how, "logging_steps": self.logging_steps,
                "settings": {n: self.args[n] for n in ("loss_type", "beta", "scale_rewards", "multi_objective_aggregation",
                                                        "importance_sampling_level", "num_generations", "reward_weights",
                                                        "steps_per_generation", "max_completion_length") if n in self.args},
                "summary": self.summary()}


def _family(history: list) -> str | None:
    keys = {key for entry in history if isinstance(entry, dict) for key in entry}
    if keys & {"frac_reward_zero_std", "reward_std", "completions/mean_length"}:
        return "GRPO or RLOO"
    if keys & {"rewards/chosen", "rewards/margins", "logps/chosen"}:
        return "DPO"
    if "objective/kl" in keys or "objective/scores" in keys:
        return "PPO"
    if "mean_token_accuracy" in keys:
        return "SFT"
    return None


def run_mode(state_path: Path, state: dict) -> Mode:
    """The mode of the run whose trainer_state.json is `state_path`: model card (output_dir/README.md, beside
    the state or one level up), saved args (training_args.bin beside the state), log keys."""
    mode = Mode()
    history = state.get("log_history") or []
    steps = state.get("logging_steps")
    mode.logging_steps = steps if isinstance(steps, int) and steps > 1 else 1
    for card in (state_path.parent / CARD_FILE, state_path.parent.parent / CARD_FILE):
        trainer = read_model_card(card) if card.is_file() else None
        if trainer:
            mode.trainer = trainer
            mode.how.append(f"model card {card.name}")
            break
    saved = read_training_args(state_path.parent / ARGS_FILE) if (state_path.parent / ARGS_FILE).is_file() else None
    if saved:
        cls, args = saved
        mode.args = args
        trainer = CONFIG_CLASSES.get(cls)
        if trainer and mode.trainer and trainer != mode.trainer:
            mode.how.append(f"{ARGS_FILE} says {cls}: trainer not established")
            mode.trainer = None
        elif trainer:
            mode.trainer = mode.trainer or trainer
            mode.how.append(f"{ARGS_FILE} ({cls})")
    mode.family = _family(history)
    if mode.trainer is None and mode.family in ("DPO", "SFT", "PPO"):
        mode.trainer = mode.family  # their keys are their own
        mode.how.append("log keys")
    return mode


# ---- the key tables, by mode ----------------------------------------------------------------------------
_HF = [
    KeyMap("loss", None, "training loss of the trainer's objective"),
    KeyMap("grad_norm", None, "gradient norm before clipping"),
    KeyMap("learning_rate", None, "learning rate"),
    KeyMap("epoch", None, "fraction of the dataset seen"),
    KeyMap("num_tokens", None, "tokens seen so far (prompts + completions)"),
    KeyMap("step_time", None, "seconds per step"),
    KeyMap("train_runtime", None, "seconds the whole training took (last entry)"),
    KeyMap("train_samples_per_second", None, "throughput over the whole training (last entry)"),
    KeyMap("train_steps_per_second", None, "throughput over the whole training (last entry)"),
    KeyMap("train_loss", None, "mean training loss over the whole training (last entry)"),
    KeyMap("total_flos", None, "floating-point operations of the whole training (last entry)"),
]

_SAMPLES = [  # what GRPO and RLOO both log with one meaning
    KeyMap("reward", k.SCORE_MEAN, "per sequence: batch mean of the weighted sum of the reward functions (reward_weights), raw "
                                   "(before group normalization and before any KL penalty)"),
    KeyMap("reward_std", k.SCORE_STD, "per sequence: batch std of the same summed reward (not the within-group std)"),
    KeyMap("entropy", k.ENTROPY, "per token: entropy (nats) of the policy being trained at its own sampled completions' states, "
                                 "masked mean over completion tokens"),
    KeyMap("completions/mean_length", k.LENGTH_MEAN, "per sequence: completion length in tokens, batch mean"),
    KeyMap("completions/clipped_ratio", k.EOS_RATE, "fraction of completions cut at max_completion_length (no EOS); fed as 1 − x = EOS rate",
           one_minus),
    KeyMap("completions/min_length", None, "per sequence: shortest completion (tokens)"),
    KeyMap("completions/max_length", None, "per sequence: longest completion (tokens)"),
    KeyMap("completions/mean_terminated_length", None, "per sequence: mean length of completions that ended with EOS"),
    KeyMap("completions/min_terminated_length", None, "per sequence: shortest EOS-terminated completion"),
    KeyMap("completions/max_terminated_length", None, "per sequence: longest EOS-terminated completion"),
    KeyMap("clip_ratio/low_min", None, "minimum over processes of the per-sequence share of tokens clipped below 1−ε"),
    KeyMap("clip_ratio/high_max", None, "maximum over processes of the per-sequence share of tokens clipped above 1+ε"),
    KeyMap("policy_loss", None, "policy term of the loss"),
    KeyMap("entropy_coef", None, "entropy bonus coefficient"),
    KeyMap("aux_loss", None, "router auxiliary loss (mixture-of-experts)"),
    KeyMap("tools/call_frequency", None, "tool calls per completion"),
    KeyMap("tools/failure_frequency", None, "failed tool calls per completion"),
    KeyMap("sampling/importance_sampling_ratio/min", None, "vLLM importance-sampling ratio π_train/π_vLLM (per token, or per sequence under "
                                                          "the sequence_* modes): minimum"),
    KeyMap("sampling/importance_sampling_ratio/mean", None, "vLLM importance-sampling ratio π_train/π_vLLM: mean"),
    KeyMap("sampling/importance_sampling_ratio/max", None, "vLLM importance-sampling ratio π_train/π_vLLM: maximum"),
    KeyMap("sampling/sampling_logp_difference/mean", k.ENGINE_LOGPROB_DIFF_MEAN,
           "per token: |log π_train − log π_vLLM| of the sampled tokens, masked mean (mean over processes): the training–inference "
           "mismatch, as rollout/logprob_diff_abs_mean"),
    KeyMap("sampling/sampling_logp_difference/max", k.ENGINE_LOGPROB_DIFF_MAX,
           "per token: largest |log π_train − log π_vLLM| of the sampled tokens, as rollout/logprob_diff_max"),
]

_KL_GRPO = KeyMap("kl", k.KL_K3_TOKEN_MEAN, "per token: k3 estimate of KL(π‖π_ref), masked mean over completion tokens of the policy "
                                          "being trained (GRPO, β ≠ 0). Not a sequence KL: the KL-budget detector does not read it")
_KL_RLOO = KeyMap("kl", k.KL_K1_TOKEN_MEAN, "per token: k1 = log π_old − log π_ref of the sampled tokens, pooled masked mean (RLOO: "
                                          "computed at generation, folded into the reward as −β·Σk1)")
_ZERO_GROUPS = KeyMap("frac_reward_zero_std", k.GROUP_ZERO_SPREAD_FRAC,
                      "fraction of groups whose summed rewards are all equal (no learning signal), as group/zero_spread_frac")
_TOKEN_CLIP = [
    KeyMap("clip_ratio/region_mean", k.CLIP_FRAC, "per token: share where the clipped objective is active (ratio outside 1±ε on the "
                                                   "advantage's side), pooled over tokens, as ppo/clip_frac"),
    KeyMap("clip_ratio/low_mean", k.CLIP_FRAC_LOW, "per token: share with ratio < 1−ε_low and A < 0, as ppo/clip_frac_low"),
    KeyMap("clip_ratio/high_mean", k.CLIP_FRAC_HIGH, "per token: share with ratio > 1+ε_high and A > 0, as ppo/clip_frac_high"),
]
_SEQ_CLIP = [  # importance_sampling_level="sequence" (GSPO): one ratio per sequence, the geometric mean of its token ratios
    KeyMap("clip_ratio/region_mean", None, "per sequence: share of sequences whose (geometric-mean) sequence ratio is outside 1±ε on the "
                                           "advantage's side; not ppo/clip_frac (tokens) nor gspo/seq_clip_frac (either side)"),
    KeyMap("clip_ratio/low_mean", None, "per sequence: share of sequences with sequence ratio < 1−ε_low and A < 0"),
    KeyMap("clip_ratio/high_mean", None, "per sequence: share of sequences with sequence ratio > 1+ε_high and A > 0"),
]
_RLOO_CLIP = [  # RLOO: one ratio per sequence, exp(Σ_t log ρ_t) (the product, not GSPO's geometric mean)
    KeyMap("clip_ratio/region_mean", None, "per sequence (RLOO): share of sequences whose ratio exp(Σ log ρ_t) is outside 1±ε on the "
                                           "advantage's side; no policyshift key has this unit"),
    KeyMap("clip_ratio/low_mean", None, "per sequence (RLOO): share with sequence ratio < 1−ε_low and A < 0"),
    KeyMap("clip_ratio/high_mean", None, "per sequence (RLOO): share with sequence ratio > 1+ε_high and A > 0"),
]
_DPO = [
    KeyMap("entropy", None, "per token: entropy of the model on the *dataset's* chosen/rejected tokens (teacher-forced), not on the "
                            "policy's own samples: not policy/entropy, no entropy-collapse reading"),
    KeyMap("rewards/chosen", None, "DPO implicit reward β·(log π − log π_ref) of the chosen responses, batch mean"),
    KeyMap("rewards/rejected", None, "DPO implicit reward of the rejected responses, batch mean"),
    KeyMap("rewards/accuracies", None, "share of pairs whose chosen implicit reward exceeds the rejected one"),
    KeyMap("rewards/margins", None, "chosen − rejected implicit reward, batch mean"),
    KeyMap("logps/chosen", None, "sequence log-probability of the chosen responses (sum over tokens), batch mean"),
    KeyMap("logps/rejected", None, "sequence log-probability of the rejected responses, batch mean"),
    KeyMap("logits/chosen", None, "mean logit over the chosen responses' tokens"),
    KeyMap("logits/rejected", None, "mean logit over the rejected responses' tokens"),
    KeyMap("mean_token_accuracy", None, "share of dataset tokens the model ranks first (teacher-forced)"),
]
_SFT = [
    KeyMap("entropy", None, "per token: entropy of the model on the *dataset's* tokens (teacher-forced), not on the policy's own samples: "
                            "not policy/entropy, no entropy-collapse reading"),
    KeyMap("mean_token_accuracy", None, "share of dataset tokens the model ranks first (teacher-forced)"),
]


def _unsure(key: str, why: str) -> KeyMap:
    return KeyMap(key, None, why)


def _grpo_or_rloo_table(mode: Mode) -> dict[str, KeyMap]:
    table = {m.key: m for m in _HF + _SAMPLES}
    if mode.trainer == "RLOO":
        table["kl"] = _KL_RLOO
        table["frac_reward_zero_std"] = _unsure("frac_reward_zero_std", "RLOO: share of groups whose rewards *after the KL penalty* "
                                                "(−β·Σk1) are all equal: ≈ 0 whenever β > 0 even when every group's scores are equal, "
                                                "so not group/zero_spread_frac")
        table.update({m.key: m for m in _RLOO_CLIP})
    elif mode.trainer == "GRPO":
        table["kl"] = _KL_GRPO
        scaled = mode.group_scaled
        if scaled:
            table["frac_reward_zero_std"] = _ZERO_GROUPS
        elif scaled is False:
            table["frac_reward_zero_std"] = _unsure("frac_reward_zero_std", "0/1 flag for the whole batch (scale_rewards='batch' or "
                                                    "multi_objective_aggregation='normalize_then_sum': one std for the batch), not a "
                                                    "share of groups")
        else:
            table["frac_reward_zero_std"] = _unsure("frac_reward_zero_std", "share of groups with equal rewards under scale_rewards='group' "
                                                    "(default), a 0/1 batch flag under 'batch': no training_args.bin to tell")
        seq = mode.sequence_ratio
        if seq is False and mode.setting("loss_type", "dapo") in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
            table.update({m.key: m for m in _TOKEN_CLIP})
        elif seq:
            table.update({m.key: m for m in _SEQ_CLIP})
        else:
            for m in _TOKEN_CLIP:
                table[m.key] = _unsure(m.key, "share of tokens (importance_sampling_level='token', default) or of sequences ('sequence'): "
                                       "no training_args.bin to tell")
    else:  # GRPO or RLOO: the keys are the same, three of them mean different things
        table["kl"] = _unsure("kl", "GRPO: per-token k3 of the policy being trained; RLOO: per-token k1 of the sampling policy. The "
                              "trainer is not established (no model card, no training_args.bin): not fed")
        table["frac_reward_zero_std"] = _unsure("frac_reward_zero_std", "GRPO: share of groups with equal rewards (or a 0/1 batch flag); "
                                                "RLOO: taken after the KL penalty. Trainer not established: not fed")
        for m in _TOKEN_CLIP:
            table[m.key] = _unsure(m.key, "GRPO: share of tokens (or of sequences under sequence-level IS); RLOO: share of sequences. "
                                   "Trainer not established: not fed")
    return table


def table_for(mode: Mode):
    """The key → KeyMap lookup for a run in `mode` (eval_ keys: evaluation, shown; rewards/<fn>/* by pattern)."""
    if mode.trainer == "DPO":
        table = {m.key: m for m in _HF + _DPO}
    elif mode.trainer == "SFT":
        table = {m.key: m for m in _HF + _SFT}
    elif mode.trainer == "PPO":
        table = {m.key: m for m in _HF + _TRL_PPO}
    elif mode.trainer in ("GRPO", "RLOO") or mode.family == "GRPO or RLOO":
        table = _grpo_or_rloo_table(mode)
    else:
        table = {m.key: m for m in _HF}
    window = (f"; logged every {mode.logging_steps} steps: the mean of the {mode.logging_steps} steps' values ending at this step"
              if mode.logging_steps > 1 else "")

    def look(key: str) -> KeyMap | None:
        if key.startswith(EVAL_PREFIX):
            inner = look(key[len(EVAL_PREFIX):])
            return KeyMap(key, None, "evaluation (the eval set, not training): " + (inner.meaning if inner else "HF Trainer evaluation metric"))
        m = table.get(key) or (_reward_function_key(key) if mode.trainer not in ("DPO", "SFT") else None)
        if m is None or not window:
            return m
        return KeyMap(m.key, m.target, m.meaning + window, m.transform)

    return look


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

def _reward_function_key(key: str) -> KeyMap | None:
    """TRL's per-reward-function keys `rewards/<name>/mean|std`."""
    if key.startswith("rewards/") and key.endswith(("/mean", "/std")):
        return KeyMap(key, None, "per sequence: one reward function's score (unweighted), batch " + key.rsplit("/", 1)[1])
    return None


def _load_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LogImportError(f"{path}: not a readable trainer_state.json ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise LogImportError(f"{path}: no log_history list (expected an HF Trainer / TRL trainer_state.json)")
    return state


def read_trainer_state(path: Path, imported: Imported, context: dict | None = None) -> None:
    """HF Trainer / TRL trainer_state.json: log_history is a list of {"step": N, key: value}; train and eval
    entries of one step are merged (eval keys carry an eval_ prefix and are read as evaluation). The key
    table is the one of the run's mode (run_mode)."""
    state = _load_state(path)
    mode = run_mode(path, state)
    imported.add_scalars("trl", path, number_rows(state["log_history"]), table=table_for(mode), mode=mode.describe())
    if context is not None:
        context.setdefault("read", set()).add("trl")
        context["trl_mode"] = (mode, _reward_names(state["log_history"]), _eval_steps(state["log_history"]))


def _eval_steps(history: list) -> set[int]:
    """Steps at which the HF Trainer evaluated (entries with eval_ keys)."""
    return {e["step"] for e in history if isinstance(e, dict) and isinstance(e.get("step"), int) and any(
        isinstance(key, str) and key.startswith(EVAL_PREFIX) for key in e)}


def _reward_names(history: list) -> list[str]:
    """The reward functions' names: TRL logs rewards/<name>/mean for each (grpo_trainer.py L2823)."""
    names = []
    for entry in history:
        for key in entry if isinstance(entry, dict) else ():
            if key.startswith("rewards/") and key.endswith("/mean") and key.count("/") >= 2:
                name = key[len("rewards/"):-len("/mean")]
                if name not in names:
                    names.append(name)
    return names


def _checkpoint_number(path: Path) -> int:
    tail = path.parent.name.split("-")[-1]
    return int(tail) if tail.isdigit() else -1


def checkpoint_being_written(root: Path, directory: Path) -> str | None:
    """checkpoint-N/ without trainer_state.json while its siblings have one: the HF Trainer writes it last (after the
    model, optimizer, scheduler and RNG states; transformers 5.x trainer.py `_save_checkpoint`). A run whose
    checkpoints never carry one (save_pretrained into checkpoint-N by hand) is read as it is."""
    if not re.fullmatch(r"checkpoint-\d+", directory.name) or (directory / STATE_FILE).is_file():
        return None
    if any((sibling / STATE_FILE).is_file() for sibling in directory.parent.glob("checkpoint-*")):
        return f"no {STATE_FILE} yet (the HF Trainer writes it last; its other checkpoints have one)"
    return None


def find_trainer_state(directory: Path, context: dict) -> list[Path]:
    """OUTPUT_DIR/trainer_state.json, else the latest checkpoint's (it holds the whole log so far)."""
    state = directory / STATE_FILE
    if not state.is_file():
        states = sorted(directory.glob(f"checkpoint-*/{STATE_FILE}"), key=_checkpoint_number)
        state = states[-1] if states else state
    return [state] if state.is_file() else []


def _completions_context(path: Path, context: dict | None) -> tuple[Mode | None, list[str], set[int]]:
    """The mode and reward-function names of the run a completions parquet belongs to: read with its
    trainer_state.json, or found from the parquet's output_dir (completions/ is output_dir's child)."""
    if context and "trl_mode" in context:
        return context["trl_mode"]
    for directory in (path.parent.parent, path.parent):
        states = find_trainer_state(directory, {})
        if states:
            state = _load_state(states[0])
            found = (run_mode(states[0], state), _reward_names(state["log_history"]), _eval_steps(state["log_history"]))
            if context is not None:
                context["trl_mode"] = found
            return found
    return None, [], set()


def read_completions(path: Path, imported: Imported, context: dict | None = None) -> None:
    """TRL GRPO log_completions: completions_{step:05d}.parquet with step, prompt, completion, one column per
    reward function (its bare name), the log_extra columns a reward function added, and advantage
    (grpo_trainer.py L3337-3357). The score is Σ reward_weights[i] · reward_i over the reward-function columns
    (the names TRL logged as rewards/<name>/mean, the weights from training_args.bin, 1 each by default):
    log_extra columns and the advantage are kept beside it, never summed. Rows at `step` were sampled before
    update `step` (by the policy of step − 1, or earlier when steps_per_generation > 1). Consecutive runs of
    num_generations rows are one prompt's group (TRL repeats each prompt num_generations times in a row)."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own types for a torn or foreign file
        raise LogImportError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    missing = [c for c in COMPLETION_COLUMNS if c not in frame.columns]
    if missing:
        raise LogImportError(f"{path}: no {', '.join(repr(c) for c in missing)} column (columns: {', '.join(map(str, frame.columns))}); "
                             "expected TRL's completions parquet (step, prompt, completion, one column per reward function, advantage)")
    mode, names, eval_steps = _completions_context(path, context)
    steps = set(int(x) for x in frame["step"].tolist())
    if steps & eval_steps:
        # the HF Trainer evaluates right after logging a step, and TRL's eval log rewrites completions_{step}.parquet
        # with the evaluation's completions (grpo_trainer.py L3337-3357 run for mode "eval" too)
        imported.notes.append(f"{path}: written by the evaluation at step {', '.join(map(str, sorted(steps & eval_steps)))} (TRL's eval log "
                              "rewrites the step's parquet): evaluation completions, not read as training samples")
        return
    numeric = [c for c in frame.columns if c not in (*COMPLETION_COLUMNS, "advantage") and pd.api.types.is_numeric_dtype(frame[c])]
    rewards = [c for c in numeric if c in names]
    extra = [c for c in frame.columns if c not in (*COMPLETION_COLUMNS, "advantage", *rewards)]
    # the parquet's reward columns come in reward_funcs order (grpo_trainer.py L3345), which reward_weights follows;
    # trainer_state.json's keys are sorted, so its order is not theirs
    weights = (mode.setting("reward_weights") if mode else None) or [1.0] * len(rewards)
    weight = {name: float(w) for name, w in zip(rewards, weights)} if len(weights) == len(rewards) == len(names) else {}
    if not rewards or not weight:
        imported.notes.append(f"{path}: which columns are reward functions is not established (no trainer_state.json with rewards/<name>/mean "
                              f"or reward_weights of another length): scores not read; columns kept as logged: {', '.join(numeric)}")
    elif extra:
        imported.notes.append(f"{path}: log_extra columns kept beside the score, not summed into it: {', '.join(map(str, extra))}")
    group = mode.setting("num_generations") if mode else None
    for i, record in enumerate(frame.to_dict("records")):
        values = {c: float(record[c]) for c in rewards if record[c] is not None and math.isfinite(float(record[c]))}
        step = int(record["step"])
        row = {"step": step, "prompt": as_text(record["prompt"]), "completion": as_text(record["completion"]),
               "score": sum(weight[c] * v for c, v in values.items()) if values and weight else None, "rewards": values,
               "advantage": float(record["advantage"]) if "advantage" in record and record["advantage"] is not None else None,
               "extra": {c: _plain_cell(record[c]) for c in extra}, "sampled_before_update": step, "source": "trl"}
        if isinstance(group, int) and group > 0:
            row["group"] = f"{step}:{i // group}"
        imported.completions.append(row)


def _plain_cell(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else str(value)


def find_completions(directory: Path, context: dict) -> list[Path]:
    return sorted(directory.glob("completions/completions_*.parquet")) + sorted(directory.glob("completions_*.parquet"))


def state_step(path: Path) -> int | None:
    """global_step of an HF Trainer trainer_state.json in `path`, if any."""
    try:
        step = json.loads((path / STATE_FILE).read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def checkpoint_log(path: Path) -> tuple[Path, list] | None:
    """An HF Trainer checkpoint's trainer_state.json log_history: the log up to its step."""
    state_file = path / STATE_FILE
    try:
        entries = json.loads(state_file.read_text()).get("log_history") or [] if state_file.is_file() else []
    except (OSError, ValueError, AttributeError):
        return None
    return state_file, entries


def events_mode(folder: Path):
    """The key table of the run whose TensorBoard events are in `folder` (HF Trainer: OUTPUT_DIR/runs/<name>/):
    the mode read from OUTPUT_DIR's trainer state, model card and training_args.bin; without them, mode unknown."""
    for output_dir in (folder.parent.parent, folder.parent, folder):
        states = find_trainer_state(output_dir, {})
        if states:
            try:
                state = _load_state(states[0])
            except LogImportError:
                continue
            mode = run_mode(states[0], state)
            return table_for(mode), mode.describe()
    mode = Mode(family="GRPO or RLOO")
    return table_for(mode), mode.describe()


IMPORTER = Importer(
    name="trl",
    title="TRL",
    order=10,
    formats=(
        LogFormat(matches=lambda name: name == STATE_FILE, read=read_trainer_state, file_phrase=STATE_FILE,
                  find=find_trainer_state, dir_phrase=f"{STATE_FILE} or checkpoint-N/{STATE_FILE}", help=STATE_FILE),
        LogFormat(matches=lambda name: bool(COMPLETIONS.match(name)) or name.endswith(".parquet"), read=read_completions,
                  file_phrase="a TRL completions_*.parquet", find=find_completions, dir_phrase="completions/completions_*.parquet",
                  help="TRL completions/ parquet", completions="TRL completions/completions_*.parquet"),
    ),
    keys=tuple(_grpo_or_rloo_table(Mode(family="GRPO or RLOO")).values()) + tuple(_TRL_PPO),  # mode not known (TensorBoard alone)
    key_pattern=_reward_function_key,
    tensorboard_tags=lambda keys: bool(keys & {"reward_std", "frac_reward_zero_std", "completions/mean_length", "objective/kl",
                                               "objective/scores"}),
    tensorboard_strip="train/",  # HF Trainer's TensorBoardCallback
    tensorboard_repeats_log=True,  # the same scalars as trainer_state.json, in float32
    events_mode=events_mode,
    checkpoints=(CheckpointLayout("HF Trainer / TRL checkpoint", lambda p: p.name.startswith("checkpoint-"), "checkpoint-N/ (HF Trainer, TRL)"),),
    step_prefixes=("checkpoint",),
    being_written=checkpoint_being_written,
    checkpoint_log=checkpoint_log,
    checkpoint_step=state_step,
)
