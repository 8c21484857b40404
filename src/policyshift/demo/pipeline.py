"""`policyshift demo`: the whole RLHF pipeline on a laptop CPU, with nothing downloaded.

data (generated reviews) → SFT (tokenizer + small GPT-2) → preference pairs labelled by a hidden
preference with a spurious cue → Bradley–Terry reward model → PPO twice (healthy β; over-optimized:
β = 0 and a high LR) with the hidden true preference as the gold scorer → a report for each run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from policyshift import keys as K

# PPO settings of the two runs; the rest of each preset (data, SFT, RM sizes) lives in presets.py.
PPO_SHARED = {
    "data": {"max_prompt_length": 32},
    "rollout": {"batch_size": 32, "max_new_tokens": 32, "temperature": 1.0},
    "reward": {"batch_size": 64, "missing_eos_penalty": 1.0},
    "ppo": {"num_minibatches": 2, "epochs": 4},
    "analysis": {"gold_reward_function": "policyshift.demo.gold:score", "num_prompts": 12},
}
PPO_RUNS = {
    "healthy": {"kl": {"beta": 0.1}, "ppo": {"lr": 3e-5}},
    "overoptimized": {"kl": {"beta": 0.0}, "ppo": {"lr": 6e-4}},
}
PPO_STEPS = {"quick": 30, "full": 80}
# `policyshift demo --algorithm`: the same two runs with another estimator. GRPO as TRL/verl run it: a group of
# 4 samples per prompt (8 prompts × 4 = the same 32 episodes per step), no critic, KL (k3) as a loss term.
ALGORITHMS = {
    "ppo": {},
    "grpo": {"algorithm": {"advantage": "grpo"}, "rollout": {"num_generations": 4}, "kl": {"placement": "loss", "estimator": "k3"}},
}


def ppo_config(name: str, out: Path, paths: dict, steps: int, seed: int, algorithm: str = "ppo"):
    from policyshift.config import PPOConfig, _deep_merge

    return PPOConfig.from_dict(_deep_merge(_deep_merge(_deep_merge(PPO_SHARED, ALGORITHMS[algorithm]), PPO_RUNS[name]), {
        "model": {"policy": paths["sft"]},
        "data": {"prompts": paths["prompts"]},
        "reward": {"model": paths["reward_model"]},
        "analysis": {"every": max(steps // 6, 1)},
        "train": {"steps": steps, "seed": seed, "output_dir": str(out / f"ppo_{name}"), "save_every": 0, "overwrite": True},
    }))


def summarize(run_dir: Path) -> dict:
    from policyshift.analysis.detectors import DetectorThresholds, run_detectors
    from policyshift.analysis.runlog import load_run

    run = load_run(run_dir)
    h = run.history
    k = max(len(h) // 5, 1)

    def avg(rows, key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    findings = run_detectors(h, run.samples, DetectorThresholds.from_config(run.config), distributions=run.distributions)
    return {
        "proxy_start": avg(h[:k], K.SCORE_MEAN), "proxy_end": avg(h[-k:], K.SCORE_MEAN),
        "gold_start": avg(h[:k], K.GOLD_MEAN), "gold_end": avg(h[-k:], K.GOLD_MEAN),
        "kl_end": avg(h[-k:], K.KL_SEQ_MEAN), "length_end": avg(h[-k:], K.LENGTH_MEAN),
        "findings": [{"detector": f.detector, "severity": f.severity, "message": f.message} for f in findings],
    }


def run_demo(out_dir: str = "demo_out", seed: int = 0, quick: bool = False, console: Console | None = None, algorithm: str = "ppo") -> dict:
    from policyshift.demo.corpus import write_demo_data
    from policyshift.demo.gold import labeler_preference
    from policyshift.demo.presets import FULL, QUICK
    from policyshift.stages.reward_model import RewardModelConfig, make_preference_pairs, run_reward_model, save_pairs
    from policyshift.stages.sft import SFTConfig, run_sft
    from policyshift.trainer import PPOTrainer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # fresh classification heads on the SFT checkpoint are expected, not news
    console = console or Console(stderr=True)
    preset, mode = (QUICK, "quick") if quick else (FULL, "full")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    def stage(name: str):
        console.rule(f"[bold]{name}")
        return time.perf_counter()

    t = stage("1/5 data")
    data = write_demo_data(out / "data", seed=seed, n_texts=preset["n_texts"], n_prompts=preset["n_prompts"])
    times["data"] = time.perf_counter() - t

    t = stage("2/5 SFT")
    sft = run_sft(SFTConfig(data=data["texts"], output_dir=str(out / "sft"), seed=seed, **preset["sft"]))
    times["sft"] = time.perf_counter() - t

    t = stage("3/5 reward model")
    from policyshift.data import load_prompts

    pairs = make_preference_pairs(str(out / "sft"), load_prompts(data["prompts"]), labeler_preference, n_pairs=preset["n_pairs"],
                                  seed=seed, max_new_tokens=preset["max_new_tokens"])
    pairs_path = save_pairs(pairs, str(out / "data" / "pairs.jsonl"))
    rm = run_reward_model(RewardModelConfig(pairs=pairs_path, base_model=str(out / "sft"), output_dir=str(out / "reward_model"),
                                            seed=seed, **preset["rm"]))
    times["reward_model"] = time.perf_counter() - t

    paths = {"sft": str(out / "sft"), "prompts": data["prompts"], "reward_model": str(out / "reward_model")}
    summaries = {}
    for name in PPO_RUNS:
        t = stage(f"4/5 {algorithm.upper()} {name}")
        PPOTrainer(ppo_config(name, out, paths, PPO_STEPS[mode], seed, algorithm)).train()
        times[f"ppo_{name}"] = time.perf_counter() - t
    t = stage("5/5 summary")  # (each run wrote its report.html at its end)
    for name in PPO_RUNS:
        summaries[name] = summarize(out / f"ppo_{name}")
    times["summary"] = time.perf_counter() - t
    times["total"] = sum(times.values())

    result = {"mode": mode, "algorithm": algorithm, "seed": seed, "times_s": times, "sft": sft, "reward_model": rm, "runs": summaries}
    (out / "demo_summary.json").write_text(json.dumps(result, indent=1, default=str))
    print_summary(console, out, result)
    return result


def print_summary(console: Console, out: Path, result: dict) -> None:
    table = Table(title=f"policyshift demo ({result['algorithm']})")
    for col in ("run", "proxy reward", "gold reward", "seq KL (end)", "length (end)", "findings"):
        table.add_column(col)
    for name, s in result["runs"].items():
        worst = ", ".join(f"{f['severity']}:{f['detector']}" for f in s["findings"][:4]) or "none"
        table.add_row(name, f"{s['proxy_start']:+.3f} → {s['proxy_end']:+.3f}", f"{s['gold_start']:+.3f} → {s['gold_end']:+.3f}",
                      f"{s['kl_end']:.2f}", f"{s['length_end']:.1f}", worst)
    console.print(table)
    acc = result["reward_model"].get("eval_accuracy")
    console.print(f"reward model held-out pairwise accuracy: {acc}")
    console.print("stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["times_s"].items()))
    console.print(f"reports: {out / 'ppo_healthy' / 'report.html'}  {out / 'ppo_overoptimized' / 'report.html'}")
