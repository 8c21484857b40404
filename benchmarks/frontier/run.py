"""Gold reward per nat of KL (issue #29): policyshift PPO vs TRL 1.12 PPO vs TRL 1.16 GRPOTrainer on the demo's
gold-vs-proxy world, gold gain interpolated at fixed sequence-KL columns (settings.KL_COLUMNS), mean ± SE over
seeds, with the best-of-n frontier as the baseline row. One command runs (or resumes) everything:

    PYTHONPATH=src python benchmarks/frontier/run.py --work /tmp/frontier --trl112-python /work/venvs/trl112/bin/python
    PYTHONPATH=src python benchmarks/frontier/run.py --work /tmp/frontier --screen            # the levers, seed SEEDS[0]
    PYTHONPATH=src python benchmarks/frontier/run.py --work /tmp/frontier --impl policyshift --seeds 4 5 6 \
        --variants default exact_kl --key confirm                                            # a lever on fresh seeds

Every finished run and every evaluated checkpoint is cached under --work, so a rerun only does what is missing.
See benchmarks/README.md ("Frontier") for the setting, the sizes and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import measure as M  # noqa: E402
import settings as S  # noqa: E402
from workers import DONE_FILE, STEP_DIR, VARIANTS  # noqa: E402
from world import build_world  # noqa: E402

IMPLS = ("policyshift", "trl_ppo", "trl_grpo")
EVAL_FILE = "eval.json"  # per run directory: {step: checkpoint measurement}
BON_FILE = "bon_pool.json"


def run_name(impl: str, variant: str, seed: int) -> str:
    return f"{impl}-{variant}-s{seed}" if impl == "policyshift" else f"{impl}-s{seed}"


def train(work: Path, impl: str, variant: str, seed: int, trl112_python: str) -> Path:
    out = work / "runs" / run_name(impl, variant, seed)
    if (out / DONE_FILE).exists():
        return out
    python = trl112_python if impl == "trl_ppo" else sys.executable
    cmd = [python, str(HERE / "workers.py"), impl, str(work / "world"), str(out), "--seed", str(seed), "--variant", variant]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "ACCELERATE_USE_CPU": "true", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{out.name} failed (exit {proc.returncode})")
    print(f"trained {out.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def evaluate_run(ev, run_dir: Path) -> dict:
    cache = run_dir / EVAL_FILE
    done = json.loads(cache.read_text()) if cache.exists() else {}
    for step in range(S.SAVE_EVERY, S.ITERATIONS + 1, S.SAVE_EVERY):
        if str(step) not in done:
            done[str(step)] = ev.checkpoint(str(run_dir / STEP_DIR.format(step)))
            cache.write_text(json.dumps(done, indent=1))
    return {int(k): v for k, v in done.items()}


def run_row(evals: dict, gold_ref: float) -> dict:
    """One run's curve (the reference at KL 0 first) and its gold gain at each KL column (None: not reached)."""
    steps = sorted(evals)
    kls = [0.0] + [evals[s]["kl"] for s in steps]
    golds = [gold_ref] + [evals[s]["gold"] for s in steps]
    gains = {str(c): (None if (g := M.gain_at_kl(kls, golds, c)) is None else g - gold_ref) for c in S.KL_COLUMNS}
    last = evals[steps[-1]]
    return {"gains": gains, "final_kl": last["kl"], "final_gold_gain": last["gold"] - gold_ref, "final_proxy": last["proxy"],
            "curve": [{"step": s, **evals[s]} for s in steps]}


def bon_row(pool: dict, gold_ref: float) -> dict:
    ns = [n for n in S.BON_NS if n <= S.BON_POOL]
    golds = [sum(M.bon_expected_gold(p, g, n) for p, g in zip(pool["proxy"], pool["gold"])) / len(pool["gold"]) for n in ns]
    proxies = [sum(M.bon_expected_gold(p, p, n) for p in pool["proxy"]) / len(pool["proxy"]) for n in ns]
    gains = {str(c): (None if (g := M.bon_gain_at_kl(ns, golds, c)) is None else g - gold_ref) for c in S.KL_COLUMNS}
    return {"gains": gains, "curve": [{"n": n, "kl": M.bon_kl(n), "gold": g, "proxy": p} for n, g, p in zip(ns, golds, proxies)]}


def fmt(values: list, sign: str = "+") -> str:
    m, se, n = M.mean_se(values)
    if n == 0:
        return "—"
    cell = f"{m:{sign}.3f}" + (f" ± {se:.3f}" if n > 1 else "")
    return cell + (f" ({n}/{len(values)})" if n < len(values) else "")


