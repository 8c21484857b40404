"""`policyshift analyze PATHS --reference SFT --prompts FILE`: the policy-shift analysis of any
trainer's checkpoints.

The reference and each checkpoint (found by analysis.discover, in step order) sample the same fixed
prompts with the same seed and batching through analysis.probe.sample_fixed_prompts — the function
the trainer's live analysis uses — and are scored by the reference (per-token log-ratio, k3, exact
KL), the reward and gold when given. The results are written as a policyshift run directory
(config.yaml, metrics.jsonl with `fixed/`-prefixed per-checkpoint aggregates, samples.jsonl) so
`policyshift report DIR` rebuilds the report. Everything is written to a temporary directory renamed
into place at the end: a failure leaves no half-written output.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from policyshift.analysis.discover import Checkpoint, DiscoveryError, find_checkpoints, is_adapter_dir
from policyshift.analysis.probe import FIXED_PREFIX, fixed_prompt_metrics, sample_fixed_prompts
from policyshift.runfiles import COMPLETIONS_FILE, CONFIG_FILE, DISTRIBUTIONS_FILE, FINDINGS_FILE, METRICS_FILE, REPORT_FILE, SAMPLES_FILE, write_jsonl
from policyshift.checks import fit_prompt_length
from policyshift.config import RolloutConfig
from policyshift.models import (ModelError, PolicyAndCritic, freeze, load_causal_lm, load_config, load_tokenizer, local_path_or_hub_id,
                                same_vocabulary)

ANALYZE_SOURCE = "policyshift analyze"  # config.yaml analysis.source of an analyzed run (its output dir may be replaced)


@dataclass
class AnalyzeSettings:
    prompts: str
    prompt_field: str = "prompt"
    reward_model: str | None = None
    reward_function: str | None = None
    gold_reward_model: str | None = None
    gold_reward_function: str | None = None
    max_new_tokens: int = 48
    temperature: float = 1.0
    batch_size: int = 16  # prompts per generation batch: part of what the samples depend on, with the seed
    seed: int = 0  # a policyshift run's own fixed-prompt rows are reproduced with its train.seed + 7
    max_prompt_length: int = 64
    kl_budget: float | None = None  # sequence-KL nats for the KL-runaway detector (default: the detectors')
    logs: list[str] = field(default_factory=list)  # other trainers' logs to import (analysis.ingest)
    score_completions: bool = False  # colour imported completions at checkpoint steps by log π_ckpt/π_ref
    probes: list = field(default_factory=list)  # config.ProbeSuiteConfig each (--probes FILE): probe/<name> per checkpoint
    max_prompts: int = 64  # a larger prompt set is sampled to this many fixed prompts (every checkpoint samples each one)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def gather_checkpoints(paths: list[str]) -> tuple[list[Checkpoint], list[str]]:
    """Checkpoints of every PATH in step order. A model directory with no step in its name or trainer
    state takes its position among the PATHs (1, 2, ...) as its step."""
    found, notes = [], []
    for position, path in enumerate(paths, 1):
        checkpoints, skipped = find_checkpoints(path)
        notes += skipped
        found += [c if c.step is not None else Checkpoint(c.path, position, c.layout + " (step = position among the PATHs)") for c in checkpoints]
    by_step: dict[int, Checkpoint] = {}
    for ckpt in found:
        if ckpt.step in by_step:
            raise DiscoveryError(f"{ckpt.path} and {by_step[ckpt.step].path} are both step {ckpt.step}: give one run per call")
        by_step[ckpt.step] = ckpt
    return [by_step[s] for s in sorted(by_step)], notes


def _check_adapter_base(path: Path) -> None:
    import json

    if not is_adapter_dir(path):
        return
    try:
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"{path}: adapter_config.json names no base_model_name_or_path") from None
    if not base:
        raise ModelError(f"{path}: LoRA adapter whose base model '{base}' cannot be found (expected a local model directory)")
    try:
        local_path_or_hub_id(base)  # a path that cannot be a hub id (/x, ./x, a/b/c), or any missing one offline
    except ModelError:
        raise ModelError(f"{path}: LoRA adapter whose base model '{base}' cannot be found (expected a local model directory)") from None


def check_checkpoint(ckpt: Checkpoint, ref_tokenizer, ref_config=None) -> None:
    """The cheap checks, before the reference samples anything (minutes on a real model): an adapter's base
    exists; the config loads and is a causal LM whose vocabulary size is the reference's; every safetensors
    weights file opens (its header: no tensor is read); a saved tokenizer matches the reference's vocabulary.
    ModelError (one line) otherwise."""
    _check_adapter_base(ckpt.path)
    if not is_adapter_dir(ckpt.path):
        _, config = load_config(str(ckpt.path), "causal language model", False)
        architectures = config.architectures or []
        if architectures and all(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures):
            raise ModelError(f"'{ckpt.path}' is a {architectures[0]}, not a causal language model")
        ref_vocab = getattr(ref_config, "vocab_size", None)
        vocab = getattr(config, "vocab_size", None)
        if isinstance(ref_vocab, int) and isinstance(vocab, int) and vocab != ref_vocab:
            raise ModelError(f"{ckpt.path}: its vocabulary differs from the reference's ({vocab} vs {ref_vocab} tokens in config.json); "
                             "a per-token KL needs the reference the run started from")
        _check_weight_headers(ckpt.path)
    if (ckpt.path / "tokenizer_config.json").is_file() or (ckpt.path / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(str(ckpt.path))
        if not same_vocabulary(tokenizer, ref_tokenizer):
            raise ModelError(f"{ckpt.path}: its tokenizer's vocabulary differs from the reference's ({len(tokenizer)} vs {len(ref_tokenizer)} "
                             "tokens); a per-token KL needs the reference the run started from")


def _check_weight_headers(path: Path) -> None:
    """Each safetensors file opens (header parsed, sizes consistent with the file; no tensor read)."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as exc:  # noqa: BLE001 — safetensors raises its own error type; any failure to open is the finding
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ModelError(f"cannot load causal language model from '{path}': {file} is damaged ({first})") from None


