"""Proof that a restructuring changed no behaviour (issue #23): record what a commit's CLI writes, then
diff two records byte for byte.

    python benchmarks/restructure_proof.py record COMMIT RECORD_DIR [--cache DIR]
    python benchmarks/restructure_proof.py diff RECORD_A RECORD_B

`record` checks COMMIT out into a temporary worktree (always the same path, so paths written into the
outputs match between commits) and runs, with PYTHONPATH=<worktree>/src and torch on one thread:
  1. `policyshift demo --quick` (PPO) and `policyshift demo --quick --algorithm grpo`;
  2. `policyshift analyze` of the PPO demo's over-optimized run (its checkpoints: final/) against its SFT
     model, with its reward model, on its prompts;
  3. `policyshift analyze` of a real tiny TRL 1.12 GRPO run (tests/trl_run.py; made once into --cache and
     reused, so both records read the same TRL output) with --logs and --score-completions;
  4. `policyshift compare` of the SFT model and the over-optimized final policy.
Every metrics/samples/distributions/findings/completions row of every output run directory is written,
one canonical JSON line each (sorted keys), with the wall-time keys below removed; every report.html
becomes its panel list (id + heading) and its text content (scripts and style dropped, the generation
timestamp masked); config.yaml and summary JSON files are kept with the same wall-time keys removed.

`diff` compares the two records file by file, byte for byte, and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import difflib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC_DIR = Path(tempfile.gettempdir()) / "policyshift-proof-src"  # fixed paths: outputs name them
WORK_DIR = Path(tempfile.gettempdir()) / "policyshift-proof-work"

# Keys whose values are wall-clock measurements (seconds, rates, dates): the only things not compared.
WALL_TIME_KEYS = {
    "fixed/seconds",  # analyze: seconds to sample one checkpoint's fixed prompts
    "seconds",  # analyze --score-completions: config analysis.completions_scored.seconds
    "seconds_per_checkpoint",
    "times_s",  # demo_summary.json: stage wall times
    "train_seconds",  # demo_summary.json: the SFT and reward-model stages' wall time
}
WALL_TIME_PREFIXES = ("time/", "perf/")  # metrics.jsonl: time/step, time/generate, ...; perf/tokens_per_s
RECORDED = ("metrics.jsonl", "samples.jsonl", "distributions.jsonl", "findings.jsonl", "completions.jsonl")
TIMESTAMP = re.compile(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?( ?UTC| ?[+-]\d{2}:?\d{2})?")


def _is_wall_time(key: str) -> bool:
    return key in WALL_TIME_KEYS or key.startswith(WALL_TIME_PREFIXES)


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not _is_wall_time(str(k))}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _canonical(obj) -> str:
    return json.dumps(_strip(obj), sort_keys=True, ensure_ascii=False)


class _ReportText(html.parser.HTMLParser):
    """Panel list (section id + its h2) and visible text of a report page; <script>/<style> skipped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.skip = 0
        self.text: list[str] = []
        self.panels: list[str] = []
        self.nav: list[str] = []
        self._section: str | None = None
        self._in_h2 = False
        self._in_nav = False
        self._h2 = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "style"):
            self.skip += 1
        elif tag == "section" and attrs.get("id"):
            self._section = attrs["id"]
        elif tag == "h2":
            self._in_h2, self._h2 = True, ""
        elif tag == "nav":
            self._in_nav = True
        elif tag == "a" and self._in_nav:
            self.nav.append(attrs.get("href", ""))

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip -= 1
        elif tag == "h2":
            self._in_h2 = False
            self.panels.append(f"{self._section}\t{self._h2.strip()}")
        elif tag == "nav":
            self._in_nav = False

    def handle_data(self, data):
        if self.skip:
            return
        if self._in_h2:
            self._h2 += data
        if data.strip():
            self.text.append(TIMESTAMP.sub("<time>", data.strip()))


def record_report(page: Path, out: Path) -> None:
    parser = _ReportText()
    parser.feed(page.read_text(encoding="utf-8"))
    out.with_suffix(".panels.txt").write_text("\n".join(parser.panels) + "\nnav: " + " ".join(parser.nav) + "\n", encoding="utf-8")
    out.with_suffix(".text.txt").write_text("\n".join(parser.text) + "\n", encoding="utf-8")