def table(rows: dict, bon: dict) -> str:
    head = "| | " + " | ".join(f"KL {c:g}" for c in S.KL_COLUMNS) + " | KL at iteration " + str(S.ITERATIONS) + " | gold gain there | s / run |"
    lines = [head, "|" + "---|" * (len(S.KL_COLUMNS) + 4)]
    lines.append("| best-of-n (reference samples) | " + " | ".join(fmt([bon["gains"][str(c)]]) for c in S.KL_COLUMNS) + " | | | |")
    for name, runs in rows.items():
        cells = [fmt([r["gains"][str(c)] for r in runs]) for c in S.KL_COLUMNS]
        lines.append(f"| {name} ({len(runs)} seeds) | " + " | ".join(cells) + f" | {fmt([r['final_kl'] for r in runs], '')} | "
                     f"{fmt([r['final_gold_gain'] for r in runs])} | {sum(r['seconds'] for r in runs) / len(runs):.0f} |")
    return "\n".join(lines)


def paired(rows: dict, a: str, b: str) -> dict:
    """Per column: mean ± SE of the seed-paired gold difference a − b (seeds where both reached the column)."""
    out = {}
    ra, rb = {r["seed"]: r for r in rows.get(a, [])}, {r["seed"]: r for r in rows.get(b, [])}
    for c in S.KL_COLUMNS:
        d = [ra[s]["gains"][str(c)] - rb[s]["gains"][str(c)] for s in ra if s in rb
             and ra[s]["gains"][str(c)] is not None and rb[s]["gains"][str(c)] is not None]
        out[str(c)] = M.mean_se(d)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="world, runs, checkpoints and caches (reused)")
    ap.add_argument("--trl112-python", default="/work/venvs/trl112/bin/python", help="python of a venv with trl==1.12.0 (TRL's last PPO)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(S.SEEDS))
    ap.add_argument("--impl", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--screen", nargs="*", metavar="VARIANT", choices=sorted(VARIANTS),
                    help="policyshift lever variants on the first seed only (no names: all of them)")
    ap.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS),
                    help="policyshift variants to run on every seed (a lever's confirmation on fresh seeds, next to default)")
    ap.add_argument("--key", help="where in --json the results go (default: main, or screen with --screen)")
    ap.add_argument("--json", default=str(HERE / "results.json"))
    ns = ap.parse_args(argv)
    work = Path(ns.work)
    t0 = time.perf_counter()
    world = build_world(work / "world")
    print(f"world ready ({time.perf_counter() - t0:.0f} s): {json.dumps({k: world[k] for k in ('sft_eval_loss', 'rm_eval_accuracy')})}", flush=True)

    from evaluate import Evaluator

    ev = Evaluator(world)
    if (work / BON_FILE).exists():
        pool = json.loads((work / BON_FILE).read_text())
    else:
        t = time.perf_counter()
        pool = ev.bon_pool()
        (work / BON_FILE).write_text(json.dumps(pool))
        print(f"best-of-n pool: {S.BON_POOL} samples × {len(pool['gold'])} prompts in {time.perf_counter() - t:.0f} s", flush=True)
    gold_ref = sum(map(sum, pool["gold"])) / sum(map(len, pool["gold"]))
    bon = bon_row(pool, gold_ref)

    specs = [(impl, variant, seed) for seed in ns.seeds for impl in ns.impl
             for variant in (ns.variants if impl == "policyshift" else ["default"])]
    if ns.screen is not None:
        specs = [("policyshift", v, ns.seeds[0]) for v in (ns.screen or list(VARIANTS))]
    rows: dict[str, list] = {}
    for impl, variant, seed in specs:
        run_dir = train(work, impl, variant, seed, ns.trl112_python)
        row = run_row(evaluate_run(ev, run_dir), gold_ref)
        row.update(seed=seed, seconds=json.loads((run_dir / DONE_FILE).read_text())["seconds"])
        name = impl if impl != "policyshift" else f"policyshift {variant}"
        rows.setdefault(name, []).append(row)
        print(f"{run_dir.name}: gains {row['gains']}, final KL {row['final_kl']:.2f}", flush=True)

    print(f"\ngold of the reference (SFT) on the held-out prompts: {gold_ref:+.3f}; gold gain at sequence KL (nats), mean ± SE over seeds")
    print(table(rows, bon))
    base = "policyshift default"
    diffs = {name: paired(rows, name, base) for name in rows if name != base and base in rows}
    for name, d in diffs.items():
        print(f"paired {name} − {base}: " + ", ".join(f"KL {c}: {m:+.3f} ± {se:.3f} (n {n})" for c, (m, se, n) in d.items()))
    result = {"setting": {k: getattr(S, k) for k in dir(S) if k.isupper()}, "world": world, "gold_ref": gold_ref, "best_of_n": bon,
              "runs": rows, "paired_vs_default": diffs}
    path = Path(ns.json)
    old = json.loads(path.read_text()) if path.exists() else {}
    key = ns.key or ("screen" if ns.screen is not None else "main")
    old.update({key: result})
    path.write_text(json.dumps(old, indent=1, default=str))


if __name__ == "__main__":
    main()
