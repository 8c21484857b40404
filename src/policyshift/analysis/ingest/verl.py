"""verl (verl-project/verl, formerly volcengine/verl): the file logger's JSONL (`trainer.logger=[...,'file']`,
from verl 0.6: `$VERL_FILE_LOGGER_PATH`, else `$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl`, lines
`{"step": N, "data": {...}}`, NaN written as null), rollout/validation dumps ({global_step}.jsonl), the run's
saved Hydra config (outputs/<date>/<time>/.hydra/config.yaml), TensorBoard tags (actor/, critic/,
response_length/), global_step_N/actor/huggingface/ checkpoints and per-rank FSDP shards to merge first.

Checked against verl 0.9.1 (utils/tracking.py L529-548 FileLogger; trainer/ppo/metric_utils.py L429-600
compute_data_metrics; trainer/ppo/core_algos.py L1140-1208 agg_loss, L1286-1377 compute_policy_loss_vanilla;
workers/utils/losses.py L57-144 ppo_loss (kl_loss, entropy_loss); trainer/ppo/v1/trainer_base.py L1676-1691
actor/entropy and the rollout-vs-actor debug metrics, L1226-1260 and L1297-1341 dumps with uid;
trainer/ppo/ray_trainer.py L78-117 in-reward KL penalty, L454-477 legacy dumps with the reward's extra fields;
trainer/ppo/rollout_corr_helper.py L904-1012 rollout_corr/*; utils/debug/metrics.py L58-120
training/rollout_probs_diff_*). Which keys are fed depends on the run's saved config (`run_config`):
actor/entropy is per token only under loss_agg_mode=token-mean, and without a saved config it is shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from policyshift import keys as k
from policyshift.analysis.ingest.hf import is_model_dir
from policyshift.analysis.ingest.base import (CheckpointLayout, Importer, Imported, KeyMap, LogFormat, LogImportError, ShardLayout, as_text,
                                              first_jsonl_object, jsonl_objects, one_minus)

STEP_JSONL = re.compile(r"^(\d+)\.jsonl$")  # rollout/validation dumps: {global_step}.jsonl
DUMP_FIELDS = ("input", "output", "score")
FSDP_SHARD = re.compile(r"^model_world_size_\d+_rank_\d+\.pt$")  # per-rank FSDP state
HYDRA_CONFIG = (".hydra/config.yaml", "outputs/*/*/.hydra/config.yaml", "../.hydra/config.yaml", "../outputs/*/*/.hydra/config.yaml")


@dataclass
class RunConfig:
    """The settings of a verl run that change what its keys mean (from its saved Hydra config)."""

    path: Path | None = None
    values: dict = field(default_factory=dict)

    def get(self, dotted: str):
        node = self.values
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return None if isinstance(node, str) and node.startswith("${") else node  # an interpolation: not established here

    def describe(self) -> dict:
        settings = {name: self.get(path) for name, path in _SETTINGS.items()}
        found = {n: v for n, v in settings.items() if v is not None}
        summary = ("verl, " + ", ".join(f"{n}={v}" for n, v in found.items()) + f" — from {self.path}") if self.path else \
            "verl, no saved config found (outputs/<date>/<time>/.hydra/config.yaml): loss_agg_mode and the KL settings not established"
        return {"trainer": "verl", "config": str(self.path) if self.path else None, "settings": found, "summary": summary}


_SETTINGS = {"adv_estimator": "algorithm.adv_estimator", "loss_agg_mode": "actor_rollout_ref.actor.loss_agg_mode",
             "use_kl_loss": "actor_rollout_ref.actor.use_kl_loss", "kl_loss_type": "actor_rollout_ref.actor.kl_loss_type",
             "use_kl_in_reward": "algorithm.use_kl_in_reward", "kl_penalty": "algorithm.kl_penalty",
             "rollout_n": "actor_rollout_ref.rollout.n", "max_response_length": "data.max_response_length",
             "rollout_data_dir": "trainer.rollout_data_dir", "validation_data_dir": "trainer.validation_data_dir"}


def run_config(directory: Path) -> RunConfig:
    """The Hydra config saved for the run whose logs are in `directory` (or one level up), newest first."""
    import yaml

    found = []
    for pattern in HYDRA_CONFIG:
        base, rest = (directory.parent, pattern[3:]) if pattern.startswith("../") else (directory, pattern)
        found += sorted(base.glob(rest), reverse=True)
    for path in found:
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(values, dict) and "actor_rollout_ref" in values:
            return RunConfig(path, values)
    return RunConfig()


_VERL = [
    KeyMap("critic/score/mean", k.SCORE_MEAN, "per sequence: the reward function's/model's score (token_level_scores summed), raw, batch "
                                              "mean over the non-aborted responses"),
    KeyMap("critic/score/max", k.SCORE_MAX, "per sequence: batch maximum of the score"),
    KeyMap("critic/score/min", k.SCORE_MIN, "per sequence: batch minimum of the score"),
    KeyMap("critic/rewards/mean", None, "per sequence: score after the in-reward KL penalty (when on), batch mean"),
    KeyMap("critic/rewards/max", None, "per sequence: score after the in-reward KL penalty, batch maximum"),
    KeyMap("critic/rewards/min", None, "per sequence: score after the in-reward KL penalty, batch minimum"),
    KeyMap("critic/advantages/mean", None, "advantages, masked mean over response tokens"),
    KeyMap("critic/advantages/max", None, "advantages, maximum over response tokens"),
    KeyMap("critic/advantages/min", None, "advantages, minimum over response tokens"),
    KeyMap("critic/returns/mean", None, "returns, masked mean over response tokens"),
    KeyMap("critic/returns/max", None, "returns, maximum over response tokens"),
    KeyMap("critic/returns/min", None, "returns, minimum over response tokens"),
    KeyMap("critic/values/mean", None, "critic values, masked mean over response tokens"),
    KeyMap("critic/values/max", None, "critic values, maximum"),
    KeyMap("critic/values/min", None, "critic values, minimum"),
    KeyMap("critic/vf_explained_var", k.VALUE_EXPLAINED_VARIANCE, "1 − Var(returns − values)/Var(returns) over response tokens, "
                                                                   "as value/explained_variance"),
    KeyMap("response_length/mean", k.LENGTH_MEAN, "per sequence: response length in tokens, batch mean (aborted responses count as 0)"),
    KeyMap("response_length/clip_ratio", k.EOS_RATE, "fraction of responses whose length reached max_response_length (cut at the "
                                                     "limit; an aborted, empty response counts as not cut); fed as 1 − x = EOS rate", one_minus),
    KeyMap("response_length/max", None, "per sequence: longest response (tokens)"),
    KeyMap("response_length/min", None, "per sequence: shortest response (tokens)"),
    KeyMap("response_length_non_aborted/mean", None, "per sequence: response length over non-aborted responses, batch mean"),
    KeyMap("response_length_non_aborted/max", None, "per sequence: longest non-aborted response"),
    KeyMap("response_length_non_aborted/min", None, "per sequence: shortest non-aborted response"),
    KeyMap("response_length_non_aborted/clip_ratio", None, "fraction of non-aborted responses cut at max_response_length"),
    KeyMap("response/aborted_ratio", None, "fraction of responses of length 0 (aborted requests)"),
    KeyMap("prompt_length/mean", None, "prompt length in tokens, batch mean"),
    KeyMap("prompt_length/max", None, "longest prompt"),
    KeyMap("prompt_length/min", None, "shortest prompt"),
    KeyMap("prompt_length/clip_ratio", None, "fraction of prompts at max_prompt_length"),
    KeyMap("actor/pg_clipfrac", k.CLIP_FRAC, "per token: masked mean of (clipped loss > unclipped loss) — the clipped objective active — "
                                             "as ppo/clip_frac"),
    KeyMap("actor/pg_clipfrac_lower", k.DUAL_CLIP_FRAC, "per token: share of A < 0 tokens whose loss the dual clip (clip_ratio_c) bounded, "
                                                        "as ppo/dual_clip_frac"),
    KeyMap("actor/ppo_kl", None, "old→new policy k1 of the update (mean of log π_old − log π_new over response tokens): NOT KL to the "
                                 "reference — it says how far one update moved the policy, not how far it is from the SFT model"),
    KeyMap("actor/kl_loss", None, "KL-to-reference loss (actor.use_kl_loss; estimator actor.kl_loss_type, low_var_kl = k3 clamped by "
                                  "default), aggregated by loss_agg_mode; its scale changed with the version (0.5: mean over "
                                  "micro-batches; 0.6: ÷ gradient accumulation; ≥ 0.7: summed over micro-batches × mini-batches × "
                                  "epochs of partial token means), and absent when the KL loss is off: shown as logged"),
    KeyMap("actor/kl_coef", None, "β of the KL loss (actor.kl_loss_coef)"),
    KeyMap("actor/reward_kl_penalty", None, "per token: mean over sequences of each one's mean in-reward KL penalty (algorithm.kl_penalty "
                                            "estimator, k1 by default) of the rollout policy vs the reference, before β"),
    KeyMap("actor/reward_kl_penalty_coeff", None, "β of the in-reward KL penalty"),
    KeyMap("actor/pg_loss", None, "policy-gradient loss"),
    KeyMap("actor/entropy_loss", None, "entropy term of the loss, aggregated by loss_agg_mode"),
    KeyMap("actor/grad_norm", None, "actor gradient norm"),
    KeyMap("actor/lr", None, "actor learning rate"),
    KeyMap("rollout_corr/k3_kl", k.ENGINE_KL_K3, "per token: k3 estimate of KL(π_rollout‖π_train), mean of r − log r − 1 with "
                                                 "r = π_train/π_rollout over response tokens, as rollout/engine_kl_k3"),
    KeyMap("rollout_corr/kl", None, "per token: k1 estimate of KL(π_rollout‖π_train), mean of log π_rollout − log π_train (can be < 0)"),
    KeyMap("rollout_corr/training_ppl", None, "per-sequence perplexity of the trainer's log-probs, batch mean"),
    KeyMap("rollout_corr/training_log_ppl", None, "per-sequence log-perplexity of the trainer's log-probs, batch mean"),
    KeyMap("rollout_corr/rollout_ppl", None, "per-sequence perplexity of the rollout engine's log-probs, batch mean"),
    KeyMap("rollout_corr/rollout_log_ppl", None, "per-sequence log-perplexity of the rollout engine's log-probs, batch mean"),
    KeyMap("rollout_corr/log_ppl_diff", None, "per sequence: mean log π_rollout − mean log π_train, batch mean"),
    KeyMap("rollout_corr/log_ppl_abs_diff", None, "per sequence: |log-perplexity difference|, batch mean"),
    KeyMap("rollout_corr/log_ppl_diff_max", None, "per sequence: largest log-perplexity difference"),
    KeyMap("rollout_corr/log_ppl_diff_min", None, "per sequence: smallest log-perplexity difference"),
    KeyMap("rollout_corr/ppl_ratio", None, "per sequence: training / rollout perplexity, batch mean"),
    KeyMap("rollout_corr/chi2_token", None, "per token: χ² divergence E[ρ²] − 1, ρ = π_train/π_rollout"),
    KeyMap("rollout_corr/chi2_seq", None, "per sequence: χ² divergence E[(Πρ_t)²] − 1"),
    KeyMap("training/rollout_probs_diff_mean", None, "per token: |π_train − π_rollout| of the sampled tokens' *probabilities* (not "
                                                     "log-probabilities), mean: a training–inference mismatch in probability units"),
    KeyMap("training/rollout_probs_diff_max", None, "per token: largest |π_train − π_rollout| (probabilities)"),
    KeyMap("training/rollout_probs_diff_std", None, "per token: std of |π_train − π_rollout| (probabilities)"),
    KeyMap("training/rollout_probs_diff_valid", None, "1 when the batch had response tokens to compare, else 0"),
    KeyMap("training/rollout_actor_probs_pearson_corr", None, "Pearson correlation of the sampled tokens' probabilities, trainer vs rollout"),
    KeyMap("training/global_step", None, "training step"),
]
_ENTROPY_TOKEN = KeyMap("actor/entropy", k.ENTROPY, "per token: entropy of the policy at its rollout's states, masked mean over response "
                                                    "tokens (loss_agg_mode=token-mean, from the saved config), as policy/entropy")
_ENTROPY = {
    "seq-mean-token-sum": "per sequence: sum of the entropy over each response's tokens, mean over sequences (loss_agg_mode)",
    "seq-mean-token-sum-norm": "per sequence: sum over each response's tokens ÷ max response length (or loss_scale_factor), mean over "
                               "sequences (loss_agg_mode): not a per-token entropy",
    "seq-mean-token-mean": "per sequence: each response's token-mean entropy, mean over sequences (loss_agg_mode): sequences weigh equally",
    "token-sum": "sum of the entropy over all response tokens of the batch (loss_agg_mode=token-sum)",
}
_PATTERNS = [  # prefixes whose keys are bookkeeping, shown as logged
    ("timing_s/", "seconds this step spent in a stage"), ("timing_per_token_ms/", "milliseconds per token in a stage"),
    ("perf/", "throughput / memory"), ("val-core/", "validation (evaluation) metric, not training"),
    ("val-aux/", "validation (evaluation) metric, not training"), ("val/", "validation (evaluation) metric, not training"),
    ("num_turns/", "turns per multi-turn rollout"), ("training/", "training bookkeeping"),
]
_BY_KEY = {m.key: m for m in _VERL}


def table_for(config: RunConfig):
    """The key → KeyMap lookup for a verl run with this saved config."""
    mode = config.get("actor_rollout_ref.actor.loss_agg_mode")
    if mode == "token-mean":
        entropy = _ENTROPY_TOKEN
    elif mode in _ENTROPY:
        entropy = KeyMap("actor/entropy", None, _ENTROPY[mode] + "; not policy/entropy")
    else:
        entropy = KeyMap("actor/entropy", None, "entropy aggregated by actor.loss_agg_mode: per token only under token-mean (the default), "
                                                "per sequence or ÷ max length under the seq-* modes; no saved config says which: not fed")

    def look(key: str) -> KeyMap | None:
        if key == "actor/entropy":
            return entropy
        found = _BY_KEY.get(key)
        if found is not None:
            return found
        return next((KeyMap(key, None, meaning) for prefix, meaning in _PATTERNS if key.startswith(prefix)), None)

    return look


def is_file_log(path: Path) -> bool:
    """A verl file-logger JSONL (whatever its name: `<experiment>.jsonl`, an all-digit experiment too)."""
    row = first_jsonl_object(path)
    return bool(row) and isinstance(row.get("data"), dict) and "step" in row


def is_dump(path: Path) -> bool:
    row = first_jsonl_object(path)
    return bool(row) and all(f in row for f in DUMP_FIELDS)


def read_jsonl(path: Path, imported: Imported, context: dict | None = None) -> None:
    """A .jsonl given by path: verl's file log or a {step}.jsonl dump, told by its lines (not its name)."""
    if is_file_log(path):
        read_file_log(path, imported, context)
    elif STEP_JSONL.match(path.name) and is_dump(path):
        read_dump(path, imported, context)
    else:
        raise LogImportError(f"{path}: neither verl's file logger JSONL ({{\"step\": N, \"data\": {{...}}}} per line) nor a verl "
                             "{step}.jsonl rollout dump (input, output, score per line)")


