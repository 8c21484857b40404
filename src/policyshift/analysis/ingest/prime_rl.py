"""prime-rl (github PrimeIntellect-ai/prime-rl, checked against commit 559b447, v0.8.1.dev67; the format moves between
releases): the file monitor's `metrics.jsonl` and its `rollouts/step_N/<kind>/<subset>/traces.jsonl`
(src/prime_rl/monitors/file.py L33-59; tests/fixtures/prime_rl_fixtures.py cites the rest).

metrics.jsonl: one `{"step", "time", ...}` line per `monitors.log(dict)` call — several lines per step, from the
trainer and the orchestrator alike (both write the run directory's metrics.jsonl under the `rl` entrypoint); the
lines of one step are merged. `time` is the line's wall clock, not a metric. Fed only where the meaning is ours:
`mismatch_kl/all/mean` is the per-token k3 of KL(π_inference‖π_train) over the sampled tokens (r − log r − 1 with
r = π_train/π_inference, trainer/rl/loss.py L100-106; train.py L496-520), our rollout/engine_kl_k3.

traces.jsonl: one verifiers `Episode.to_record()` per line. Only `train/effective` is read — the batch shipped to
the trainer for step N (orchestrator.py L682-690): `train/all` also holds errored and rejected arrivals, `eval/`
is evaluation. Each trace is one completion: the non-sampled messages before its first sampled message are the
prompt, the rest the completion; its score is verifiers' `Trace.reward`, the weighted sum of its rewards
(verifiers/v1/trace.py L135-141, L412-414); the episode's group is the group.
"""

from __future__ import annotations

import re
from pathlib import Path

from policyshift import keys as k
from policyshift.analysis.ingest.base import (CheckpointLayout, Importer, Imported, KeyMap, LogFormat, LogImportError, as_text, first_jsonl_object,
                                              jsonl_objects)

METRICS = "metrics.jsonl"
TRACES = "traces.jsonl"
STEP_DIR = re.compile(r"^step_(\d+)$")
TRAINED = ("train", "effective")  # rollouts/step_N/<kind>/<subset>: the batch the trainer updates on
NOT_METRICS = ("step", "time")  # the file monitor's own fields (monitors/file.py L40)

_KEYS = [
    KeyMap("mismatch_kl/all/mean", k.ENGINE_KL_K3, "per token: k3 of KL(π_inference‖π_train) (r − log r − 1, r = π_train/π_inference) "
                                                   "over the sampled tokens, pooled over the step, as rollout/engine_kl_k3"),
    KeyMap("mismatch_kl/all/max", None, "per token: largest k3 mismatch term of the step (not a |Δ log π|: not rollout/logprob_diff_max)"),
    KeyMap("mismatch_kl/all/std", None, "per token: std of the k3 mismatch terms"),
    KeyMap("kl_ent_ratio/mean", None, "mismatch_kl/all/mean ÷ entropy/all/mean"),
    KeyMap("entropy/all/mean", None, "per token: entropy of the trainer's distribution at the loss-mask tokens, pooled mean; shown only "
                                     "(the logits' temperature scaling is not established here, so it does not feed policy/entropy)"),
    KeyMap("entropy/all/std", None, "per token: std of that entropy"),
    KeyMap("entropy/all/max", None, "per token: largest entropy"),
    KeyMap("loss/mean", None, "the loss of the configured loss function (default DPPO+KL), mean over micro-batches"),
    KeyMap("ref_kl", None, "opd/opsd loss only: mean of log π_ref − log π_train over the loss tokens (−k1 of KL(π_train‖π_ref)): "
                           "KL to the reference in a sign and estimator no panel reads"),
    KeyMap("optim/lr", k.LR, "learning rate"),
    KeyMap("optim/grad_norm", k.GRAD_NORM, "gradient norm before clipping (clip_grad_norm_'s return, trainer/utils.py L88-98)"),
    KeyMap("reward_mean", k.SCORE_MEAN, "per sequence: verifiers' Trace.reward (weighted sum of the rewards) of the train/effective "
                                        "traces, batch mean, computed here from traces.jsonl"),
    KeyMap("samples", None, "traces in the step's train/effective traces.jsonl"),
]


