"""TRL (and the HF Trainer it builds on): trainer_state.json log_history, GRPO's logged completions
(completions/completions_{step:05d}.parquet), TensorBoard `train/<key>` tags, checkpoint-N/ directories.

Key table: TRL 1.12 GRPOTrainer/RLOOTrainer and PPOTrainer (README "Analyze a run from another trainer"
cites the file and line that writes each key).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from policyshift import keys as k
from policyshift.analysis.ingest.base import (CheckpointLayout, Importer, Imported, KeyMap, LogFormat, LogImportError, as_text,
                                              number_rows, one_minus)

STATE_FILE = "trainer_state.json"
COMPLETIONS = re.compile(r"^completions_(\d+)\.parquet$")
COMPLETION_COLUMNS = ("step", "prompt", "completion")

_TRL_GRPO = [
    KeyMap("reward", k.SCORE_MEAN, "per sequence: batch mean of the weighted sum of the reward functions, raw (before group normalization)"),
    KeyMap("reward_std", k.SCORE_STD, "per sequence: batch std of the same summed reward (not the within-group std)"),
    KeyMap("kl", k.KL_K3_TOKEN_MEAN, "per token: k3 estimate of KL(π‖π_ref), masked mean over completion tokens; logged only when β ≠ 0. "
                                     "Not a sequence KL: the KL-budget detector does not read it"),
    KeyMap("entropy", k.ENTROPY, "per token: policy entropy (nats), masked mean over completion tokens"),
    KeyMap("completions/mean_length", k.LENGTH_MEAN, "per sequence: completion length in tokens, batch mean"),
    KeyMap("completions/clipped_ratio", k.EOS_RATE, "fraction of completions cut at max_completion_length (no EOS); fed as 1 − x = EOS rate",
           one_minus),
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



def _reward_function_key(key: str) -> KeyMap | None:
    """TRL's per-reward-function keys `rewards/<name>/mean|std`."""
    if key.startswith("rewards/") and key.endswith(("/mean", "/std")):
        return KeyMap(key, None, "per sequence: one reward function's score (unweighted), batch " + key.rsplit("/", 1)[1])
    return None


def read_trainer_state(path: Path, imported: Imported, context: dict | None = None) -> None:
    """HF Trainer / TRL trainer_state.json: log_history is a list of {"step": N, key: value}; train and eval
    entries of one step are merged (eval keys carry an eval_ prefix)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LogImportError(f"{path}: not a readable trainer_state.json ({exc})") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise LogImportError(f"{path}: no log_history list (expected an HF Trainer / TRL trainer_state.json)")
    imported.add_scalars("trl", path, number_rows(history))
    if context is not None:
        context.setdefault("read", set()).add("trl")


def _checkpoint_number(path: Path) -> int:
    tail = path.parent.name.split("-")[-1]
    return int(tail) if tail.isdigit() else -1


def find_trainer_state(directory: Path, context: dict) -> list[Path]:
    """OUTPUT_DIR/trainer_state.json, else the latest checkpoint's (it holds the whole log so far)."""
    state = directory / STATE_FILE
    if not state.is_file():
        states = sorted(directory.glob(f"checkpoint-*/{STATE_FILE}"), key=_checkpoint_number)
        state = states[-1] if states else state
    return [state] if state.is_file() else []


def read_completions(path: Path, imported: Imported, context: dict | None = None) -> None:
    """TRL GRPO log_completions: completions_{step:05d}.parquet with step, prompt, completion, one column
    per reward function and advantage (trl/trainer/grpo_trainer.py, 1.12). The score is the sum of the
    reward columns (TRL weighs them by reward_weights, 1 each by default)."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own types for a torn or foreign file
        raise LogImportError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    missing = [c for c in COMPLETION_COLUMNS if c not in frame.columns]
    if missing:
        raise LogImportError(f"{path}: no {', '.join(repr(c) for c in missing)} column (columns: {', '.join(map(str, frame.columns))}); "
                             "expected TRL's completions parquet (step, prompt, completion, one column per reward function, advantage)")
    rewards = [c for c in frame.columns if c not in (*COMPLETION_COLUMNS, "advantage") and pd.api.types.is_numeric_dtype(frame[c])]
    for record in frame.to_dict("records"):
        values = {c: float(record[c]) for c in rewards if record[c] is not None and math.isfinite(float(record[c]))}
        imported.completions.append({
            "step": int(record["step"]), "prompt": as_text(record["prompt"]), "completion": as_text(record["completion"]),
            "score": sum(values.values()) if values else None, "rewards": values,
            "advantage": float(record["advantage"]) if "advantage" in record and record["advantage"] is not None else None,
            "source": "trl"})


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
    keys=tuple(_TRL_GRPO + _TRL_PPO),
    key_pattern=_reward_function_key,
    tensorboard_tags=lambda keys: bool(keys & {"reward_std", "frac_reward_zero_std", "completions/mean_length", "objective/kl",
                                               "objective/scores"}),
    tensorboard_strip="train/",  # HF Trainer's TensorBoardCallback
    tensorboard_repeats_log=True,  # the same scalars as trainer_state.json, in float32
    checkpoints=(CheckpointLayout("HF Trainer / TRL checkpoint", lambda p: p.name.startswith("checkpoint-"), "checkpoint-N/ (HF Trainer, TRL)"),),
    step_prefixes=("checkpoint",),
    checkpoint_log=checkpoint_log,
    checkpoint_step=state_step,
)
