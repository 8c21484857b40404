"""verl: the file logger's JSONL (`trainer.logger=[...,'file']`), rollout/validation dumps ({global_step}.jsonl),
TensorBoard tags (actor/, critic/, response_length/), global_step_N/actor/huggingface/ checkpoints and
per-rank FSDP shards that must be merged first.
"""

from __future__ import annotations

import re
from pathlib import Path

from policyshift import keys as k
from policyshift.analysis.ingest.hf import is_model_dir
from policyshift.analysis.ingest.base import (CheckpointLayout, Importer, Imported, KeyMap, LogFormat, LogImportError, ShardLayout, as_text,
                                              jsonl_objects, one_minus)

STEP_JSONL = re.compile(r"^(\d+)\.jsonl$")  # rollout/validation dumps: {global_step}.jsonl
DUMP_FIELDS = ("input", "output", "score")
FSDP_SHARD = re.compile(r"^model_world_size_\d+_rank_\d+\.pt$")  # per-rank FSDP state

_VERL = [
    KeyMap("critic/score/mean", k.SCORE_MEAN, "per sequence: the reward function's/model's score (token_level_scores summed), raw, batch mean"),
    KeyMap("critic/score/max", k.SCORE + "_max", "per sequence: batch maximum of the score"),
    KeyMap("critic/score/min", k.SCORE + "_min", "per sequence: batch minimum of the score"),
    KeyMap("critic/rewards/mean", None, "per sequence: score after the in-reward KL penalty (when on), batch mean"),
    KeyMap("critic/advantages/mean", None, "advantages, masked mean"),
    KeyMap("response_length/mean", k.LENGTH_MEAN, "per sequence: response length in tokens, batch mean"),
    KeyMap("response_length/clip_ratio", k.EOS_RATE, "fraction of responses that reached max_response_length; fed as 1 − x = EOS rate",
           one_minus),
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



def read_file_log(path: Path, imported: Imported, context: dict | None = None) -> None:
    """verl's file logger (verl/utils/tracking.py FileLogger, trainer.logger=[...,'file']): one
    {"step": N, "data": {key: value}} per line."""
    rows = []
    for row in jsonl_objects(path, imported):
        if not isinstance(row.get("data"), dict) or not isinstance(row.get("step"), int):
            raise LogImportError(f"{path}: a line without 'step' and a 'data' object; expected verl's file logger JSONL "
                                 '({"step": N, "data": {...}})')
        rows.append((row["step"], row["data"]))
    if not rows:
        raise LogImportError(f"{path}: no log lines")
    imported.add_scalars("verl", path, rows)


def read_dump(path: Path, imported: Imported, context: dict | None = None) -> None:
    """verl rollout/validation dump (trainer.rollout_data_dir / validation_data_dir, ray_trainer.py
    _dump_generations): {global_step}.jsonl, lines with input, output, gts, score, step and the
    reward function's extra keys."""
    step = int(STEP_JSONL.match(path.name).group(1))
    for row in jsonl_objects(path, imported):
        missing = [f for f in DUMP_FIELDS if f not in row]
        if missing:
            raise LogImportError(f"{path}: a line without {', '.join(repr(f) for f in missing)}; expected a verl rollout dump "
                                 "(input, output, score, step per line)")
        score = row["score"]
        extra = {k: v for k, v in row.items() if k not in ("input", "output", "gts", "score", "step") and isinstance(v, (int, float))}
        imported.completions.append({
            "step": int(row.get("step", step)), "prompt": as_text(row["input"]), "completion": as_text(row["output"]),
            "score": float(score) if isinstance(score, (int, float)) else None, "rewards": extra, "source": "verl"})


def find_dumps(directory: Path, context: dict) -> list[Path]:
    return sorted((p for p in directory.glob("*.jsonl") if STEP_JSONL.match(p.name)), key=lambda p: int(p.stem))


def _fsdp_merged(directory: Path) -> bool:
    return is_model_dir(directory / "huggingface")


IMPORTER = Importer(
    name="verl",
    title="verl",
    order=20,
    formats=(
        LogFormat(matches=lambda name: name.endswith(".jsonl") and not STEP_JSONL.match(name), read=read_file_log,
                  file_phrase="a verl .jsonl log or {step}.jsonl dump", help="verl JSONL"),
        LogFormat(matches=lambda name: bool(STEP_JSONL.match(name)), read=read_dump, find=find_dumps, dir_phrase="{step}.jsonl rollout dumps",
                  help="verl rollout dump dirs", completions="verl rollout dumps {step}.jsonl"),
    ),
    keys=tuple(_VERL),
    tensorboard_tags=lambda keys: any(key.startswith(("actor/", "critic/", "response_length/")) for key in keys),
    checkpoints=(CheckpointLayout("verl HF export", lambda p: p.name == "huggingface", "global_step_N/actor/huggingface/ (verl)"),),
    step_prefixes=("global_step",),
    shards=(ShardLayout(
        pattern=lambda name: bool(FSDP_SHARD.match(name)), merged=_fsdp_merged,
        note=lambda d: (f"{d}: verl FSDP shards, not an HF model; merge them first: "
                        f"python -m verl.model_merger merge --backend fsdp --local_dir {d} --target_dir {d}/huggingface")),),
)