def _pattern(key: str) -> KeyMap | None:
    """Keys with an environment, agent or subset in their name: shown with the meaning of their family."""
    families = (
        (r"^(entropy|mismatch_kl)/[^/]+/(mean|std|max|min)$", "per token, one environment: {0} (see {0}/all)"),
        (r"^(masked_|unmasked_)?mismatch_kl/.+", "per token: k3 mismatch terms of a subset of tokens"),
        (r"^train/[^/]+/(all|effective)/.+/reward/(mean|std|min|max)$", "per sequence: the orchestrator's reward statistic of one "
                                                                         "agent/cohort (all = every arrival, effective = the trained batch)"),
        (r"^(train|eval)/.+", "orchestrator statistic of the rollouts (tokens, turns, truncation, timing, errors, rewards per function)"),
        (r"^(perf|time|system|off_policy|batch|is_masked|is_masked_low|is_masked_high|masked_advantage_positive|"
         r"masked_advantage_negative|scheduler|progress)/.+", "bookkeeping of the trainer or orchestrator ({0})"),
    )
    for pattern, meaning in families:
        m = re.match(pattern, key)
        if m:
            return KeyMap(key, None, meaning.format(key.split("/", 1)[0]))
    return None


def is_metrics(path: Path) -> bool:
    """The file monitor's metrics.jsonl: `{"step": int, "time": float, ...}` lines (not verifiers' or policyshift's)."""
    row = first_jsonl_object(path)
    return bool(row) and isinstance(row.get("step"), int) and isinstance(row.get("time"), (int, float)) and "data" not in row


def read_metrics(path: Path, imported: Imported, context: dict | None = None) -> None:
    if not is_metrics(path):
        # a metrics.jsonl given by path is told by its lines: another trainer's JSONL of that name (a verl experiment
        # called "metrics") goes to the next format that takes the name
        from policyshift.analysis.ingest import FORMATS

        other = next((f for f in FORMATS if f.read is not read_metrics and f.matches(path.name)), None)
        if other is None:
            raise LogImportError(f"{path}: not prime-rl's metrics.jsonl (one {{\"step\": N, \"time\": T, ...}} object per line)")
        other.read(path, imported, context if context is not None else {})
        return
    by_step: dict[int, dict] = {}
    for row in jsonl_objects(path, imported):
        step = row.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            by_step.setdefault(step, {}).update({key: v for key, v in row.items() if key not in NOT_METRICS})
    imported.add_scalars("prime_rl", path, sorted(by_step.items()), mode={"trainer": "prime-rl", "summary": "prime-rl file monitor "
                                                                          "(trainer and orchestrator lines merged per step)"})


def _text(message) -> str:
    if not isinstance(message, dict):
        return str(message)
    content = message.get("content")
    return content if isinstance(content, str) else as_text(content) if content is not None else ""


def _completion(trace: dict) -> tuple[str, str, int]:
    nodes = [n for n in trace.get("nodes") or [] if isinstance(n, dict)]
    first = next((i for i, n in enumerate(nodes) if n.get("sampled")), len(nodes))
    prompt = "\n".join(_text(n.get("message")) for n in nodes[:first])
    completion = "\n".join(_text(n.get("message")) for n in nodes[first:])
    length = sum(sum(1 for m in n.get("mask") or [] if m) for n in nodes if n.get("sampled"))
    return prompt, completion, length


