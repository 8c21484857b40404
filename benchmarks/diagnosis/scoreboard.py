"""The scoreboard: every labelled run of the corpus diagnosed by each tool; hits, misses, false alarms, first flagged step.

    cd REPO && PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 19 python benchmarks/diagnosis/scoreboard.py --corpus benchmarks/diagnosis/corpus/main

Tools, each on the same run directory:
  policyshift+logs   `policyshift analyze RUN --logs RUN` (TRL runs; a policyshift run's own log is its metrics.jsonl, read as
                     `policyshift report` reads it) with the run's proxy as --reward-function (no gold: a user has none)
  policyshift ckpt   `policyshift analyze RUN`, its findings on the checkpoints' fixed-prompt rows only (analyze imports a run
                     directory's own logs when --logs is absent; this column is what a run without logs gets)
  rldoctor           `rl-doctor diagnose LOG -f json` (0.2.0, its own venv /work/venvs/rldoctor) on trainer_state.json / metrics.jsonl
  afterburn          `afterburn diagnose --base SFT --trained CKPT` (0.6.3, its own venv /work/venvs/afterburn, transformers < 5) on
                     the corpus's held-out prompts as a custom suite; an alarm: reward-hack risk moderate or worse, or a flag
A tool "flags" a class when it reports a finding of warning or worse that maps to that class (MAPS below). A hit: the
run's label among the flagged classes. A false alarm: any warning or worse on a healthy run. First flagged step: the
earliest checkpoint c such that the tool, run on the logs cut at c (and the checkpoints up to c), flags the label.
A flag the facts contradict (✗ on the board): a class flagged on a pathological run whose label rule, tried alone on the
run's facts, does not hold (`unsupported`): the issue's "warning not supported by the facts" beyond the healthy runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(HERE), str(REPO / "src")]

RLDOCTOR = os.environ.get("RLDOCTOR", "/work/venvs/rldoctor/bin/rl-doctor")
BAD = ("warning", "critical")

# policyshift: a finding speaks to the class of the report's verdict question it answers (analysis.verdicts.question_of,
# the same table the report's top lines use), so the scoreboard reads policyshift as its report reads
QUESTION_CLASSES = {"drift": {"kl_blowup"}, "hacking": {"reward_hacking"}, "collapse": {"collapse"}, "length": {"length_explosion", "truncation"},
                    "signal": {"no_signal"}, "mismatch": {"mismatch"}}


class _ByQuestion(dict):
    def get(self, detector, default=None):
        from policyshift.analysis.verdicts import question_of

        q = question_of(detector)
        return QUESTION_CLASSES[q.key] if q else default


PS_MAP = _ByQuestion()
RLDOCTOR_MAP = {
    "advantage_collapse": {"no_signal"}, "plateau": {"no_signal"}, "entropy_collapse": {"collapse"}, "reward_hacking": {"reward_hacking"},
    "length_pathology": {"length_explosion", "truncation"}, "kl_drift": {"kl_blowup"},
}


def unsupported(findings: list, table: dict, facts: dict) -> list[str]:
    """Flags the run's measured facts contradict: each finding of warning or worse whose mapped classes all fail their
    label rule tried alone (labels.RULES, unchanged). `findings`: (detector, severity) pairs as the board stores them.
    A length finding maps to length or truncation, so either fact supports it; unmapped detectors ("other") are not judged."""
    import labels

    rule = dict(labels.RULES)
    out = set()
    for detector, severity in findings:
        group = table.get(detector)
        if severity in BAD and group and not any(rule[c](facts) for c in group):
            out |= group
    return sorted(out)


def tool_table(tool: str) -> dict:
    return PS_MAP if tool.startswith("policyshift") else AFTERBURN_MAP if tool == "afterburn" else RLDOCTOR_MAP


def classes(findings: list[dict], table: dict) -> set[str]:
    out = set()
    for f in findings:
        if f["severity"] in BAD:
            out |= table.get(f["detector"], {"other"})
    return out


# ---------------------------------------------------------------- policyshift
def policyshift_out(run: Path, facts: dict, sft: Path, held_out: Path, with_logs: bool) -> Path:
    out = run / ("ps_logs" if with_logs else "ps_ckpt")
    if (out / "findings.jsonl").is_file():
        return out
    cmd = [sys.executable, "-m", "policyshift", "analyze", str(run), "--reference", str(sft), "--prompts", str(held_out),
           "--reward-function", f"world:{facts['proxy']}", "--max-new-tokens", str(facts["params"]["max_len"]), "--out", str(out)]
    if with_logs and facts["trainer"].startswith("trl"):
        cmd += ["--logs", str(run)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{run.name}: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return out


def policyshift_findings(out: Path, run: Path, facts: dict, with_logs: bool, upto: int | None = None) -> list[dict]:
    """Findings of the analyzed run, recomputed on its records cut at step `upto` (the same detectors `analyze` ran)."""
    import dataclasses

    from policyshift.analysis.probe import FIXED_PREFIX
    from policyshift.analysis.report import run_findings
    from policyshift.analysis.runlog import load_run

    loaded = load_run(out)
    if not with_logs:  # checkpoints only: analyze imports a run directory's own logs when --logs is absent, so keep its checkpoint rows alone
        fixed = [{"step": r["step"], **{k: v for k, v in r.items() if k.startswith(FIXED_PREFIX)}} for r in loaded.history
                 if any(k.startswith(FIXED_PREFIX) for k in r)]
        loaded = dataclasses.replace(loaded, history=fixed, distributions=[], completions=[])
    elif not facts["trainer"].startswith("trl"):  # a policyshift run: its own training log beside the checkpoints' rows
        own = load_run(run)
        by_step = {r["step"]: dict(r) for r in own.history}
        for r in loaded.history:
            by_step.setdefault(r["step"], {}).update(r)
        loaded = dataclasses.replace(loaded, history=[by_step[s] for s in sorted(by_step)], distributions=own.distributions)
    if upto is not None:
        cut = lambda rows: [r for r in rows if (r.get("step") or 0) <= upto]  # noqa: E731
        loaded = dataclasses.replace(loaded, history=cut(loaded.history), samples=cut(loaded.samples), distributions=cut(loaded.distributions))
    return [f.log_row() for f in run_findings(loaded)[0]]


# ---------------------------------------------------------------- rldoctor
def rldoctor_findings(run: Path, facts: dict, upto: int | None = None) -> list[dict]:
    ckpts = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    tmp = run / ".rldoctor"
    tmp.mkdir(exist_ok=True)
    if ckpts:
        state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
        if upto is not None:
            state["log_history"] = [e for e in state["log_history"] if e.get("step", 0) <= upto]
        log = tmp / f"trainer_state_{upto}.json"
        log.write_text(json.dumps(state))
    else:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        log = tmp / f"metrics_{upto}.jsonl"
        log.write_text("".join(json.dumps(r) + "\n" for r in rows if upto is None or r.get("step", 0) <= upto))
    done = subprocess.run([RLDOCTOR, "diagnose", str(log), "-f", "json", "--no-color"], capture_output=True, text=True)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return [{"detector": "rldoctor_error", "severity": "error", "message": (done.stderr or done.stdout)[-300:]}]
    found = report.get("findings", report if isinstance(report, list) else [])
    return [{"detector": f.get("detector") or f.get("id") or f.get("name"), "severity": str(f.get("severity", "")).lower(),
             "message": f.get("title") or f.get("message") or f.get("summary")} for f in found]


# ---------------------------------------------------------------- afterburn
AFTERBURN = os.environ.get("AFTERBURN", "/work/venvs/afterburn/bin/afterburn")
AFTERBURN_RISK = ("moderate", "high", "critical")  # its reward-hacking risk levels that count as an alarm (low does not)


def _afterburn_copy(src: Path, dst: Path) -> Path:
    """afterburn needs transformers < 5, which cannot read the tokenizer class name transformers 5 saved: a copy
    naming the same fast tokenizer by its transformers-4 class."""
    if not dst.is_dir():
        shutil.copytree(src, dst)
        config = dst / "tokenizer_config.json"
        data = json.loads(config.read_text())
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.write_text(json.dumps(data))
    return dst


def afterburn_findings(run: Path, facts: dict, sft: Path, held_out: Path, upto: int | None = None) -> list[dict]:
    """`afterburn diagnose` of the reference vs the checkpoint at `upto` (default the last), on the corpus's held-out
    prompts as a custom suite (its built-in suites need more positions than these 64-position models have)."""
    from build_corpus import checkpoints

    ckpts = dict(checkpoints(run))
    step = upto if upto is not None else max(ckpts)
    if step not in ckpts:
        return []
    work = run / ".afterburn"
    work.mkdir(exist_ok=True)
    base = _afterburn_copy(sft, run.parent.parent / ".afterburn_base")
    trained = _afterburn_copy(ckpts[step], work / f"step-{step}")
    suite, cfg = work / "suite.yaml", work / "config.yaml"
    prompts = [json.loads(line)["prompt"] for line in held_out.read_text().splitlines() if line.strip()]
    suite.write_text('name: "corpus-held-out"\nversion: "1.0"\ndescription: "diagnosis corpus held-out prompts"\ncategory: "reasoning"\nprompts:\n'
                     + "".join(f'  - id: "p{i:03d}"\n    text: "{p}"\n' for i, p in enumerate(prompts)))
    cfg.write_text(f"behaviour:\n  max_new_tokens: {facts['params']['max_len']}\n  batch_size: 16\n  temperature: 0.0\n")
    out = work / f"report-{step}.json"
    if not out.is_file():
        done = subprocess.run([AFTERBURN, "diagnose", "--base", str(base), "--trained", str(trained), "--method", "grpo", "--device", "cpu",
                               "--config", str(cfg), "--suites", str(suite), "-o", str(out), "--format", "json"], capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            return [{"detector": "afterburn_error", "severity": "error", "message": (done.stderr or done.stdout)[-300:]}]
    report = json.loads(out.read_text())
    hack = report.get("reward_hack") or {}
    found = []
    if str(hack.get("risk_level", "")).lower() in AFTERBURN_RISK:
        found.append({"detector": "reward_hack_risk", "severity": "warning", "message": f"risk {hack.get('risk_level')} ({hack.get('composite_score'):.0f}/100)"})
    for flag in hack.get("flags") or []:
        found.append({"detector": "flag:" + flag.split(":")[0].strip().lower(), "severity": "warning", "message": flag})
    return found


class _AfterburnMap(dict):
    """Its reward-hacking risk is a reward-hacking alarm; a flag speaks to the classes its name does."""

    def get(self, detector, default=None):
        if detector == "reward_hack_risk":
            return {"reward_hacking"}
        if "length" in detector:
            return {"length_explosion", "truncation"}
        if any(w in detector for w in ("divers", "collapse", "repet")):
            return {"collapse"}
        return default


AFTERBURN_MAP = _AfterburnMap()


# ---------------------------------------------------------------- the board
def first_flagged(label: str, steps: list[int], flags_at) -> int | None:
    for step in steps:
        if label in flags_at(step):
            return step
    return None


TOOLS = ("policyshift+logs", "policyshift ckpt", "rldoctor", "afterburn")


def score(tool: str, run: Path, facts: dict, label: str, sft: Path, held_out: Path) -> dict:
    """One tool's column of one run: what it flagged on the whole run, hit / false alarm, the first flagged checkpoint."""
    if tool.startswith("policyshift"):
        logs = tool.endswith("logs")
        out = policyshift_out(run, facts, sft, held_out, logs)
        at = lambda step: policyshift_findings(out, run, facts, logs, step)  # noqa: E731
    elif tool == "afterburn":  # model pairs, no logs: the final checkpoint
        at = lambda step: afterburn_findings(run, facts, sft, held_out, step)  # noqa: E731
    else:
        at = lambda step: rldoctor_findings(run, facts, step)  # noqa: E731
    table = tool_table(tool)
    findings = at(None)
    flagged = classes(findings, table)
    return {
        "flagged": sorted(flagged),
        "hit": label in flagged if label != "healthy" else None,
        "false_alarm": bool(flagged) if label == "healthy" else None,
        # afterburn compares two models per call (~20 s here): scored on the final checkpoint only, no first step
        "first_step": ("final" if tool == "afterburn" else first_flagged(label, facts["checkpoint_steps"], lambda s: classes(at(s), table)))
        if label != "healthy" and label in flagged else None,
        "findings": [(f["detector"], f["severity"]) for f in findings],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(HERE / "corpus" / "main"))
    ap.add_argument("--tools", nargs="*", choices=TOOLS, default=list(TOOLS))
    ap.add_argument("--runs", nargs="*", help="score only these runs (the board keeps the others' rows)")
    args = ap.parse_args(argv)
    corpus = Path(args.corpus)
    if not (corpus / "corpus.json").is_file():
        ap.error(f"{corpus}: no corpus.json here (build one with build_corpus.py --split HALF)")
    sft, held_out = corpus.parent / "sft", corpus.parent / "held_out.jsonl"
    index = json.loads((corpus / "corpus.json").read_text())
    unknown = sorted(set(args.runs or ()) - set(index))
    if unknown:
        ap.error(f"not runs of {corpus}: {', '.join(unknown)}")
    scored = {}  # run → (its facts, the columns this call wrote)
    for name, entry in sorted(index.items()):
        if entry["label"] is None or (args.runs and name not in args.runs):
            continue
        facts = json.loads((corpus / name / "facts.json").read_text())
        row = {"label": entry["label"], "trainer": entry["trainer"],
               **{tool: score(tool, corpus / name, facts, entry["label"], sft, held_out) for tool in args.tools}}
        _judge(row, facts)
        scored[name] = (facts, row)
        print(name, json.dumps({k: (v if not isinstance(v, dict) else {kk: v[kk] for kk in ("flagged", "hit", "false_alarm", "first_step", "unsupported")})
                                for k, v in row.items()}), flush=True)
    # Merge into the file as it is now, not as it was when this call began: another call (other runs, other tools) may
    # have written it since. Kept columns are judged again: the facts decide, not the call that wrote the column.
    board_file = corpus / "scoreboard.json"
    board = json.loads(board_file.read_text()) if board_file.is_file() else {}
    for name, (facts, row) in scored.items():
        board[name] = {**board.get(name, {}), **row}
        _judge(board[name], facts)
    tmp = board_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(board, indent=1))
    tmp.replace(board_file)
    print(markdown(board, [t for t in TOOLS if all(t in row for row in board.values())]))


