"""`policyshift` command line. Every user error ends in one line on stderr and exit status 2,
never a traceback (set POLICYSHIFT_DEBUG=1 to see one)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings

from policyshift.errors import UserError  # every user error: one line, exit 2
from policyshift.runfiles import CONFIG_FILE, METRICS_FILE


def cmd_train(args, extra: list[str]) -> int:
    from pathlib import Path

    from policyshift.config import ConfigError, PPOConfig, load_yaml, parse_overrides
    from policyshift.checkpoint import wait_for_checkpoints
    from policyshift.rundir import run_state
    from policyshift.trainer import PPOTrainer

    overrides = parse_overrides(extra)
    if args.stop_on:
        overrides["analysis.stop_on"] = args.stop_on
    if args.resume is not None and not args.resume.strip():
        raise ConfigError("--resume needs a run directory or 'auto'")
    if args.resume and args.resume != "auto":  # the run's own resolved config, then any overrides
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        config = PPOConfig.from_dict(load_yaml(args.config or run_dir / CONFIG_FILE), {**overrides, "train.output_dir": str(run_dir)})
    else:
        config = PPOConfig.from_dict(load_yaml(args.config) if args.config else {}, overrides)
    # --resume RUN_DIR / auto continue a run that has a checkpoint; one that died before its first
    # checkpoint (or none at all, for auto) starts over
    resume = bool(args.resume) and run_state(config.train.output_dir or ".").kind in ("resumable", "finished")
    trainer = PPOTrainer(config, resume=resume)
    if resume:
        print(f"resuming {config.train.output_dir} from {trainer.resumed_from.name}", file=sys.stderr)
    trainer.train()
    trainer.close()
    wait_for_checkpoints()  # the last checkpoint's manifest (written in the background) before the lock goes
    if trainer.run_lock is not None:
        trainer.run_lock.release()
    if trainer.stop_signal is not None:
        print(f"stopped by signal; checkpoint at step {trainer.step} in {config.train.output_dir}", file=sys.stderr)
        return 130 if trainer.stop_signal == signal.SIGINT else 0
    print(f"run written to {config.train.output_dir}")
    return 0


def cmd_verify(args, extra: list[str]) -> int:
    from policyshift.checkpoint import CheckpointError, verify_run

    results = verify_run(args.run_dir)
    for name, problem, how in results:
        print(f"{name}: DAMAGED: {problem}" if problem else f"{name}: ok ({how})")
    bad = [(name, problem) for name, problem, _ in results if problem]
    if bad:
        raise CheckpointError(f"{len(bad)} of {len(results)} checkpoint directories in {args.run_dir} are damaged; first: {bad[0][1]}")
    return 0


def cmd_report(args, extra: list[str]) -> int:
    from pathlib import Path

    from policyshift.analysis.report import build_report
    from policyshift.data import DataError

    if not (Path(args.run_dir) / METRICS_FILE).is_file() and not (Path(args.run_dir) / CONFIG_FILE).is_file():
        raise DataError(f"{args.run_dir} is not a policyshift run directory (no metrics.jsonl or config.yaml)")
    notes: list[str] = []
    path = build_report(args.run_dir, notes=notes)
    for note in notes:
        warn_line("report", note)
    print(path)
    return _fail_on(args.run_dir, args.fail_on)


FAIL_EXIT = 3  # --fail-on: a finding at least that severe stands (0 ok, 2 user error, 130 interrupted)


def _fail_on(run_dir, level: str | None) -> int:
    """Exit status 3 and one stderr line per finding when a finding of `level` or worse stands (CI gate)."""
    if not level:
        return 0
    from pathlib import Path

    from policyshift.analysis.report import run_findings
    from policyshift.analysis.runlog import config_get, load_run

    worst = {"warning": ("warning", "critical"), "critical": ("critical",)}[level]
    run = load_run(run_dir)
    labels = config_get(run.config, "analysis.runs") or []  # `analyze --label`: each run gated on its own findings
    status = 0
    for label, loaded in [(label, load_run(Path(run_dir) / label)) for label in labels] or [("", run)]:
        findings = [f for f in run_findings(loaded)[0] if f.severity in worst]
        for f in findings:
            print(f"{label + ': ' if label else ''}{f.severity} {f.detector} (step {f.step}): {f.message}", file=sys.stderr)
        status = FAIL_EXIT if findings else status
    return status


def cmd_analyze(args, extra: list[str]) -> int:
    from policyshift.analysis.analyze import AnalyzeSettings, analyze

    from policyshift.analysis.zeroconf import choose
    from policyshift.errors import DataError

    from policyshift.analysis.discover import check_run_path
    from policyshift.checks import check_named_inputs

    for path in args.paths:  # what was typed first is reported first (not the reference the run records)
        check_run_path(path)
    check_named_inputs(models=[("--reference", args.reference)], prompts=[args.prompts],
                       rewards=[(args.reward_model, args.reward_function), (args.gold_reward_model, args.gold_reward_function)])
    _check_sampling_flags(args, args.out)
    chosen = choose(args.paths, args.reference, args.prompts, args.logs, args.out) if not args.label else None
    if args.label and (args.reference is None or args.prompts is None):
        raise DataError("--label: give --reference and --prompts (the runs side by side share them)")
    for line in chosen.lines if chosen else []:
        print(line, file=sys.stderr)
    args.reference, args.prompts = (chosen.reference, chosen.prompts) if chosen else (args.reference, args.prompts)
    args.logs = chosen.logs if chosen else args.logs
    settings = AnalyzeSettings(
        prompts=args.prompts, prompt_field=args.prompt_field, reward_model=args.reward_model, reward_function=args.reward_function,
        gold_reward_model=args.gold_reward_model, gold_reward_function=args.gold_reward_function, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, batch_size=args.batch_size, seed=args.seed, max_prompt_length=args.max_prompt_length,
        kl_budget=args.kl_budget, logs=args.logs or [], score_completions=args.score_completions, probes=_probes(args),
        max_prompts=args.max_prompts)
    result = analyze(args.paths, args.reference, args.out, settings, labels=args.label)
    for note in result["notes"]:
        warn_line("analyze", note)
    print(f"{len(result['checkpoints'])} checkpoints analyzed ({result['seconds_per_checkpoint']:.2f} s each): {result['out']}/report.html")
    return _fail_on(result["out"], args.fail_on)


def _probes(args) -> list:
    from policyshift.analysis.suites import read_probe_suites

    return read_probe_suites(args.probes) if args.probes else []


def _check_sampling_flags(args, out: str) -> None:
    """The sampling commands' (compare, analyze) flags, before any model loads."""
    import math

    from policyshift.checks import check_output_dir
    from policyshift.config import ConfigError

    check_output_dir(out, "--out")
    positive = [("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)]
    for flag, value in positive + [("--max-prompt-length", getattr(args, "max_prompt_length", 1))]:
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1; got {value}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"--temperature must be > 0 (sampling divides the logits by it); got {args.temperature}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0; got {args.seed}")
    budget = getattr(args, "kl_budget", None)
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"--kl-budget must be > 0 nats; got {budget}")