def _config_for(path: Path, context: dict | None) -> RunConfig:
    if context is not None and "verl_config" in context:
        return context["verl_config"]
    config = RunConfig()
    for directory in (path.parent, path.parent.parent, path.parent.parent.parent):
        config = run_config(directory)
        if config.path:
            break
    if context is not None:
        context["verl_config"] = config
    return config


def read_file_log(path: Path, imported: Imported, context: dict | None = None) -> None:
    """verl's file logger (verl/utils/tracking.py FileLogger, trainer.logger=[...,'file']): one
    {"step": N, "data": {key: value}} per line; the key table of the run's saved config."""
    rows = []
    for row in jsonl_objects(path, imported):
        if not isinstance(row.get("data"), dict) or not isinstance(row.get("step"), int):
            raise LogImportError(f"{path}: a line without 'step' and a 'data' object; expected verl's file logger JSONL "
                                 '({"step": N, "data": {...}})')
        rows.append((row["step"], row["data"]))
    if not rows:
        raise LogImportError(f"{path}: no log lines")
    config = _config_for(path, context)
    imported.add_scalars("verl", path, rows, table=table_for(config), mode=config.describe())


def _is_validation(path: Path, config: RunConfig) -> bool:
    """A validation dump (trainer.validation_data_dir): evaluation samples, not the training rollouts."""
    val_dir = config.get("trainer.validation_data_dir")
    if val_dir and config.path is not None:
        run_root = config.path.parent.parent if config.path.parent.name == ".hydra" else config.path.parent
        for root in (run_root, run_root.parent.parent.parent):
            try:
                if (root / str(val_dir)).resolve() == path.parent.resolve():
                    return True
            except OSError:
                pass
    return any(part.lower() in ("val", "validation", "val_generations", "validation_data") for part in path.parent.parts[-1:])