def _judge(row: dict, facts: dict) -> None:
    """Every column's flags the facts contradict (`unsupported`)."""
    for tool, column in row.items():
        if isinstance(column, dict):
            column["unsupported"] = unsupported(column["findings"], tool_table(tool), facts)


def markdown(board: dict, tools: list[str]) -> str:
    lines = ["| run | label | " + " | ".join(tools) + " |", "|---|---|" + "---|" * len(tools)]
    for name, row in board.items():
        cells = []
        for tool in tools:
            r = row[tool]
            if row["label"] == "healthy":
                cells.append("alarm: " + ", ".join(r["flagged"]) if r["false_alarm"] else "quiet ✓")
            else:
                extra = [c + ("✗" if c in r.get("unsupported", ()) else "") for c in r["flagged"] if c != row["label"]]
                cells.append((f"hit @ {r['first_step']}" if r["hit"] else "miss") + (f" (+{', '.join(extra)})" if extra else ""))
        lines.append(f"| {name} | {row['label']} | " + " | ".join(cells) + " |")
    totals = []
    for tool in tools:
        path = [r for r in board.values() if r["label"] != "healthy"]
        healthy = [r for r in board.values() if r["label"] == "healthy"]
        wrong = sum(bool(r[tool].get("unsupported")) for r in path)
        totals.append(f"{sum(r[tool]['hit'] for r in path)}/{len(path)} caught, {sum(r[tool]['false_alarm'] for r in healthy)}/{len(healthy)} healthy alarmed, "
                      f"{wrong}/{len(path)} with a flag the facts contradict")
    lines.append("| **total** | | " + " | ".join(totals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
