"""A killed rank under `accelerate launch` (2 CPU processes, gloo; examples/accelerate/cpu_2proc.yaml):

  rank1-random      SIGKILL of rank 1 at a random point (after a random step, a random fraction of a step later)
  rank0-checkpoint  SIGKILL of rank 0 in the middle of writing a checkpoint (fault point kill_in_checkpoint)

For each case and seed: the launcher's exit code, the seconds from the kill to the launcher's exit (bounded by
train.collective_timeout_s, here set low so that a hang would show), the survivor's `policyshift train:` line,
whether the run directory holds no torn checkpoint, and whether the run, resumed with 2 processes (or, when the
kill came before the first checkpoint, started again), equals the uninterrupted run: every logged metric (timings
aside) and final/'s weights.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 python benchmarks/rank_kill.py --seeds 3 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402

import tiny  # noqa: E402

STEPS = 5
TIMEOUT_S = 60  # train.collective_timeout_s for these runs: a survivor that hung would exit after it (not 30 min)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(*args) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "examples" / "accelerate" / "cpu_2proc.yaml"),
            "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "policyshift", "train", *args]


def env(fault: str | None = None) -> dict:
    return {**tiny.cli_env(fault), "OMP_NUM_THREADS": "1"}


def run_to_end(*args) -> subprocess.CompletedProcess:
    result = subprocess.run(command(*args), env=env(), capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"launch {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def ranks_of(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes (their RANK environment variable)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != launcher_pid:
                continue
            environ = dict(kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in environ:
            out[int(environ["RANK"])] = int(proc.name)
    return out


def steps_logged(run: Path) -> int:
    try:
        return sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}"))
    except OSError:
        return 0


def final_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return {f.relative_to(run).as_posix(): load_file(f) for f in sorted((run / "final").rglob("*.safetensors"))}


def same_run(ref: Path, run: Path) -> tuple[bool, str]:

    try:
        tiny.assert_same_metrics(tiny.rows(ref / "metrics.jsonl"), tiny.rows(run / "metrics.jsonl"))
    except AssertionError as exc:
        return False, f"metrics differ: {str(exc).splitlines()[0][:200]}"
    a, b = final_weights(ref), final_weights(run)
    if a.keys() != b.keys():
        return False, f"final/ files differ: {sorted(a)} vs {sorted(b)}"
    worst = max((float((x[k].double() - b[f][k].double()).abs().max()) for f in a for x in [a[f]] for k in x), default=0.0)
    return worst <= 1e-6, f"final/ weights max |diff| {worst:.2e}"


def one_case(case: str, seed: int, config: Path, ref: Path, tmp: Path, step_s: float) -> dict:
    rng = random.Random(seed)
    run = tmp / f"{case}-{seed}"
    after_step = rng.randint(1, STEPS - 1)
    fault = f"kill_in_checkpoint:{after_step}@0" if case == "rank0-checkpoint" else None
    t0 = time.monotonic()
    proc = subprocess.Popen(command("--config", str(config), "--train.output_dir", str(run)), env=env(fault),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed_at = None
    if case == "rank1-random":
        while steps_logged(run) < after_step and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0) * step_s)  # somewhere in the next step: sampling, update, analysis or a checkpoint
        pids = ranks_of(proc.pid)
        if 1 in pids and proc.poll() is None:
            os.kill(pids[1], signal.SIGKILL)
            killed_at = time.monotonic()
    out, err = proc.communicate(timeout=900)
    ended = time.monotonic()
    if case == "rank0-checkpoint":  # the fault fires inside the write: the kill time is the rank's own end, ~ the launcher's
        killed_at = None
    ours = [line for line in err.splitlines() if line.startswith("policyshift train:")]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir()) if (run / "checkpoints").is_dir() else []
    state = __import__("policyshift.rundir", fromlist=["run_state"]).run_state(run)
    record = {"case": case, "seed": seed, "after_step": after_step, "launcher_exit_code": proc.returncode,
              "seconds_kill_to_exit": round(ended - killed_at, 2) if killed_at else None, "seconds_total": round(ended - t0, 2),
              "our_lines": ours, "checkpoints_left": checkpoints, "state": state.kind,
              "launcher_lines": len(err.splitlines()), "exit_codes": re.findall(r"exitcode\s*:\s*(-?\d+) \(pid", err)}
    record["kill_missed"] = case == "rank1-random" and killed_at is None
    # resume with 2 processes (or start again: a run killed before its first checkpoint has nothing to resume)
    if state.kind == "finished":  # the kill came after the run's end
        pass
    elif state.kind == "resumable":
        run_to_end("--resume", str(run))
    else:
        run_to_end("--config", str(config), "--train.output_dir", str(run), "--train.overwrite", "true")
    record["resumed_equals_uninterrupted"], record["detail"] = same_run(ref, run)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=["rank1-random", "rank0-checkpoint"])
    parser.add_argument("--json", help="write the records here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rank_kill-"))
    world = tmp / "world"
    tok = tiny.make_tokenizer(world / "policy")
    tiny.make_policy(world / "policy", tok)
    tiny.write_prompts(world / "prompts.jsonl")
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"policy": str(world / "policy")}, "data": {"prompts": str(world / "prompts.jsonl")},
        "reward": {"function": "tiny:good_fraction", "normalize": True}, "rollout": {"batch_size": 8, "max_new_tokens": 8},
        "ppo": {"lr": 3e-3, "num_minibatches": 2}, "kl": {"controller": "adaptive", "target": 1.0, "horizon": 50},
        "analysis": {"every": 2, "num_prompts": 2},
        "train": {"steps": STEPS, "save_every": 1, "output_dir": str(tmp / "ref"), "collective_timeout_s": TIMEOUT_S},
        "tracking": {"tensorboard": True}}))
    run_to_end("--config", str(config))
    step_s = sum(r["time/step"] for r in tiny.rows(tmp / "ref" / "metrics.jsonl")) / STEPS  # one PPO step's seconds
    records = []
    for case in args.cases:
        for seed in range(args.seeds):
            r = one_case(case, seed, config, tmp / "ref", tmp, step_s)
            records.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    ok = all(r["resumed_equals_uninterrupted"] and len(r["our_lines"]) == 1 for r in records)
    print(f"{sum(r['resumed_equals_uninterrupted'] for r in records)}/{len(records)} resumed runs equal the uninterrupted one; "
          f"{sum(len(r['our_lines']) == 1 for r in records)}/{len(records)} with exactly one policyshift line")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