def read_dump(path: Path, imported: Imported, context: dict | None = None) -> None:
    """verl rollout dump (trainer.rollout_data_dir; ray_trainer.py / v1 trainer_base.py _write_generations):
    {global_step}.jsonl, lines with input, output, gts, score, step, and the reward function's extra keys
    (legacy trainer) or `uid` = "{sample}_{rollout}_{output}" (the V1 trainer: the sample part is the group).
    A validation dump (trainer.validation_data_dir) is evaluation: noted, not imported as training samples."""
    config = _config_for(path, context)
    if _is_validation(path, config):
        imported.notes.append(f"{path}: a validation dump (evaluation samples, trainer.validation_data_dir): not read as training completions")
        return
    step = int(STEP_JSONL.match(path.name).group(1))
    for row in jsonl_objects(path, imported):
        missing = [f for f in DUMP_FIELDS if f not in row]
        if missing:
            raise LogImportError(f"{path}: a line without {', '.join(repr(f) for f in missing)}; expected a verl rollout dump "
                                 "(input, output, score, step per line)")
        score = row["score"]
        extra = {key: v for key, v in row.items() if key not in ("input", "output", "gts", "score", "step", "uid", "request_id")
                 and isinstance(v, (int, float)) and not isinstance(v, bool)}
        entry = {"step": int(row.get("step", step)), "prompt": as_text(row["input"]), "completion": as_text(row["output"]),
                 "score": float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None, "rewards": extra,
                 "sampled_before_update": int(row.get("step", step)), "source": "verl"}
        if isinstance(row.get("uid"), str):
            entry["group"] = row["uid"].rsplit("_", 2)[0] if row["uid"].count("_") >= 2 else row["uid"]
        imported.completions.append(entry)