def record_tree(root: Path, dest: Path) -> int:
    """Every recorded file under `root` into `dest` (same relative names); returns the number of rows."""
    rows = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or "/data/" in f"/{path.relative_to(root).as_posix()}":
            continue
        rel = path.relative_to(root)
        target = dest / rel
        if path.name in RECORDED:
            target.parent.mkdir(parents=True, exist_ok=True)
            lines = [_canonical(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            rows += len(lines)
            target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif path.suffix == ".html":
            target.parent.mkdir(parents=True, exist_ok=True)
            record_report(path, target)
        elif path.name in ("config.yaml", "demo_summary.json", "summary.json", "compare.json"):
            import yaml

            target.parent.mkdir(parents=True, exist_ok=True)
            data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.suffix == ".yaml" else json.loads(path.read_text(encoding="utf-8"))
            if path.name == "compare.json":
                rows += len(data.get("samples") or [])  # one per prompt: A's and B's responses, scores, KL
            target.with_suffix(target.suffix + ".json").write_text(json.dumps(_strip(data), sort_keys=True, indent=1, ensure_ascii=False,
                                                                             default=str) + "\n", encoding="utf-8")
    return rows


def _run(cmd: list[str], env: dict, log) -> None:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    result = subprocess.run(cmd, env=env, cwd=WORK_DIR, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(cmd)}; see the log")


def make_trl_run(cache: Path, env: dict, log) -> dict:
    """A real tiny TRL GRPO run (tests/trl_run.py of this checkout), made once into `cache`."""
    trl = cache / "trl"
    if not (trl / "grpo").is_dir():
        shutil.rmtree(trl, ignore_errors=True)
        trl.mkdir(parents=True)
        code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from pathlib import Path; from trl_run import run_grpo; "
                f"run_grpo(Path({str(trl)!r}))")
        _run([sys.executable, "-c", code], env, log)
    return {"sft": trl / "sft", "grpo": trl / "grpo", "prompts": trl / "prompts.jsonl"}


def record(commit: str, dest: Path, cache: Path) -> None:
    dest = dest.resolve()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(SRC_DIR)], capture_output=True)
    shutil.rmtree(SRC_DIR, ignore_errors=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(SRC_DIR), commit], check=True, capture_output=True)
    sha = subprocess.run(["git", "-C", str(SRC_DIR), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": f"{SRC_DIR / 'src'}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"}
    cli = [sys.executable, "-m", "policyshift"]
    try:
        with (dest / "commands.log").open("w") as log:
            _run(cli + ["demo", "--quick", "--out", "demo_ppo"], env, log)
            _run(cli + ["demo", "--quick", "--algorithm", "grpo", "--out", "demo_grpo"], env, log)
            demo = WORK_DIR / "demo_ppo"
            prompts = str(demo / "data" / "prompts.jsonl")
            _run(cli + ["analyze", str(demo / "ppo_overoptimized"), "--reference", str(demo / "sft"), "--prompts", prompts,
                        "--reward", str(demo / "reward_model"), "--gold-reward-function", "policyshift.demo.gold:score", "--out", "analyze_demo"],
                 env, log)
            trl = make_trl_run(cache.resolve(), env, log)
            _run(cli + ["analyze", str(trl["grpo"]), "--reference", str(trl["sft"]), "--prompts", str(trl["prompts"]),
                        "--reward-function", "tiny:good_fraction", "--max-new-tokens", "8", "--logs", str(trl["grpo"]),
                        "--score-completions", "--out", "analyze_trl"], env, log)
            _run(cli + ["compare", str(demo / "sft"), str(demo / "ppo_overoptimized" / "final"), "--prompts", prompts,
                        "--reward", str(demo / "reward_model"), "--out", "compare"], env, log)
        rows = {name: record_tree(WORK_DIR / name, dest / name) for name in ("demo_ppo", "demo_grpo", "analyze_demo", "analyze_trl", "compare")}
        (dest / "record.json").write_text(json.dumps({"commit": sha, "rows": rows, "wall_time_keys": sorted(WALL_TIME_KEYS),
                                                      "wall_time_prefixes": list(WALL_TIME_PREFIXES)}, indent=1) + "\n")
        print(json.dumps({"commit": sha, "rows": rows}))
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(SRC_DIR)], capture_output=True)


def _normalized(path: Path) -> bytes:
    """A recorded file with the wall-time keys removed again (a record made before a key joined the list)."""
    data = path.read_bytes()
    if path.name.endswith(".jsonl"):
        return ("\n".join(_canonical(json.loads(line)) for line in data.decode().splitlines() if line.strip()) + "\n").encode()
    if path.name.endswith(".json"):
        return (json.dumps(_strip(json.loads(data)), sort_keys=True, indent=1, ensure_ascii=False, default=str) + "\n").encode()
    return data


def diff(a: Path, b: Path) -> int:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name not in ("record.json", "commands.log")}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name not in ("record.json", "commands.log")}
    bad = 0
    for rel in sorted(files_a ^ files_b):
        print(f"only in {'A' if rel in files_a else 'B'}: {rel}")
        bad += 1
    lines = 0
    for rel in sorted(files_a & files_b):
        x, y = _normalized(a / rel), _normalized(b / rel)
        lines += x.count(b"\n")
        if x != y:
            bad += 1
            xl, yl = x.decode().splitlines(), y.decode().splitlines()
            first = next((i for i, (p, q) in enumerate(zip(xl, yl)) if p != q), min(len(xl), len(yl)))
            print(f"DIFFERS: {rel} (lines {len(xl)} vs {len(yl)}; first at line {first + 1})")
            for line in list(difflib.unified_diff(xl, yl, "A", "B", n=0, lineterm=""))[2:42]:
                print("  " + line[:400])
    print(f"{len(files_a & files_b)} files, {lines} lines compared; {bad} differ" + ("" if bad else ": identical"))
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("commit")
    rec.add_argument("dest", type=Path)
    rec.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "policyshift-proof-cache")
    d = sub.add_parser("diff")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "record":
        record(args.commit, args.dest, args.cache)
        return 0
    return diff(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
