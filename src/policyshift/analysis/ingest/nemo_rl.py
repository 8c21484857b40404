"""NeMo-RL (github NVIDIA-NeMo/RL, checked against v0.7.0): the GRPO training-data dumps
`<log_dir>/exp_NNN/train_data_step{N}.jsonl` (nemo_rl/algorithms/grpo.py L2969-2993, written by
nemo_rl/utils/logger.py L1041-1068: one line per sample, every field with a batch dimension of 1, plus "idx").

Each line carries the rollout engine's per-token `generation_logprobs` and the trainer's `prev_logprobs` of the
same tokens, so the training–inference mismatch is measured here, offline, over the `token_loss_mask` tokens
(the trainer's own metric, grpo.py L2020-2046, drops the first position: [:, 1:]): the k3 KL(π_engine‖π_train),
mean and max |Δ log π|, and NeMo-RL's multiplicative probability error mean exp(|Δ log π|) (flagged above 1.05,
grpo.py L3001). `rewards` and `content` fill the completions (the last message is the completion). A line is
the batch the trainer is about to update on: sampled before update N.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from policyshift import keys as k
from policyshift.analysis.ingest.base import Importer, Imported, KeyMap, LogFormat, LogImportError, jsonl_objects

DUMP = re.compile(r"^train_data_step(\d+)\.jsonl$")
FIELDS = ("generation_logprobs", "prev_logprobs", "token_loss_mask")

_KEYS = [
    KeyMap("engine_kl_k3", k.ENGINE_KL_K3, "per token: k3 of KL(π_engine‖π_train) over the loss-mask tokens, computed here from "
                                           "generation_logprobs and prev_logprobs, as rollout/engine_kl_k3"),
    KeyMap("logprob_diff_abs_mean", k.ENGINE_LOGPROB_DIFF_MEAN, "per token: mean |generation_logprobs − prev_logprobs| over the "
                                                                 "loss-mask tokens, as rollout/logprob_diff_abs_mean"),
    KeyMap("logprob_diff_max", k.ENGINE_LOGPROB_DIFF_MAX, "per token: largest |generation_logprobs − prev_logprobs|"),
    KeyMap("token_mult_prob_error", None, "NeMo-RL's multiplicative probability error: mean exp(|Δ log π|) over the loss-mask tokens "
                                          "(1 = no mismatch; NeMo-RL flags > 1.05)"),
    KeyMap("reward_mean", k.SCORE_MEAN, "per sequence: the environment's reward (`rewards`), batch mean"),
    KeyMap("samples", None, "samples in the step's dump"),
]


def _one(value):
    """A field as logged: a batch of one ([x]) → x."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def read_dump(path: Path, imported: Imported, context: dict | None = None) -> None:
    step = int(DUMP.match(path.name).group(1))
    diffs, k3, mult, rewards = [], [], [], []
    for row in jsonl_objects(path, imported):
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise LogImportError(f"{path}: a line without {', '.join(missing)}; expected NeMo-RL's train_data_step{{N}}.jsonl "
                                 "(generation_logprobs, prev_logprobs, token_loss_mask per line)")
        gen, prev, mask = (_one(row[f]) for f in FIELDS)
        for g, p, m in list(zip(gen, prev, mask))[1:]:  # the trainer's own metric drops the first position
            if m and isinstance(g, (int, float)) and isinstance(p, (int, float)):
                d = g - p  # log π_engine − log π_train
                diffs.append(abs(d))
                k3.append(math.exp(-d) + d - 1.0)  # r − log r − 1 with r = π_train/π_engine
                mult.append(math.exp(abs(d)))
        reward = _one(row.get("rewards"))
        content = _one(row.get("content"))
        messages = content if isinstance(content, list) else [content]
        score = float(reward) if isinstance(reward, (int, float)) and not isinstance(reward, bool) else None
        rewards += [score] if score is not None else []
        imported.completions.append({"step": step, "prompt": "\n".join(map(str, messages[:-1])), "completion": str(messages[-1]),
                                     "score": score, "rewards": {}, "sampled_before_update": step, "source": "nemo_rl"})
    values = {"samples": float(len(rewards))}
    if diffs:
        values.update({"engine_kl_k3": sum(k3) / len(k3), "logprob_diff_abs_mean": sum(diffs) / len(diffs),
                       "logprob_diff_max": max(diffs), "token_mult_prob_error": sum(mult) / len(mult)})
    if rewards:
        values["reward_mean"] = sum(rewards) / len(rewards)
    imported.add_scalars("nemo_rl", path, [(step, values)], mode={"trainer": "NeMo-RL", "summary": "NeMo-RL GRPO training-data dump; "
                                                                  "mismatch measured offline from generation_logprobs vs prev_logprobs"})


def find_dumps(directory: Path, context: dict) -> list[Path]:
    found = [p for pattern in ("train_data_step*.jsonl", "*/train_data_step*.jsonl", "*/*/train_data_step*.jsonl")
             for p in directory.glob(pattern) if DUMP.match(p.name)]
    return sorted(found, key=lambda p: (str(p.parent), int(DUMP.match(p.name).group(1))))


IMPORTER = Importer(
    name="nemo_rl",
    title="NeMo-RL",
    order=15,  # before verl, whose .jsonl format would claim a train_data_step{N}.jsonl given by path
    formats=(LogFormat(matches=lambda name: bool(DUMP.match(name)), read=read_dump, file_phrase="a NeMo-RL train_data_step{N}.jsonl",
                       find=find_dumps, dir_phrase="NeMo-RL train_data_step{N}.jsonl", help="NeMo-RL train_data_step{N}.jsonl",
                       completions="NeMo-RL train_data_step{N}.jsonl"),),
    keys=tuple(_KEYS),
)