def find_file_logs(directory: Path, context: dict) -> list[Path]:
    """`<experiment>.jsonl` in the directory or in its `<project>/` folders ($VERL_FILE_LOGGER_ROOT/<project>/)."""
    candidates = sorted(directory.glob("*.jsonl")) + sorted(directory.glob("*/*.jsonl"))
    return [p for p in candidates if is_file_log(p)]


def find_dumps(directory: Path, context: dict) -> list[Path]:
    """{step}.jsonl dumps in the directory, in its direct folders (rollout_data_dir, validation_data_dir), by step."""
    candidates = [p for p in list(directory.glob("*.jsonl")) + list(directory.glob("*/*.jsonl")) if STEP_JSONL.match(p.name)]
    dumps = [p for p in candidates if is_dump(p)]
    return sorted(dumps, key=lambda p: (str(p.parent), int(p.stem)))


LATEST = "latest_checkpointed_iteration.txt"  # trainer.default_local_dir/: the step of the last complete save
GLOBAL_STEP = re.compile(r"^global_step_(\d+)$")


def checkpoint_being_written(root: Path, directory: Path) -> str | None:
    """A directory under global_step_N/ whose N is past the run's latest_checkpointed_iteration.txt: verl writes that
    file after the actor, critic and dataloader states of the step (verl 0.x trainer/ppo/ray_trainer.py
    `_save_checkpoint`). Without the file (the first save; async_save skips it) nothing says so."""
    for step_dir in (directory, *directory.parents):
        match = GLOBAL_STEP.match(step_dir.name)
        if match:
            try:
                latest = int((step_dir.parent / LATEST).read_text().strip())
            except (OSError, ValueError):
                return None
            return f"global_step_{match.group(1)} is past {LATEST} ({latest})" if int(match.group(1)) > latest else None
    return None