def cmd_compare(args, extra: list[str]) -> int:
    from policyshift.analysis.compare import compare_checkpoints

    from policyshift.checks import check_named_inputs

    out = "compare_out" if args.out is None else args.out
    check_named_inputs(models=[args.a, args.b], prompts=[args.prompts], rewards=[(args.reward_model, args.reward_function)])
    _check_sampling_flags(args, out)
    r = compare_checkpoints(args.a, args.b, args.prompts, out, args.reward_model, args.reward_function, args.max_new_tokens,
                            args.temperature, args.seed, args.batch_size, prompt_field=args.prompt_field, probes=_probes(args))
    kl = r["kl_b_from_a"]
    print(f"KL(B‖A) per sequence: k1 {kl['k1_seq_mean']:.4f}  k3 {kl['k3_seq_mean']:.4f}  exact {kl['exact_seq_mean']:.4f} nats")
    if r["reward"]:
        print(f"reward mean: A {r['reward']['a_mean']:.4f}  B {r['reward']['b_mean']:.4f}")
    for name, p in r["probes"].items():
        print(f"probe {name}: A {p['a_mean']:.4f} ± {p['a_se']:.4f}  B {p['b_mean']:.4f} ± {p['b_se']:.4f}"
              f" ({'higher' if p['higher_is_better'] else 'lower'} is better)")
    print(f"written: {out}/compare.html, {out}/compare.json")
    return 0