def load_checkpoint_policy(ckpt: Checkpoint, ref_vocab_rows: int):
    """The checkpoint's policy, frozen; ModelError (one line) when it cannot be used against this reference."""
    policy = freeze(load_causal_lm(str(ckpt.path)))
    rows = policy.get_output_embeddings().weight.shape[0]
    if rows != ref_vocab_rows:
        raise ModelError(f"{ckpt.path}: {rows}-token output layer, the reference has {ref_vocab_rows}; a per-token KL needs the reference the run started from")
    return policy


def check_same_run(imported, checkpoints: list[Checkpoint], logs: list[str]) -> None:
    """Logs and checkpoints of two different runs given together: one line (DiscoveryError).

    A checkpoint may carry its trainer's log up to its step (each importer's `checkpoint_log`: an HF Trainer
    checkpoint's trainer_state.json); an imported log that
    disagrees with it at a shared step (same key, different value) is another run's. Any log whose last
    step comes before every checkpoint cannot describe those checkpoints either."""
    from policyshift.analysis.ingest import IMPORTERS, RAW_PREFIXES

    logged = {step: row for step, row in imported.history.items() if any(k.startswith(RAW_PREFIXES) for k in row)}
    for ckpt in checkpoints:
        for importer in IMPORTERS:
            found = importer.checkpoint_log(ckpt.path) if importer.checkpoint_log is not None else None
            if found is None:
                continue
            state_file, entries = found
            for entry in entries:
                row = logged.get(entry.get("step")) if isinstance(entry, dict) else None
                for key, value in (entry.items() if row else ()):
                    mine = row.get(f"{importer.name}/{key}")
                    if key != "step" and isinstance(value, (int, float)) and isinstance(mine, (int, float)) and abs(mine - value) > 1e-6 * max(1.0, abs(value)):
                        raise DiscoveryError(f"--logs {' '.join(logs)} and {ckpt.path} are from different runs: at step {entry['step']} "
                                             f"{key} is {mine:g} in the logs and {value:g} in {state_file}")
    if logged and checkpoints and max(logged) < checkpoints[0].step:
        raise DiscoveryError(f"--logs {' '.join(logs)} end at step {max(logged)}, before the first checkpoint (step {checkpoints[0].step}, "
                             f"{checkpoints[0].path}): logs and checkpoints of different runs?")


