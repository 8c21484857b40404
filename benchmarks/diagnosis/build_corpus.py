"""Build the diagnosis corpus: small real runs with a known truth, labelled from measured facts.

    cd REPO && PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 19 python benchmarks/diagnosis/build_corpus.py --out benchmarks/diagnosis/corpus
    ... --split heldout        # the held-out half: the same recipes with new seeds

Trainers: TRL 1.16 `GRPOTrainer` and `RLOOTrainer` (their own code, CPU, `disable_dropout=True` so the logged KL is
not dropout noise; see labels-independent note in the README) and policyshift's own GRPO trainer (one run with a
stale sampling engine: the training–inference mismatch). The world (benchmarks/diagnosis/world.py) is a tiny GPT-2
over 18 words fit as an LM (the SFT stand-in, as tests/fixtures/make_fixtures.py on the importers branch makes it),
a proxy reward per recipe, and a gold scorer no trainer sees.

Facts (RUN/facts.json) are measured here, independently of every tool scored: 64 held-out prompts sampled once each
(HF `generate`, temperature 1, no top-k/top-p) from the reference and every checkpoint; proxy and gold per completion;
per-token k1 KL to the reference and the policy's entropy from the same samples; length, truncation, distinct
completions; the true share of all-equal groups from the trainer's logged completions (TRL) or its log (policyshift);
the engine's log-prob difference from policyshift's log. `labels.label(facts)` (committed before any run) names the
class; a run no rule fits is listed as dropped in corpus.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(HERE), str(REPO / "tests"), str(REPO / "src")]

import torch  # noqa: E402

import labels  # noqa: E402
import tiny  # noqa: E402
import world  # noqa: E402

HELD_OUT = 64
BASE = dict(steps=40, lr=1e-3, beta=0.04, max_len=12, gens=4, batch=16)
# name → (trainer, proxy, overrides). The intended pathology is a recipe, not a label: the label comes from the facts.
RECIPES = {
    "healthy_grpo": ("trl_grpo", "honest", {"steps": 60, "beta": 0.2}),
    "healthy_rloo": ("trl_rloo", "honest", {"steps": 60, "beta": 0.1}),
    # policyshift GRPO at lr 1e-3, β 0.1, 60 steps drifts to 1.2–1.5 nats/token on 2–3-token completions: a real KL blow-up
    # (named "healthy_psgrpo" in the first measurement; renamed, the recipe unchanged)
    "kl_blowup_psgrpo": ("ps_grpo", "honest", {"steps": 60, "beta": 0.1}),
    "healthy_psgrpo": ("ps_grpo", "honest", {"steps": 30, "lr": 3e-4, "beta": 0.3}),
    # policyshift PPO (GAE with a critic from the policy's backbone, KL in the reward: its defaults)
    "healthy_psppo": ("ps_ppo", "honest", {"steps": 30, "lr": 3e-4, "beta": 0.2}),
    "hack_cue_psppo": ("ps_ppo", "cue", {"steps": 40, "lr": 3e-3, "beta": 0.0}),
    "hack_cue": ("trl_grpo", "cue", {"lr": 1e-2, "beta": 0.0, "steps": 50}),
    "kl_blowup": ("trl_grpo", "honest", {"lr": 3e-2, "beta": 0.0, "steps": 50}),
    "collapse_one": ("trl_grpo", "one", {"lr": 1e-2, "beta": 0.0, "steps": 50}),
    "collapse_good": ("trl_grpo", "one_good", {"lr": 1e-2, "beta": 0.0, "steps": 100}),
    "length_longer": ("trl_grpo", "longer", {"lr": 1e-2, "beta": 0.0, "max_len": 32, "steps": 50}),
    # the length class without truncation: a length bias that saturates at 8 words, far below the 24-token limit
    "length_capped": ("trl_grpo", "capped", {"lr": 3e-3, "beta": 0.0, "max_len": 24, "steps": 50}),
    "length_capped_rloo": ("trl_rloo", "capped", {"lr": 3e-3, "beta": 0.0, "max_len": 24, "steps": 50}),
    "truncation": ("trl_grpo", "honest", {"max_len": 3}),
    "no_signal": ("trl_grpo", "never", {}),
    "mismatch_stale": ("ps_grpo_stale", "honest", {"lr": 1e-2}),
}
# A held-out half is spent once its board has been read: seeds 3–5 (before the a6484a4 freeze), 6–8 ("heldout": held out
# for a6484a4, then read while tuning 263af47), 9–11 ("heldout2": held out for 263af47, then read while tuning the third
# freeze); "heldout3" (13–15, three seeds of every recipe so each class is likelier to get two runs) was built after it.
SEEDS = {"main": (1, 2), "heldout": (6, 7), "heldout2": (9, 10), "heldout3": (13, 14, 15)}
HEALTHY_EXTRA = {"main": {"healthy_grpo": (3,)}, "heldout": {"healthy_grpo": (8,)}, "heldout2": {"healthy_grpo": (11,)}, "heldout3": {}}  # ≥ 3 healthy runs per half


def make_sft(root: Path, steps: int = 150):
    """The SFT stand-in: tiny GPT-2 fit as an LM on tiny.corpus + <eos> (so completions end), 150 AdamW steps."""
    tok = tiny.make_tokenizer(root)
    model = tiny.make_policy(root, tok)
    texts = [s + " <eos>" for s in tiny.corpus(200)]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels_ = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(texts), (32,))
        loss = model(input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx], labels=labels_[idx]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(root)
    tok.save_pretrained(root)


def make_prompts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(tiny.WORDS) for _ in range(rng.randint(2, 4))) for _ in range(n)]


def _reset_accelerate(environ: dict) -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ.clear()
    os.environ.update(environ)


def run_trl(kind: str, proxy: str, p: dict, seed: int, sft: Path, out: Path, prompts: list[str]) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    Config, Trainer = (GRPOConfig, GRPOTrainer) if kind == "trl_grpo" else (RLOOConfig, RLOOTrainer)
    args = Config(output_dir=str(out), per_device_train_batch_size=p["batch"], num_generations=p["gens"], max_completion_length=p["max_len"],
                  max_steps=p["steps"], save_steps=p["steps"] // 5, logging_steps=1, log_completions=True, num_completions_to_print=0,
                  report_to=[], use_cpu=True, bf16=False, learning_rate=p["lr"], beta=p["beta"], seed=seed, save_only_model=True,
                  disable_dropout=True, temperature=1.0)
    from transformers import AutoTokenizer

    environ = dict(os.environ)
    try:
        Trainer(model=str(sft), reward_funcs=world.REWARDS[proxy], args=args, train_dataset=Dataset.from_dict({"prompt": prompts}),
                processing_class=AutoTokenizer.from_pretrained(sft)).train()
    finally:
        _reset_accelerate(environ)


def run_policyshift(kind: str, proxy: str, p: dict, seed: int, sft: Path, out: Path, prompts: list[str]) -> None:
    from policyshift import PPOConfig, PPOTrainer
    from policyshift.engines import HFEngine

    prompts_file = out.parent / f".{out.name}.prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in prompts))
    cfg = PPOConfig.from_dict({
        "model": {"policy": str(sft)}, "data": {"prompts": str(prompts_file)}, "reward": {"function": f"world:{proxy}"},
        # GRPO as its paper (k3 KL in the loss); PPO at policyshift's defaults (GAE, k1 KL in the reward)
        "algorithm": {"advantage": "gae" if kind == "ps_ppo" else "grpo"},
        "kl": {"beta": p["beta"]} if kind == "ps_ppo" else {"placement": "loss", "estimator": "k3", "beta": p["beta"]},
        "rollout": {"batch_size": p["batch"], "num_generations": p["gens"], "max_new_tokens": p["max_len"]},
        "ppo": {"lr": p["lr"], "num_minibatches": 1},
        "analysis": {"every": 0},
        "train": {"steps": p["steps"], "seed": seed, "output_dir": str(out), "save_every": p["steps"] // 5, "overwrite": True},
        "tracking": {"tensorboard": False},
    })
    trainer = PPOTrainer(cfg)
    if kind == "ps_grpo_stale":
        class StaleEngine(HFEngine):
            """A sampling engine holding its own copy of the weights whose sync never lands (a stale engine)."""

            def sync_weights(self, policy) -> None:
                return None

        trainer.engine = StaleEngine(copy.deepcopy(trainer.models.policy), shares_training_weights=False)
    trainer.train()
    prompts_file.unlink()


# ---------------------------------------------------------------- measuring the facts
def checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = [(int(d.name.split("-")[1]), d) for d in run.glob("checkpoint-*")]
    found += [(int(d.name.split("-")[1]), d / "policy") for d in (run / "checkpoints").glob("step-*")]
    return sorted(found)


@torch.no_grad()
def sample_stats(model, ref, tok, prompts: list[str], max_len: int, proxy: str, seed: int) -> dict:
    from transformers import GenerationConfig

    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    gen = model.generate(**enc, generation_config=GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_len,
                                                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
                         output_logits=True, return_dict_in_generate=True)
    new = gen.sequences[:, enc["input_ids"].shape[1]:]
    logits = torch.stack(gen.logits, 1).float()  # (B, R, V): the policy's raw logits at each sampled step
    eos = tok.eos_token_id
    is_eos = new == eos
    ended = is_eos.any(1)
    first_eos = torch.where(ended, is_eos.float().argmax(1), torch.full_like(ended, new.shape[1], dtype=torch.long))
    pos = torch.arange(new.shape[1])[None]
    mask = pos <= first_eos[:, None]  # the sampled tokens, EOS included
    mask &= pos < new.shape[1]
    logp = torch.log_softmax(logits, -1)
    tok_logp = logp.gather(-1, new[..., None])[..., 0]
    entropy = -(logp.exp() * logp).sum(-1)
    full_mask = torch.cat([enc["attention_mask"], mask.long()], 1)
    positions = (full_mask.cumsum(1) - 1).clamp(min=0)  # left padding: the positions generate() used
    ref_logits = ref(input_ids=gen.sequences, attention_mask=full_mask, position_ids=positions).logits[:, enc["input_ids"].shape[1] - 1:-1].float()
    ref_logp = torch.log_softmax(ref_logits, -1).gather(-1, new[..., None])[..., 0]
    m = mask.float()
    k1 = ((tok_logp - ref_logp) * m).sum() / m.sum()
    texts = [tok.decode(row[: int(n)], skip_special_tokens=True) for row, n in zip(new, first_eos)]
    return {"proxy": world.REWARDS[proxy](prompts, texts), "gold": world.gold(prompts, texts), "length": first_eos.float().tolist(),
            "truncated": float((~ended).float().mean()), "kl_token": float(k1), "entropy": float((entropy * m).sum() / m.sum()),
            "distinct": len(set(texts)) / len(texts), "examples": texts[:4]}


def train_log_facts(run: Path, proxy: str) -> dict:
    """The trainer's own log: the true share of all-equal groups, the truncated share, the engine's log-prob difference."""
    facts = {}
    metrics = run / "metrics.jsonl"
    if metrics.is_file():  # policyshift
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        def mean(key):
            vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            return sum(vals) / len(vals) if vals else math.nan
        facts["train_zero_spread_mean"] = mean("group/zero_spread_frac")
        facts["train_truncated_mean"] = 1 - mean("response/eos_rate")
        facts["engine_logprob_diff_mean"] = mean("rollout/logprob_diff_abs_mean")
        if not math.isfinite(facts["engine_logprob_diff_mean"]):
            facts["engine_logprob_diff_mean"] = 0.0  # the training policy samples itself (rollout.engine hf): no engine copy
        return facts
    import pandas as pd

    frames = [pd.read_parquet(p) for p in sorted((run / "completions").glob("*.parquet"))]
    if frames:  # GRPOTrainer logs its completions; RLOOTrainer 1.16 writes none (its frac_reward_zero_std is after the KL penalty)
        df = pd.concat(frames)
        groups = df.groupby(["step", "prompt"])[proxy].agg(lambda s: float(s.nunique() == 1))
        facts["train_zero_spread_mean"] = float(groups.mean())
    else:
        facts["train_zero_spread_mean"] = math.nan
    state = json.loads((checkpoints(run)[-1][1] / "trainer_state.json").read_text())
    clipped = [e["completions/clipped_ratio"] for e in state["log_history"] if "completions/clipped_ratio" in e]
    facts["train_truncated_mean"] = sum(clipped) / len(clipped) if clipped else math.nan
    facts["engine_logprob_diff_mean"] = 0.0  # TRL without vLLM samples with the training model itself
    return facts


def measure(run: Path, sft: Path, proxy: str, max_len: int, held_out: list[str]) -> dict:
    from scipy import stats
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sft)
    ref = AutoModelForCausalLM.from_pretrained(sft).eval()
    per = {0: sample_stats(ref, ref, tok, held_out, max_len, proxy, seed=0)}
    for step, path in checkpoints(run):
        per[step] = sample_stats(AutoModelForCausalLM.from_pretrained(path).eval(), ref, tok, held_out, max_len, proxy, seed=0)
    r, f = per[0], per[max(per)]
    facts = {"checkpoint_steps": sorted(per)[1:]}
    for name in ("proxy", "gold"):
        sd = float(torch.tensor(r[name]).std()) or 1e-6
        facts[f"{name}_ref"], facts[f"{name}_final"] = sum(r[name]) / len(r[name]), sum(f[name]) / len(f[name])
        facts[f"{name}_gain_sigma"] = (facts[f"{name}_final"] - facts[f"{name}_ref"]) / sd
        facts[f"{name}_p"] = float(stats.ttest_ind(f[name], r[name], equal_var=False).pvalue)
        facts[f"{name}_by_checkpoint"] = {s: sum(v[name]) / len(v[name]) for s, v in per.items()}
    for name in ("kl_token", "entropy", "distinct", "truncated"):
        facts[f"{name}_ref"], facts[f"{name}_final"] = r[name], f[name]
        facts[f"{name}_by_checkpoint"] = {s: v[name] for s, v in per.items()}
    facts["length_ref"], facts["length_final"] = sum(r["length"]) / len(r["length"]), sum(f["length"]) / len(f["length"])
    facts["length_by_checkpoint"] = {s: sum(v["length"]) / len(v["length"]) for s, v in per.items()}
    facts["examples_final"] = f["examples"]
    facts.update(train_log_facts(run, proxy))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in facts.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "corpus"))
    ap.add_argument("--split", choices=sorted(SEEDS), default="main")
    ap.add_argument("--only", nargs="*", choices=sorted(RECIPES), help="recipe names (default: all)")
    ap.add_argument("--seeds", nargs="*", type=int, help="override the split's seeds")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.out) / args.split
    root.mkdir(parents=True, exist_ok=True)
    sft = Path(args.out) / "sft"
    if not (sft / "config.json").is_file():
        make_sft(sft)
    train_prompts, held_out = make_prompts(11, 48), make_prompts(99, HELD_OUT)
    (Path(args.out) / "held_out.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in held_out))
    index_file = root / "corpus.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    for recipe, (kind, proxy, overrides) in RECIPES.items():
        if args.only and recipe not in args.only:
            continue
        seeds = args.seeds or (*SEEDS[args.split], *HEALTHY_EXTRA[args.split].get(recipe, ()))
        if args.split != "main":  # a (recipe, seed) of the main half is not held out (healthy_grpo seed 3 is in both lists)
            seeds = [s for s in seeds if s not in (*SEEDS["main"], *HEALTHY_EXTRA["main"].get(recipe, ()))]
        for seed in seeds:
            name = f"{recipe}_s{seed}"
            run = root / name
            p = {**BASE, **overrides}
            start = time.time()
            shutil.rmtree(run, ignore_errors=True)
            (run_trl if kind.startswith("trl") else run_policyshift)(kind, proxy, p, seed, sft, run, train_prompts)
            seconds = time.time() - start
            facts = measure(run, sft, proxy, p["max_len"], held_out)
            facts.update({"recipe": recipe, "trainer": kind, "proxy": proxy, "seed": seed, "params": p, "train_seconds": round(seconds, 1)})
            (run / "facts.json").write_text(json.dumps(facts, indent=1))
            got = labels.label(facts)
            index[name] = {"label": got, "recipe": recipe, "trainer": kind, "seed": seed, "train_seconds": round(seconds, 1)}
            index_file.write_text(json.dumps(index, indent=1, sort_keys=True))
            print(f"{name}: {got or 'DROPPED'} ({seconds:.0f} s) proxy {facts['proxy_gain_sigma']:+.2f}σ gold {facts['gold_gain_sigma']:+.2f}σ "
                  f"kl {facts['kl_token_final']:.3f} len {facts['length_ref']:.1f}→{facts['length_final']:.1f} trunc {facts['truncated_final']:.2f} "
                  f"ent {facts['entropy_ref']:.2f}→{facts['entropy_final']:.2f} distinct {facts['distinct_final']:.2f} "
                  f"zero {facts['train_zero_spread_mean'] or math.nan:.2f} engine {facts['engine_logprob_diff_mean']:.3f}", flush=True)


if __name__ == "__main__":
    main()