def read_traces(path: Path, imported: Imported, context: dict | None = None) -> None:
    """One train/effective traces.jsonl: a completion per trace, the batch's mean reward as a scalar."""
    step_dir = next((p for p in path.parents if STEP_DIR.match(p.name)), None)
    if step_dir is None:
        raise LogImportError(f"{path}: not under rollouts/step_N/ (prime-rl's file monitor layout)")
    step = int(STEP_DIR.match(step_dir.name).group(1))
    scores = []
    for episode in jsonl_objects(path, imported):
        if not isinstance(episode.get("traces"), list):
            raise LogImportError(f"{path}: a line without 'traces'; expected verifiers Episode records (id, task, traces, ...)")
        group = (episode.get("group") or {}).get("id")
        # the policy versions live while it was generated (async: up to max_async_level behind the update it trains)
        policy = ((episode.get("run") or {}).get("work") or {}).get("policy")
        for trace in episode["traces"]:
            rewards = {name: r for name, r in (trace.get("rewards") or {}).items() if isinstance(r, dict)}
            values = {name: float(r["score"]) for name, r in rewards.items() if isinstance(r.get("score"), (int, float))}
            score = sum(float(r["score"]) * float(r.get("weight", 1.0)) for r in rewards.values()
                        if isinstance(r.get("score"), (int, float))) if rewards else None
            prompt, completion, length = _completion(trace)
            row = {"step": step, "prompt": prompt, "completion": completion, "score": score, "rewards": values, "length": length,
                   "stop_condition": trace.get("stop_condition"), "sampled_before_update": step, "source": "prime_rl"}
            if isinstance(policy, dict):
                row["policy_span"] = [policy.get("start"), policy.get("end")]
            if group is not None:
                agent = (trace.get("agent") or {}).get("name", "agent")
                row["group"] = f"{group}:{agent}"
            imported.completions.append(row)
            if score is not None:
                scores.append(score)
    values = {"samples": float(len(scores))}
    if scores:
        values["reward_mean"] = sum(scores) / len(scores)
    imported.add_scalars("prime_rl", path, [(step, values)], mode={"trainer": "prime-rl", "summary": "verifiers traces of the trained "
                                                                    "batch (rollouts/step_N/train/effective)"})


def find_metrics(directory: Path, context: dict) -> list[Path]:
    """`<run>/metrics.jsonl` in the directory, in its run folders (outputs/<run.name>/), the file monitor's lines."""
    candidates = [directory / METRICS, *sorted(directory.glob(f"*/{METRICS}")), *sorted(directory.glob(f"*/*/{METRICS}"))]
    return [p for p in candidates if p.is_file() and is_metrics(p)]


def _run_dirs(directory: Path) -> list[Path]:
    return [d for d in (directory, *sorted(directory.glob("*")), *sorted(directory.glob("*/*"))) if (d / "rollouts").is_dir()]


def find_traces(directory: Path, context: dict) -> list[Path]:
    """rollouts/step_N/train/effective/traces.jsonl by step; steps with only train/all are noted by read (not read)."""
    found = []
    for run in _run_dirs(directory):
        steps = [p for p in (run / "rollouts").iterdir() if STEP_DIR.match(p.name)]
        for step_dir in sorted(steps, key=lambda p: int(STEP_DIR.match(p.name).group(1))):
            path = step_dir.joinpath(*TRAINED, TRACES)
            if path.is_file():
                found.append(path)
    return found


def _is_traces(name: str) -> bool:
    return name == TRACES


def _read_given_traces(path: Path, imported: Imported, context: dict | None = None) -> None:
    """A traces.jsonl given by path: only the trained batch is read as training completions."""
    if tuple(path.parent.parts[-2:]) != TRAINED:
        imported.notes.append(f"{path}: {'/'.join(path.parent.parts[-2:])} traces (evaluation, or every arrival including errored and "
                              "rejected ones): not read as training completions; prime-rl's trained batch is train/effective")
        return
    read_traces(path, imported, context)


IMPORTER = Importer(
    name="prime_rl",
    title="prime-rl",
    order=16,  # before verl, whose .jsonl format would claim a metrics.jsonl given by path
    formats=(
        LogFormat(matches=lambda name: name == METRICS, read=read_metrics, file_phrase="a prime-rl metrics.jsonl", find=find_metrics,
                  dir_phrase="prime-rl metrics.jsonl", help="prime-rl metrics.jsonl"),
        LogFormat(matches=_is_traces, read=_read_given_traces, file_phrase="a prime-rl rollouts/step_N/train/effective/traces.jsonl",
                  find=find_traces, read_found=read_traces, dir_phrase="prime-rl rollouts/step_N/train/effective/traces.jsonl",
                  help="prime-rl rollouts/step_N/…/traces.jsonl", completions="prime-rl rollouts/step_N/train/effective/traces.jsonl"),
    ),
    keys=tuple(_KEYS),
    key_pattern=_pattern,
    # the trainer's HF weights of step N (orchestrator/utils.py L136-155 get_weight_dir: checkpoints/step_N/weight/, beside the
    # DCP state in checkpoints/step_N/trainer/); the step is the parent's name (step_N, policyshift's own step prefix)
    checkpoints=(CheckpointLayout("prime-rl weights", lambda p: p.name == "weight" and bool(STEP_DIR.match(p.parent.name)),
                                  "checkpoints/step_N/weight/ (prime-rl)"),),
)