def _output_dir_ok(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DiscoveryError(f"--out {out}: exists and is not a directory")
    config = out / CONFIG_FILE
    ours = config.is_file() and ANALYZE_SOURCE in config.read_text(errors="replace")
    if any(out.iterdir()) and not ours:
        raise DiscoveryError(f"--out {out}: exists and is not the output of an earlier `policyshift analyze`; choose an empty or new directory")


@dataclass
class Reference:
    """What every run of one call shares: the reference (loaded once, kept loaded), its tokenizer, the
    fixed prompts, the rewards and the sampling settings; `probe` samples and scores one model."""

    path: str
    settings: AnalyzeSettings
    tokenizer: object
    model: torch.nn.Module
    prompts: list[str]
    fields: dict[str, list]  # the prompt rows' other columns, for reward functions that take them
    reward: object
    gold: object
    rollout: RolloutConfig
    max_prompt_length: int
    suites: list = field(default_factory=list)  # analysis.suites.Suite

    @property
    def vocab_rows(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def probe(self, policy, step: int, model: str, source: str) -> tuple[list[dict], dict]:
        start = time.perf_counter()
        rows = sample_fixed_prompts(PolicyAndCritic(policy), self.model, self.tokenizer, self.prompts, self.rollout, self.max_prompt_length,
                                    reward=self.reward, gold_reward=self.gold, seed=self.settings.seed, fields=self.fields)
        seconds = time.perf_counter() - start
        rows = [{"step": step, **r, "model": model, "checkpoint": source} for r in rows]
        metrics = {FIXED_PREFIX + k: v for k, v in fixed_prompt_metrics(rows).items()}
        if self.suites:
            from policyshift.analysis.suites import evaluate_suites

            metrics.update(evaluate_suites(self.suites, PolicyAndCritic(policy), self.model, self.tokenizer, self.rollout, self.settings.seed,
                                           lambda line: _progress(f"warning: {line}")))
        return rows, {"step": step, **metrics, FIXED_PREFIX + "seconds": seconds}


def load_reference(reference: str, settings: AnalyzeSettings) -> Reference:
    from policyshift.data import load_prompt_rows
    from policyshift.rewards import make_reward

    try:
        tokenizer = load_tokenizer(reference)
    except ModelError as exc:
        raise ModelError(f"--reference {reference}: {exc}") from None
    rows = load_prompt_rows(settings.prompts, settings.prompt_field, tokenizer=tokenizer)  # chat rows: the reference's chat template
    try:  # after the prompts: a bad prompt file is one line before the reference's weights are read
        model = freeze(load_causal_lm(reference))
    except ModelError as exc:
        raise ModelError(f"--reference {reference}: {exc}") from None
    from policyshift.analysis.zeroconf import bounded

    rows, line = bounded(rows, settings.max_prompts, settings.seed)  # 512 prompts × every checkpoint: minutes each on a CPU
    if line:
        _progress(line)
    prompts = [row.text for row in rows]
    fields = {k: [row.fields.get(k) for row in rows] for k in sorted({k for row in rows for k in row.fields})}
    reward = make_reward(settings.reward_model, settings.reward_function) if (settings.reward_model or settings.reward_function) else None
    gold = (make_reward(settings.gold_reward_model, settings.gold_reward_function)
            if (settings.gold_reward_model or settings.gold_reward_function) else None)
    rollout = RolloutConfig(batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature)
    max_prompt_length = fit_prompt_length(model, tokenizer, prompts, settings.max_prompt_length, settings.max_new_tokens)
    from policyshift.analysis.suites import load_suites

    suites = load_suites(settings.probes, tokenizer, model, settings.max_prompt_length, settings.max_new_tokens)
    return Reference(reference, settings, tokenizer, model, prompts, fields, reward, gold, rollout, max_prompt_length, suites)


@dataclass
class RunPlan:
    """One run to analyze: its label (several runs side by side), checkpoints, notes, imported logs."""

    label: str | None
    checkpoints: list[Checkpoint]
    notes: list[str]
    imported: object = None


def _plans(paths: list[str], labels: list[str] | None, logs: list[str]) -> list[RunPlan]:
    if not labels:
        checkpoints, notes = gather_checkpoints(paths)
        imported = None
        if logs:
            from policyshift.analysis.ingest import import_logs

            imported = import_logs(logs)  # parse errors surface before any model is loaded
            check_same_run(imported, checkpoints, logs)
        return [RunPlan(None, checkpoints, notes, imported)]
    if len(labels) != len(paths):
        raise DiscoveryError(f"--label given {len(labels)} times for {len(paths)} PATHs: one label per run directory")
    if len(set(labels)) != len(labels) or any(not label or "/" in label or label.startswith(".") for label in labels):
        raise DiscoveryError(f"--label {' '.join(labels)}: labels must be distinct names (no '/', not starting with '.')")
    if logs:
        raise DiscoveryError("--logs with --label: import each run's logs in its own `policyshift analyze` call")
    return [RunPlan(label, *gather_checkpoints([path])) for label, path in zip(labels, paths)]


def check_plans(plans: list[RunPlan], reference: str) -> None:
    """Drop each checkpoint that fails check_checkpoint (a note says why); DiscoveryError when a run has none left.
    Reads only the reference's tokenizer and config."""
    try:
        ref_tokenizer = load_tokenizer(reference)
        ref_config = None if is_adapter_dir(Path(reference).expanduser()) else load_config(reference, "causal language model", False)[1]
    except ModelError as exc:
        raise ModelError(f"--reference {reference}: {exc}") from None
    for plan in plans:
        usable = []
        for ckpt in plan.checkpoints:
            try:
                check_checkpoint(ckpt, ref_tokenizer, ref_config)
                usable.append(ckpt)
            except ModelError as exc:
                plan.notes.append(f"skipped: {exc}")
        if not usable:
            raise DiscoveryError(f"no checkpoint can be analyzed{f' in run {plan.label}' if plan.label else ''}: " + "; ".join(plan.notes))
        plan.checkpoints = usable


def analyze(paths: list[str], reference: str, out_dir: str | Path, settings: AnalyzeSettings, labels: list[str] | None = None,
            progress=_progress) -> dict:
    """Analyze the checkpoints under `paths` against `reference` and write the run directory `out_dir`
    (with its report.html). With `labels` (one per PATH) each PATH is its own run, written to
    OUT/<label>/, and OUT/report.html puts the runs side by side. Returns a summary: checkpoints
    analyzed, notes, seconds per checkpoint."""
    out = Path(out_dir).expanduser()
    _output_dir_ok(out)
    plans = _plans(paths, labels, settings.logs)
    check_plans(plans, reference)  # every checkpoint's cheap checks before the reference is loaded and sampled (minutes on a real model)
    ref = load_reference(reference, settings)
    progress(f"reference {reference}: sampling {len(ref.prompts)} fixed prompts")
    reference_rows = ref.probe(ref.model, 0, "reference", reference)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        results = [_analyze_run(ref, plan, reference_rows, tmp / plan.label if plan.label else tmp, out / plan.label if plan.label else out, progress)
                   for plan in plans]
        if labels:
            from policyshift.analysis.multirun import write_comparison

            (tmp / CONFIG_FILE).write_text(yaml.safe_dump({"analysis": {"source": ANALYZE_SOURCE, "runs": list(labels), "reference": reference}},
                                                          sort_keys=False))
            write_comparison(tmp, out.name)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = [s for r in results for s in r["seconds"]]
    return {"out": out, "checkpoints": [c for r in results for c in r["checkpoints"]], "notes": [n for r in results for n in r["notes"]],
            "seconds_per_checkpoint": sum(seconds) / len(seconds)}


def _analyze_run(ref: Reference, plan: RunPlan, reference_rows, target: Path, final: Path, progress) -> dict:
    """Probe each checkpoint of one run and write its records and report into `target` (a fresh
    directory that becomes `final`)."""
    settings, notes = ref.settings, plan.notes
    samples, metrics = [dict(r) for r in reference_rows[0]], dict(reference_rows[1])
    history = {0: metrics}
    imported = plan.imported
    completions = imported.completions if imported is not None else []
    for row in completions:  # token lengths by the policy's tokenizer: the length-vs-reward check reads them
        row["length"] = len(ref.tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
    analyzed, seconds, scored = [], [], {"completions": 0, "seconds": 0.0}
    for ckpt in plan.checkpoints:
        try:
            policy = load_checkpoint_policy(ckpt, ref.vocab_rows)
        except ModelError as exc:  # reported with the other notes at the end
            notes.append(f"skipped: {exc}")
            continue
        progress(f"{plan.label + ' ' if plan.label else ''}step {ckpt.step}: {ckpt.path} ({ckpt.layout})")
        rows, metrics = ref.probe(policy, ckpt.step, "policy", str(ckpt.path))
        if settings.score_completions:
            # a completion logged at step S was sampled before update S, by the policy of step S − 1 (TRL and verl log
            # the batch they are about to train on): checkpoint C scores the completions logged at C + 1
            at_step = [row for row in completions if row.get("sampled_before_update", row["step"]) == ckpt.step + 1]
            if at_step:
                start = time.perf_counter()
                color_completions(policy, ref, at_step)
                scored["completions"] += len(at_step)
                scored["seconds"] += time.perf_counter() - start
        del policy
        gc.collect()
        samples += rows
        history.setdefault(ckpt.step, {}).update(metrics)
        analyzed.append({"step": ckpt.step, "path": str(ckpt.path), "layout": ckpt.layout})
        seconds.append(metrics[FIXED_PREFIX + "seconds"])
    if not analyzed:
        raise DiscoveryError(f"no checkpoint could be analyzed{f' in run {plan.label}' if plan.label else ''}: " + "; ".join(notes))

    config = {
        "analysis": {
            "source": ANALYZE_SOURCE,
            "reference": ref.path,
            **({"label": plan.label} if plan.label else {}),
            "checkpoints": analyzed,
            "skipped": notes,
            "prompts": settings.prompts,
            "num_prompts": len(ref.prompts),
            "seed": settings.seed,
            **({"kl_budget": settings.kl_budget} if settings.kl_budget else {}),
            "reward_model": settings.reward_model,
            "reward_function": settings.reward_function,
            "gold_reward_model": settings.gold_reward_model,
            "gold_reward_function": settings.gold_reward_function,
            **({"probes": [dataclasses.asdict(p) for p in settings.probes]} if settings.probes else {}),
        },
        "kl": {"estimator": "k1"},  # the sampled per-token estimate in samples.jsonl and fixed/kl/token_mean
        "rollout": {"batch_size": settings.batch_size, "max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                    "max_prompt_length": ref.max_prompt_length},
        "model": {"policy": str(analyzed[-1]["path"]), "reference": ref.path},
    }
    distributions = []
    if imported is not None:
        for step, row in imported.history.items():
            history.setdefault(step, {}).update(row)
        distributions = imported.distributions
        notes += imported.notes
        config["analysis"]["imported"] = imported.sources
        if settings.score_completions:
            config["analysis"]["completions_scored"] = scored

    target.mkdir(parents=True, exist_ok=True)
    (target / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    write_jsonl(target / METRICS_FILE, [{"step": s, **{k: v for k, v in history[s].items() if k != "step"}} for s in sorted(history)])
    write_jsonl(target / SAMPLES_FILE, samples)
    if distributions:
        write_jsonl(target / DISTRIBUTIONS_FILE, distributions)
    if completions:
        write_jsonl(target / COMPLETIONS_FILE, completions)
    from dataclasses import replace

    from policyshift.analysis.report import render_report
    from policyshift.analysis.runlog import load_run

    # rendered under the output's own name (the page title), then moved in with the rest
    loaded = replace(load_run(target), run_dir=final)
    (target / REPORT_FILE).write_text(render_report(loaded), encoding="utf-8")
    # the verdicts, as the trainer's live analysis logs its own (one row per finding the report shows)
    from policyshift.analysis.report import run_findings
    from policyshift.tracking.jsonl import JsonlSink

    (target / FINDINGS_FILE).touch()  # present and empty: analyzed, nothing found (a missing file would read as "not analyzed")
    JsonlSink(target).log_findings([f.log_row() for f in run_findings(loaded)[0]], loaded.last_step)
    return {"checkpoints": analyzed, "notes": notes, "seconds": seconds}


def color_completions(policy, ref: Reference, rows: list[dict]) -> None:
    """Per-token log π/π_ref of logged completions (re-tokenized with the reference's tokenizer), added
    to the rows as `tokens`, `token_log_ratio` and `seq_kl`: π is the checkpoint that sampled them (the step before
    the one they were logged at; earlier still when the trainer reuses a generation for several steps)."""
    from policyshift.analysis.probe import score_texts

    scored = score_texts(policy, ref.model, ref.tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows],
                         ref.settings.temperature, ref.settings.batch_size, ref.max_prompt_length)
    for row, (tokens, log_ratio) in zip(rows, scored):
        row.update({"tokens": tokens, "token_log_ratio": [round(x, 5) for x in log_ratio], "seq_kl": sum(log_ratio)})
        row["scored_by_checkpoint_step"] = row.get("sampled_before_update", row["step"]) - 1