def _stage_config(cls, args, extra: list[str]):
    """A flat stage config from --config YAML and --field value flags (checked like the PPO config)."""
    from policyshift.config import ConfigError, build_dataclass, load_yaml, parse_overrides

    values = {**(load_yaml(args.config) if args.config else {}), **parse_overrides(extra, cls)}
    import dataclasses

    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in values]
    if missing:
        raise ConfigError(f"missing required option(s): {', '.join('--' + m for m in missing)}")
    return build_dataclass(cls, values, "")


def _check_model_paths(*paths) -> None:
    from policyshift.models import local_path_or_hub_id

    for path in paths:
        if path:
            local_path_or_hub_id(path)  # ModelError (one line) for a local path that is not there


def cmd_sft(args, extra: list[str]) -> int:
    from policyshift.checks import fit_stage_length, validate_stage
    from policyshift.data import check_data_file
    from policyshift.stages.sft import SFTConfig, run_sft

    cfg = _stage_config(SFTConfig, args, extra)
    validate_stage(cfg)
    check_data_file(cfg.data, "SFT data")  # before the model's config is read (a hub id: a download)
    _check_model_paths(cfg.model, cfg.tokenizer)
    if cfg.model:
        fit_stage_length(cfg, "seq_len", cfg.model)
    metrics = run_sft(cfg)
    print(f"SFT model written; held-out loss {metrics.get('eval_loss') or float('nan'):.4f}")
    return 0


def cmd_reward_model(args, extra: list[str]) -> int:
    from policyshift.checks import fit_stage_length, validate_stage
    from policyshift.data import check_data_file
    from policyshift.stages.reward_model import RewardModelConfig, run_reward_model

    cfg = _stage_config(RewardModelConfig, args, extra)
    validate_stage(cfg)
    check_data_file(cfg.pairs, "pairs")
    _check_model_paths(cfg.base_model)
    fit_stage_length(cfg, "max_length", cfg.base_model)
    metrics = run_reward_model(cfg)
    print(f"reward model written; held-out pairwise accuracy {metrics.get('eval_accuracy') or float('nan'):.3f}")
    return 0


