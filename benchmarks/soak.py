"""Soak: a long tiny-model run with the analysis on, and the report of long runs.

1. `policyshift train` for --steps steps (tiny GPT-2 from tests/tiny.py, fixed-prompt analysis every
   --every steps, TensorBoard on, a checkpoint every 500 steps), watched once a second from outside:
   resident memory (VmRSS, and the peak VmHWM), open file descriptors, and wall and CPU seconds per step, at
   the start of the run (10-20 % of the steps), its middle (50-60 %) and its end (the last 10 %, until the last
   step is logged: the final checkpoint and report after it are not steps). Flat within noise = no leak of
   memory, files or time. CPU seconds (the process's user + system time) are the measure of time that a
   loaded machine does not move; wall seconds are what a user waits.
2. The report of 1k / 5k / 20k-step run directories, synthesized from the soak run's own rows (its real
   metric keys, distributions and samples, repeated and renumbered; fixed-prompt samples every 10 steps
   for 8 prompts, the defaults): build time and peak memory of `build_report` in a fresh process, HTML
   size, and the wall time headless Chromium takes to load and render it (data-rendered="ok"), less the
   time it takes for an empty page. Targets at 20k steps: <= 10 s, <= 10 MB, <= 3 s.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 python benchmarks/soak.py --steps 2000 [--json soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402

import tiny  # noqa: E402


# ---- 1. the soak run ------------------------------------------------------------------------------
TICKS = os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> dict | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    kb = lambda key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1))  # noqa: E731
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 is state; utime, stime are fields 14, 15
    cpu_s = (int(fields[11]) + int(fields[12])) / TICKS
    return {"rss_mb": kb("VmRSS") / 1024, "hwm_mb": kb("VmHWM") / 1024, "fds": fds, "cpu_s": cpu_s}


class StepCounter:
    """Complete lines of metrics.jsonl, read incrementally (the file grows; re-reading it whole would itself be O(n²))."""

    def __init__(self, path: Path):
        self.path, self.offset, self.steps = path, 0, 0

    def read(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return self.steps
        complete = chunk.rfind(b"\n") + 1
        self.offset += complete
        self.steps += chunk[:complete].count(b"\n")  # (a probe row would count twice; the soak has no probes)
        return self.steps


def soak_run(tmp: Path, steps: int, every: int) -> tuple[dict, Path]:
    world = tmp / "world"
    tok = tiny.make_tokenizer(world / "policy")
    tiny.make_policy(world / "policy", tok)
    tiny.write_prompts(world / "prompts.jsonl", n=200)
    run = tmp / "soak"
    config = tmp / "soak.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"policy": str(world / "policy")}, "data": {"prompts": str(world / "prompts.jsonl")},
        "reward": {"function": "tiny:good_fraction"}, "rollout": {"batch_size": 4, "max_new_tokens": 6},
        "ppo": {"epochs": 1}, "analysis": {"every": every, "num_prompts": 8},
        "train": {"steps": steps, "save_every": 500, "keep_last_n": 2, "output_dir": str(run), "num_threads": 1},
        "tracking": {"tensorboard": True}}))
    env = {**tiny.cli_env(), "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "policyshift", "train", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()
    counter, samples = StepCounter(run / "metrics.jsonl"), []
    while proc.poll() is None:
        stats = proc_stats(proc.pid)
        if stats:
            samples.append({"t": time.monotonic() - t0, "step": counter.read(), **stats})
        time.sleep(1.0)
    if proc.returncode != 0:
        raise SystemExit(f"soak run failed ({proc.returncode}): {''.join(stderr)[-3000:]}")
    summary = summarize(samples, steps, tiny.rows(run / "metrics.jsonl"), time.monotonic() - t0)
    return {**summary, "series": samples}, run


def summarize(samples: list[dict], steps: int, metrics: list[dict], wall: float) -> dict:
    """Start (10-20 % of the steps: after start-up and the first allocations), middle (50-60 %) and end (the last
    10 %, while steps are still logged) of the run: a leak grows from middle to end as from start to middle; a
    one-time cost (the first checkpoint's buffers) does not."""
    def window(lo: float, hi: float) -> list[dict]:
        return [s for s in samples if lo * steps <= s["step"] <= hi * steps and s["step"] < steps]

    def rate(w: list[dict], key: str) -> float:  # seconds per step over the window (analysis, detectors, logging included)
        ok = len(w) > 1 and w[-1]["step"] > w[0]["step"]
        return round((w[-1][key] - w[0][key]) / (w[-1]["step"] - w[0]["step"]), 4) if ok else float("nan")

    def mean(rows: list[dict], key: str) -> float:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        return sum(values) / max(len(values), 1)

    windows = {"start": window(0.10, 0.20), "middle": window(0.50, 0.60), "end": window(0.90, 1.0)}
    out = {"steps": steps, "wall_s": round(wall, 1), "samples": len(samples), "peak_rss_mb": round(max(s["hwm_mb"] for s in samples), 1),
           "open_files_max": max(s["fds"] for s in samples)}
    for name, w in windows.items():
        out[name] = {"steps": [w[0]["step"], w[-1]["step"]] if w else None, "rss_mb": round(mean(w, "rss_mb"), 1),
                     "open_files": max((s["fds"] for s in w), default=None),
                     "wall_s_per_step": rate(w, "t"), "cpu_s_per_step": rate(w, "cpu_s")}
    middle, end = mean(windows["middle"], "step"), mean(windows["end"], "step")
    out["rss_kb_per_step_middle_to_end"] = round((out["end"]["rss_mb"] - out["middle"]["rss_mb"]) * 1024 / max(end - middle, 1), 1)
    first, last = metrics[int(0.1 * len(metrics)) : int(0.2 * len(metrics))], metrics[int(0.9 * len(metrics)) :]
    out["time_step_s_start"], out["time_step_s_end"] = round(mean(first, "time/step"), 4), round(mean(last, "time/step"), 4)
    return out


# ---- 2. reports of long runs ----------------------------------------------------------------------
def synthesize(src: Path, n_steps: int, dst: Path, every: int = 10, n_prompts: int = 8) -> Path:
    """A run directory of n_steps steps from the rows of a real run: its metrics and distributions repeated and
    renumbered, fixed-prompt samples (reference at step 0, then every `every` steps) cycled from its own."""
    dst.mkdir(parents=True)
    config = yaml.safe_load((src / "config.yaml").read_text())
    config["train"]["steps"], config["analysis"]["every"], config["analysis"]["num_prompts"] = n_steps, every, n_prompts
    config["train"]["output_dir"] = str(dst)
    (dst / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    metrics, distributions = tiny.rows(src / "metrics.jsonl"), tiny.rows(src / "distributions.jsonl")
    samples = [r for r in tiny.rows(src / "samples.jsonl") if r["step"] > 0]
    reference = [r for r in tiny.rows(src / "samples.jsonl") if r["step"] == 0]
    with open(dst / "metrics.jsonl", "w") as f:
        for i in range(n_steps):
            row = dict(metrics[i % len(metrics)], step=i + 1)
            row["episodes"] = (i + 1) * config["rollout"]["batch_size"]
            f.write(json.dumps(row) + "\n")
    with open(dst / "distributions.jsonl", "w") as f:
        for i in range(n_steps):
            f.write(json.dumps(dict(distributions[i % len(distributions)], step=i + 1)) + "\n")
    with open(dst / "samples.jsonl", "w") as f:
        for row in reference[:n_prompts]:
            f.write(json.dumps(dict(row, step=0)) + "\n")
        k = 0
        for step in range(every, n_steps + 1, every):
            for _ in range(n_prompts):
                f.write(json.dumps(dict(samples[k % len(samples)], step=step)) + "\n")
                k += 1
    if (src / "findings.jsonl").is_file():
        shutil.copy(src / "findings.jsonl", dst / "findings.jsonl")
    return dst


BUILD = """
import json, resource, sys, time
from policyshift.analysis.report import build_report
t = time.perf_counter()
path = build_report(sys.argv[1])
print(json.dumps({"build_s": time.perf_counter() - t, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "path": str(path)}))
"""


def chromium_seconds(page: Path, profile: Path) -> tuple[float, str | None]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return float("nan"), None
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
               "--virtual-time-budget=15000", "--dump-dom", page.resolve().as_uri()]
    t = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t
    rendered = re.search(r'data-rendered="([^"]*)"', result.stdout)
    return seconds, rendered.group(1) if rendered else None


def report_sizes(src: Path, tmp: Path, sizes: list[int]) -> list[dict]:
    blank = tmp / "blank.html"
    blank.write_text("<!doctype html><html><body>blank</body></html>")
    baseline = min(chromium_seconds(blank, tmp / "profile-blank")[0] for _ in range(2))
    out = []
    for n in sizes:
        run = synthesize(src, n, tmp / f"synth-{n}")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-c", BUILD, str(run)], env=env, capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            out.append({"steps": n, "error": result.stderr.strip().splitlines()[-1:]})
            continue
        built = json.loads(result.stdout.strip().splitlines()[-1])
        page = Path(built["path"])
        seconds, rendered = chromium_seconds(page, tmp / f"profile-{n}")
        out.append({"steps": n, "build_s": round(built["build_s"], 2), "build_peak_mb": round(built["peak_mb"]),
                    "html_mb": round(page.stat().st_size / 1e6, 2), "samples_jsonl_rows": sum(1 for _ in open(run / "samples.jsonl")),
                    "chromium_s": round(seconds - baseline, 2), "chromium_baseline_s": round(baseline, 2), "rendered": rendered})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=50, help="the soak run's analysis.every")
    parser.add_argument("--report-sizes", type=int, nargs="*", default=[1000, 5000, 20000])
    parser.add_argument("--skip-soak", metavar="RUN_DIR", help="use this finished run for the report part instead of a soak run")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    results: dict = {}
    if args.skip_soak:
        src = Path(args.skip_soak)
    else:
        results["soak"], src = soak_run(tmp, args.steps, args.every)
        print(json.dumps({k: v for k, v in results["soak"].items() if k != "series"}), flush=True)
    results["reports"] = report_sizes(src, tmp, args.report_sizes)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