def _fsdp_merged(directory: Path) -> bool:
    return is_model_dir(directory / "huggingface")


IMPORTER = Importer(
    name="verl",
    title="verl",
    order=20,
    formats=(
        LogFormat(matches=lambda name: name.endswith(".jsonl"), read=read_jsonl, find=find_file_logs, read_found=read_file_log,
                  file_phrase="a verl .jsonl log or {step}.jsonl dump", dir_phrase="a verl file log (<project>/<experiment>.jsonl)",
                  help="verl JSONL"),
        LogFormat(matches=lambda name: False, read=read_dump, find=find_dumps, dir_phrase="{step}.jsonl rollout dumps",
                  help="verl rollout dump dirs", completions="verl rollout dumps {step}.jsonl"),
    ),
    keys=tuple(_VERL) + (KeyMap("actor/entropy", None, "entropy aggregated by actor.loss_agg_mode (per token only under token-mean): "
                                                            "no saved config read"),),
    tensorboard_tags=lambda keys: any(key.startswith(("actor/", "critic/", "response_length/")) for key in keys),
    checkpoints=(CheckpointLayout("verl HF export", lambda p: p.name == "huggingface", "global_step_N/actor/huggingface/ (verl)"),
                 CheckpointLayout("verl LoRA adapter (on the base weights merged beside it)", lambda p: p.name == "lora_adapter")),
    step_prefixes=("global_step",),
    being_written=checkpoint_being_written,
    shards=(ShardLayout(
        pattern=lambda name: bool(FSDP_SHARD.match(name)), merged=_fsdp_merged,
        note=lambda d: (f"{d}: verl FSDP shards, not an HF model; merge them first: "
                        f"python -m verl.model_merger merge --backend fsdp --local_dir {d} --target_dir {d}/huggingface")),
        # Megatron: actor/dist_ckpt/ (and the newer layout's model/dist_ckpt/; utils/checkpoint/megatron_checkpoint_manager.py L115-135)
        ShardLayout(
            pattern=lambda name: name == "dist_ckpt", merged=_fsdp_merged,
            note=lambda d: (f"{d}: verl Megatron dist_ckpt shards, not an HF model; merge them first: "
                            f"python -m verl.model_merger merge --backend megatron --local_dir {d} --target_dir {d}/huggingface")),
        # checkpoint.save_contents without hf_model (the default): huggingface/ holds the config and tokenizer only
        ShardLayout(
            pattern=lambda name: name == "huggingface", merged=_fsdp_merged,
            note=lambda d: (f"{d}/huggingface: config and tokenizer only, no weights (verl saves HF weights only with "
                            f"checkpoint.save_contents including hf_model); merge the shards with python -m verl.model_merger merge "
                            f"--local_dir {d} --target_dir {d}/huggingface")),
    ),
)