def cmd_demo(args, extra: list[str]) -> int:
    from policyshift.checks import check_output_dir
    from policyshift.config import ConfigError
    from policyshift.demo.pipeline import run_demo

    check_output_dir(args.out, "--out")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0; got {args.seed}")
    run_demo(args.out, seed=args.seed, quick=args.quick, algorithm=args.algorithm)
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as one line like every other user error (its default prints the usage
    block first); --help still prints the usage."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from policyshift.analysis.ingest import CHECKPOINT_TRAINERS, LOGS_HELP  # the importers' registry names what analyze reads

    parser = OneLineParser(prog="policyshift", description="RLHF fine-tuning (PPO, GRPO, RLOO, REINFORCE++) with a KL penalty to the reference, "
                                                          "and an analysis of how the policy shifts (also of other trainers' runs).")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="PPO or a critic-free group method (algorithm.advantage) against a reward, with a KL penalty to the reference",
                           description="Any config field can be overridden: --section.key value (e.g. --ppo.clip_range 0.1).")
    train.add_argument("--config", help="YAML config file")
    train.add_argument("--stop-on", choices=["none", "warning", "critical"],
                       help="end the run cleanly (checkpoint kept) when a detector finding this severe fires (= --analysis.stop_on)")
    train.add_argument("--resume", metavar="RUN_DIR|auto",
                       help="continue RUN_DIR from its latest complete checkpoint; 'auto': the config's output_dir if it has one, else start")
    train.set_defaults(func=cmd_train)
    report = sub.add_parser("report", help="write RUN_DIR/report.html")
    report.add_argument("run_dir", help="a policyshift run directory (also one written by analyze); readable mid-run")
    report.add_argument("--fail-on", choices=["warning", "critical"], help="exit 3 when a finding this severe (or worse) stands")
    report.set_defaults(func=cmd_report)
    analyze = sub.add_parser("analyze", help=f"the policy-shift analysis of any trainer's checkpoints ({CHECKPOINT_TRAINERS})",
                             description="Sample fixed prompts from the reference and each checkpoint, score them with the reference "
                                         "(per-token KL), the reward and gold; write a run directory with report.html.")
    analyze.add_argument("paths", nargs="+", metavar="PATH", help="run directories (checkpoints found by trainer convention) or model directories")
    analyze.add_argument("--reference", help="the model the run started from (SFT), HF directory (default: what the run records: "
                         "model card base_model, adapter base, config _name_or_path, verl's saved model path)")
    analyze.add_argument("--prompts", help="fixed prompts (.jsonl/.json/.txt/...) (default: the run's own logged training prompts)")
    analyze.add_argument("--max-prompts", type=int, default=64, help="fixed prompts sampled from a larger prompt set (default 64)")
    analyze.add_argument("--prompt-field", default="prompt", help="the column (or JSON key) of --prompts that holds the prompt")
    reward = analyze.add_mutually_exclusive_group()
    reward.add_argument("--reward", dest="reward_model", help="HF sequence-classification reward model")
    reward.add_argument("--reward-function", help="module:function or file.py:function")
    gold = analyze.add_mutually_exclusive_group()
    gold.add_argument("--gold-reward", dest="gold_reward_model", help="gold reward model (measured, for proxy-vs-gold divergence)")
    gold.add_argument("--gold-reward-function", help="gold reward as module:function or file.py:function")
    analyze.add_argument("--logs", nargs="+", metavar="LOG", help=f"other trainers' logs to import: {LOGS_HELP}")
    analyze.add_argument("--score-completions", action="store_true", help="colour imported completions logged at a checkpoint's step "
                         "by log π_checkpoint/π_ref (one forward pass of each model per completion)")
    analyze.add_argument("--label", action="append", help="one per PATH: each PATH is its own run (OUT/LABEL/), shown side by side in OUT/report.html")
    analyze.add_argument("--out", default="analyze_out", help="output run directory (default analyze_out)")
    analyze.add_argument("--max-new-tokens", type=int, default=48, help="response tokens sampled per prompt at most")
    analyze.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (plain softmax: no top-k/top-p)")
    analyze.add_argument("--batch-size", type=int, default=16, help="prompts sampled per forward batch (a policyshift run's own: rollout.batch_size)")
    analyze.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every checkpoint (a policyshift run's own: train.seed + 7)")
    analyze.add_argument("--max-prompt-length", type=int, default=64, help="prompt tokens kept (longer prompts are cut from the left)")
    analyze.add_argument("--kl-budget", type=float, help="sequence-KL nats the KL-runaway detector allows (default 10)")
    analyze.add_argument("--probes", metavar="YAML", help="probe suites scored on the reference and each checkpoint: a YAML file with "
                         "'probes: [{name, prompts, scorer, higher_is_better}]' (or a training config's analysis.probes)")
    analyze.add_argument("--fail-on", choices=["warning", "critical"], help="exit 3 when a finding this severe (or worse) stands")
    analyze.set_defaults(func=cmd_analyze)
    verify = sub.add_parser("verify", help="check every checkpoint and final/ of RUN_DIR against its manifest (sizes, SHA-256) without training")
    verify.add_argument("run_dir", help="a policyshift run directory")
    verify.set_defaults(func=cmd_verify)
    compare = sub.add_parser("compare", help="KL and side-by-side samples of two checkpoints (e.g. SFT vs RL)")
    compare.add_argument("a", help="reference checkpoint (e.g. the SFT model)")
    compare.add_argument("b", help="checkpoint to compare (e.g. the RL model)")
    compare.add_argument("--prompts", required=True, help="prompts both checkpoints sample (.jsonl/.json/.txt/...)")
    compare.add_argument("--prompt-field", default="prompt", help="the column (or JSON key) of --prompts that holds the prompt")
    reward = compare.add_mutually_exclusive_group()
    reward.add_argument("--reward", dest="reward_model", help="HF sequence-classification reward model")
    reward.add_argument("--reward-function", help="module:function or file.py:function")
    compare.add_argument("--out", help="output directory (default compare_out)")
    compare.add_argument("--max-new-tokens", type=int, default=48, help="response tokens sampled per prompt at most")
    compare.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (plain softmax: no top-k/top-p)")
    compare.add_argument("--batch-size", type=int, default=16, help="prompts sampled per forward batch")
    compare.add_argument("--seed", type=int, default=0, help="sampling seed, the same for A and B")
    compare.add_argument("--probes", metavar="YAML", help="probe suites scored on A and B (as in `analyze --probes`)")
    compare.set_defaults(func=cmd_compare)
    for name, func, what in (("sft", cmd_sft, "supervised fine-tuning: --data texts.jsonl --output_dir DIR [--model PATH] [--steps N ...]"),
                             ("reward-model", cmd_reward_model, "Bradley–Terry reward model: --pairs pairs.jsonl --base_model PATH --output_dir DIR")):
        stage = sub.add_parser(name, help=what.split(":")[0], description=what + " (any config field as --field value)")
        stage.add_argument("--config", help="YAML file of the stage's fields")
        stage.set_defaults(func=func)
    demo = sub.add_parser("demo", help="the whole pipeline on generated data: SFT, reward model, healthy and over-optimized PPO, reports")
    demo.add_argument("--out", default="demo_out", help="output directory: data, models, both runs and their reports")
    demo.add_argument("--seed", type=int, default=0, help="seeds the generated world and every stage (runs are deterministic for a seed)")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster version (under 2 minutes)")
    demo.add_argument("--algorithm", choices=["ppo", "grpo"], default="ppo",
                      help="ppo: with a critic (GAE); grpo: critic-free, 4 samples per prompt, KL as a loss term")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.getcwd() not in sys.path:  # `--reward.function my_rewards:score` finds my_rewards.py here, as `python -m` would
        sys.path.insert(0, os.getcwd())
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("train", "sft", "reward-model"):
        print(f"policyshift {args.command}: error: unrecognized arguments: {' '.join(extra)} (see policyshift {args.command} --help)", file=sys.stderr)
        return 2
    bars = args.command in MODEL_COMMANDS and _hf_progress_bars(False)  # per-file load/save bars: our own console reports progress
    try:
        with warnings.catch_warnings(), _quiet_hub_and_datasets():  # restored after: main() is also called in-process (tests, notebooks)
            warnings.showwarning = _one_line_warning(args.command)
            return _run(args, extra)
    finally:
        if bars:
            _hf_progress_bars(True)


@contextlib.contextmanager
def _quiet_hub_and_datasets():
    """huggingface_hub's and datasets' own log lines (HTTP retry notices for a hub id that cannot be reached)
    would come before, and bury, our one line: their loggers show errors only for the command (a failure
    still reaches us as an exception). datasets' progress bars: policyshift.data."""
    import logging

    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets", "filelock")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def entry() -> int:
    """The `policyshift` command (and `python -m policyshift`): main(), then, as one of several processes under
    `accelerate launch` whose run is complete (files closed, process group left), an immediate exit that skips the
    interpreter's teardown, where gloo's and autograd's C++ threads can still be torn down after the GIL is gone
    and abort a finished run (SIGABRT, "terminate called without an active exception"). main() itself, called
    in-process (tests, notebooks), never exits."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


MODEL_COMMANDS = ("train", "compare", "sft", "reward-model", "demo")


def _hf_progress_bars(on: bool) -> bool:
    """Switch transformers' progress bars; returns whether they were on."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if on:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    return was


def warn_line(command: str, text: str, file=None) -> None:
    """One warning line, `policyshift CMD: warning: ...`: the format of every warning a command prints."""
    print(f"policyshift {command}: warning: {' '.join(str(text).split())}", file=sys.stderr if file is None else file)


def _one_line_warning(command: str):
    """Every warning as one line `policyshift CMD: warning: ...` (no source line, no file:line): the
    user acts on the message, and an error that follows stays the last, unmistakable line."""

    def show(message, category, filename, lineno, file=None, line=None):
        kind = "" if issubclass(category, UserWarning) and category.__module__ == "builtins" else f"{category.__name__}: "
        warn_line(command, f"{kind}{message}", file)

    return show


def _run(args, extra: list[str]) -> int:
    try:
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        if processes > 1 and args.command != "train":  # each process would redo the whole job and write the same files
            from policyshift.config import ConfigError

            raise ConfigError(f"only `train` runs under accelerate launch ({processes} processes); run `policyshift {args.command}` as one process")
        return args.func(args, extra)
    except UserError as exc:
        if os.environ.get("POLICYSHIFT_DEBUG"):
            raise
        print(f"policyshift {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"policyshift {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's input: still one line, with the way to the traceback
        if os.environ.get("POLICYSHIFT_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"policyshift {args.command}: internal error: {type(exc).__name__}: {first} (POLICYSHIFT_DEBUG=1 shows the traceback; "
              "please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
