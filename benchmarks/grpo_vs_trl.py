"""Speed benchmark: policyshift GRPO against the newest TRL `GRPOTrainer` (1.16.0) at equal work.

Setting: CPU, fp32, 2 torch threads; the PPO benchmark's GPT-2 of 4 layers × 256 wide, vocabulary 4096, and
its 8-token prompts (`ppo_vs_trl.build_assets`: built here, nothing from the hub). Each step: 8 prompts ×
n = 8 samples = 64 completions of exactly 48 tokens (no early stop at EOS), a Python reward function,
group-normalized advantages (A = (r − mean_g)/(std_g + 1e-4)), one optimizer step on the whole batch
(one micro-batch: TRL num_iterations 1 ⇔ policyshift ppo.epochs 1 × num_minibatches 1), clipped
surrogate ε = 0.2, token mean over the batch (TRL loss_type "dapo"), AdamW, gradient clipping at 1.0,
no dropout, no gradient checkpointing, temperature 1, no top-k/top-p. Two KL settings: β = 0 (TRL's
default: no reference model; policyshift `kl.score_reference: false`) and β = 0.04 with the k3 estimator
as a loss term in both (`--beta 0.04`).

TRL runs in its own virtualenv (it needs no policyshift); policyshift in the interpreter that runs this
script. Each run is its own subprocess (its own peak RSS); runs alternate over `--rounds`; speed-ups are
paired within a round. See benchmarks/README.md ("GRPO: policyshift vs TRL 1.16") for the setup
commands and the figures.

    PYTHONPATH=src python benchmarks/grpo_vs_trl.py --trl-python /work/trl116-venv/bin/python --assets /tmp/ppo-assets
    PYTHONPATH=src python benchmarks/grpo_vs_trl.py --trl-python /work/trl116-venv/bin/python --beta 0 --beta 0.04 \\
        --iters 6 --warmup 2 --rounds 3 --json grpo.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ppo_vs_trl as bench  # noqa: E402  (assets, timers, load measurement, matmul peak: shared with the PPO benchmark)

# ---- the setting ---------------------------------------------------------------------------------
PROMPTS_PER_STEP, NUM_GENERATIONS = 8, 8
COMPLETIONS = PROMPTS_PER_STEP * NUM_GENERATIONS  # per step, in one micro-batch
PROMPT_LEN, RESPONSE_LEN = bench.PROMPT_LEN, bench.RESPONSE_LEN
LR, CLIP_EPS, STD_EPS, MAX_GRAD_NORM = 1e-6, 0.2, 1e-4, 1.0


def vowel_share_reward(prompts, completions, **_) -> list[float]:
    """The benchmark's Python reward, shared verbatim by both trainers (policyshift calls f(prompts, responses),
    TRL f(prompts=, completions=, completion_ids=, ...)): the share of letters of the completion that are vowels.
    Cheap, deterministic, and it differs within a group, so advantages are not all zero."""
    out = []
    for text in completions:
        letters = [c for c in text.lower() if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
    return out


# ---- FLOP count ----------------------------------------------------------------------------------
def grpo_flop_count(n_params: int, beta: float) -> dict:
    """FLOPs of one GRPO step, counted analytically as in ppo_vs_trl.flop_count (B = 64 completions,
    L = 8 + 48 = 56 tokens each):

        nominal  = 2·N·B·L (generation: prefill + one token per step)
                 + 2·N·B·L (reference forward, β > 0 only)
                 + 3·2·N·B·L (one forward + backward of the policy on the batch)

    dense: the transformer body's matmuls (12·d²·layers weights + attention scores at the mean context
    L/2) on every token, the LM head (2·d·V) only where its logits are used (the response positions).
    TRL's update also runs its LM head on the prompt positions (its fused head scores every position on
    CPU); `dense` does not count that."""
    B, L = COMPLETIONS, PROMPT_LEN + RESPONSE_LEN
    tokens = B * L
    fwd = 2 * n_params * tokens
    ref = beta > 0
    nominal_rollout = fwd * (2 if ref else 1)
    nominal_update = 3 * fwd
    d, layers = bench.N_EMBD, bench.N_LAYER
    body = (2 * 12 * d * d * layers + 2 * 2 * d * (L / 2) * layers) * tokens
    pol_fwd = body + 2 * d * bench.VOCAB * B * RESPONSE_LEN
    dense_rollout = pol_fwd * (2 if ref else 1)
    dense_update = 3 * pol_fwd
    return {"nominal_gflop": (nominal_rollout + nominal_update) / 1e9, "nominal_rollout_gflop": nominal_rollout / 1e9,
            "nominal_update_gflop": nominal_update / 1e9, "dense_gflop": (dense_rollout + dense_update) / 1e9,
            "dense_rollout_gflop": dense_rollout / 1e9, "dense_update_gflop": dense_update / 1e9}


# ---- policyshift worker --------------------------------------------------------------------------
def policyshift_config(assets: Path, threads: int, beta: float, output_dir: str, experiments=()):
    from policyshift.config import PPOConfig

    overrides = {k: v for name in experiments for k, v in CONFIG_EXPERIMENTS.get(name, {}).items()}

    return PPOConfig.from_dict({
        "model": {"policy": str(assets / "policy"), "dtype": "float32"},
        "data": {"prompts": str(assets / "prompts.jsonl"), "max_prompt_length": PROMPT_LEN},
        "rollout": {"batch_size": COMPLETIONS, "num_generations": NUM_GENERATIONS, "max_new_tokens": RESPONSE_LEN,
                    "temperature": 1.0, "stop_at_eos": False},
        # β = 0: no reference forward at all (TRL loads no reference model at β = 0); β > 0: k3 as a loss term
        "kl": {"estimator": "k3", "beta": beta, "placement": "loss", "controller": "fixed", "score_reference": beta > 0},
        # token mean over the whole batch ⇔ TRL loss_type "dapo" (its default)
        "algorithm": {"advantage": "grpo", "scale": "group", "std_eps": STD_EPS, "loss_aggregation": "token_mean"},
        "ppo": {"epochs": 1, "num_minibatches": 1, "grad_accum_steps": 1, "clip_range": CLIP_EPS, "lr": LR,
                "max_grad_norm": MAX_GRAD_NORM, "ent_coef": 0.0},
        "analysis": {"num_prompts": 0, "every": 0},
        "train": {"steps": 1000, "save_every": 0, "output_dir": output_dir, "device": "cpu", "num_threads": threads, "overwrite": True},
        "tracking": {"tensorboard": False},
    }, overrides)


def run_policyshift(assets: Path, iters: int, warmup: int, threads: int, beta: float, experiments: list[str] = ()) -> dict:
    import torch

    import policyshift
    import policyshift.rollout
    from policyshift.trainer import PPOTrainer

    torch.set_num_threads(threads)
    peak = bench.matmul_peak(threads)
    for name in experiments:
        EXPERIMENTS[name]()
    cfg = policyshift_config(assets, threads, beta, tempfile.mkdtemp(prefix="ps-grpo-bench-"), experiments)
    trainer = PPOTrainer(cfg, reward=vowel_share_reward)
    timers = bench.Timers()
    generated, optimizer_steps = [], []

    def sample_key(model, query_ids, *a, **k):  # (the key function sees the call's arguments: the prompt width)
        generated.append({"prompt_tokens": query_ids.shape[1]})
        return "sample"

    def after_sample(out):
        generated[-1].update(completions=out[0].shape[0], generated_tokens=out[0].shape[1])

    for module in bench.sampler_modules():
        timers.wrap(module, "sample", sample_key, on_exit=after_sample)
    # generate_rollout scores the sampled tokens under the reference through these names (the reference's body, then its
    # LM head in chunks); with the policy's own sampler nothing else calls them
    timers.wrap(policyshift.rollout, "response_hidden", "reference")
    timers.wrap(policyshift.rollout, "reference_logprobs", "reference")
    timers.wrap(trainer.models, "forward", "update_forward")
    timers.wrap(torch.autograd, "backward", "update_backward")
    timers.wrap(trainer.optimizer, "step", "update_optim", on_exit=lambda _: optimizer_steps.append(1))
    timers.wrap(torch.nn.utils, "clip_grad_norm_", "update_optim")
    iterations = []
    for _ in range(warmup + iters):
        timers.pop()
        generated.clear()
        optimizer_steps.clear()
        c0, t0 = bench.cpu_snapshot(), time.perf_counter()
        m = trainer.ppo_step()
        dt, c1 = time.perf_counter() - t0, bench.cpu_snapshot()
        t = timers.pop()
        gen, ref, update = t.get("sample", 0.0), t.get("reference", 0.0), m["time/update"]
        iterations.append({
            "step_s": dt, "others_cores": bench.others_cores(c0, c1),
            "generate_s": gen, "reference_s": ref, "score_s": m["time/score"], "update_s": update,
            "other_s": dt - gen - ref - m["time/score"] - update,
            "update_forward_s": t.get("update_forward", 0.0), "update_backward_s": t.get("update_backward", 0.0),
            "update_optim_s": t.get("update_optim", 0.0),
            "generated": list(generated), "optimizer_steps": len(optimizer_steps),
        })
    check_equal_work("policyshift", iterations, beta)
    return {"impl": "policyshift" + "".join("+" + e for e in experiments), "beta": beta, "experiments": list(experiments), "threads": torch.get_num_threads(), "matmul_peak_gflops": peak,
            "iterations": iterations, "warmup": warmup, "peak_rss_mib": bench.peak_rss_mib(),
            "versions": {"policyshift": policyshift.__file__, "torch": torch.__version__}}


# ---- TRL worker ----------------------------------------------------------------------------------
def run_trl(assets: Path, iters: int, warmup: int, threads: int, beta: float) -> dict:
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    peak = bench.matmul_peak(threads)
    n_steps = warmup + iters
    tok = AutoTokenizer.from_pretrained(assets / "policy")
    policy = AutoModelForCausalLM.from_pretrained(assets / "policy", dtype=torch.float32)
    prompts = [json.loads(line)["prompt"] for line in (assets / "prompts.jsonl").read_text().splitlines()]
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-bench-"),
        # one step = one generation batch of 64 completions = one micro-batch = one optimizer step
        per_device_train_batch_size=COMPLETIONS, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=NUM_GENERATIONS, num_iterations=1, max_completion_length=RESPONSE_LEN,
        generation_kwargs={"eos_token_id": None},  # no early stop (TRL puts the tokenizer's EOS here): see on_train_begin
        temperature=1.0, top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0,
        beta=beta, loss_type="dapo", scale_rewards="group", epsilon=CLIP_EPS, entropy_coef=0.0,
        learning_rate=LR, max_grad_norm=MAX_GRAD_NORM, lr_scheduler_type="constant", weight_decay=0.0,
        # GRPOConfig's defaults are bf16=True and gradient_checkpointing=True; dropout stays on unless disabled
        # (GPT-2 configs carry 0.1): the setting is fp32, no recompute, no dropout, as policyshift runs
        bf16=False, fp16=False, gradient_checkpointing=False, disable_dropout=True,
        max_steps=n_steps, log_completions=False, report_to="none", save_strategy="no", eval_strategy="no",
        disable_tqdm=True, logging_steps=1_000_000, seed=0, use_cpu=True, dataloader_num_workers=0,
    )
    timers = bench.Timers()
    generated, marks, optimizer_steps = [], {}, []


    def logps_key(model, *a, **k):
        if torch.is_grad_enabled():  # the update's forward (policy, with autograd)
            marks.setdefault("update_start", time.perf_counter())
            return "update_forward"
        return "reference" if model is trainer.ref_model else "old_logps"

    iterations = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            # No early stop: Trainer.train() has just aligned the model's generation_config with the tokenizer's EOS
            # (transformers' align_special_tokens); TRL's own GenerationConfig lost it through generation_kwargs.
            # TRL still masks each completion after a sampled EOS (as policyshift does), it only keeps generating.
            policy.generation_config.eos_token_id = None
            marks["step_start"], marks["cpu"] = time.perf_counter(), bench.cpu_snapshot()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            marks["optim_start"] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            timers.add("update_optim", time.perf_counter() - marks.pop("optim_start"))
            optimizer_steps.append(1)

        def on_step_end(self, args, state, control, **kw):
            now, cpu = time.perf_counter(), bench.cpu_snapshot()
            t = timers.pop()
            gen, ref, score = t.get("generate", 0.0), t.get("reference", 0.0) + t.get("old_logps", 0.0), t.get("score", 0.0)
            step, update = now - marks["step_start"], now - marks["update_start"]
            iterations.append({
                "step_s": step, "others_cores": bench.others_cores(marks["cpu"], cpu),
                "generate_s": gen, "reference_s": ref, "score_s": score, "update_s": update,
                "other_s": step - gen - ref - score - update,
                "update_forward_s": t.get("update_forward", 0.0), "update_backward_s": t.get("update_backward", 0.0),
                "update_optim_s": t.get("update_optim", 0.0), "old_logps_s": t.get("old_logps", 0.0),
                "generated": list(generated), "optimizer_steps": len(optimizer_steps),
            })
            generated.clear()
            optimizer_steps.clear()
            marks.clear()
            marks["step_start"], marks["cpu"] = now, cpu  # what follows on_step_end counts to the next step

    trainer = GRPOTrainer(model=policy, reward_funcs=vowel_share_reward, args=args, processing_class=tok,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[StepTimer()])
    assert trainer.generation_config.eos_token_id is None, trainer.generation_config  # generation_kwargs below
    generate = policy.generate

    def timed_generate(*a, **k):
        width = k["input_ids"].shape[1]
        assert policy.generation_config.eos_token_id is None and k["generation_config"].eos_token_id is None, "TRL would stop at EOS"
        t0 = time.perf_counter()
        out = generate(*a, **k)
        timers.add("generate", time.perf_counter() - t0)
        generated.append({"prompt_tokens": width, "completions": out.shape[0], "generated_tokens": out.shape[1] - width})
        return out

    policy.generate = timed_generate  # what unwrap_model_for_generation hands back on one CPU process
    timers.wrap(trainer, "_get_per_token_logps_and_entropies", logps_key)
    timers.wrap(trainer, "_calculate_rewards", "score")
    timers.wrap(torch.autograd, "backward", "update_backward")
    timers.wrap(trainer, "_clip_grad_norm", "update_optim")
    torch.set_num_threads(threads)  # in case anything during set-up changed it
    trainer.train()
    assert len(iterations) == n_steps, (len(iterations), n_steps)
    check_equal_work("trl", iterations, beta)
    return {"impl": "trl", "beta": beta, "threads": torch.get_num_threads(), "matmul_peak_gflops": peak,
            "iterations": iterations, "warmup": warmup, "peak_rss_mib": bench.peak_rss_mib(),
            "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
            "trl_settings": {"mixed_precision": trainer.accelerator.mixed_precision, "optim": str(args.optim),
                             "ref_model_dtype": str(trainer.ref_model.dtype) if trainer.ref_model is not None else None,
                             "policy_dtype": str(policy.dtype)}}


def check_equal_work(impl: str, iterations: list[dict], beta: float) -> None:
    """Every step: one sampling call of 64 completions of 8-token prompts × 48 generated tokens, a reference
    forward exactly when β > 0, no second forward of the policy before the update (TRL's "old logps": skipped
    with num_iterations 1), one optimizer step."""
    want = [{"prompt_tokens": PROMPT_LEN, "completions": COMPLETIONS, "generated_tokens": RESPONSE_LEN}]
    for i, it in enumerate(iterations):
        assert it["generated"] == want, f"{impl} step {i}: sampled {it['generated']}, expected {want}"
        assert it["optimizer_steps"] == 1, f"{impl} step {i}: {it['optimizer_steps']} optimizer steps, not 1"
        assert (it["reference_s"] > 0) == (beta > 0), f"{impl} step {i}: reference forward {it['reference_s']:.3f} s at β = {beta}"
        assert it.get("old_logps_s", 0.0) == 0.0, f"{impl} step {i}: an extra forward for the old logprobs"


# ---- experiments: equal-work variants of policyshift, run as the extra implementation "exp" ----------
# Monkeypatches (policyshift's sources are not edited), each naming the code it stands in for.
def _exp_decode_one_thread():
    """rollout.py sample(): run the sampling loop on 1 intra-op thread (the update keeps --threads). The decode
    step's matmuls are only 64 rows; the PPO benchmark measured batch-16 decode faster on 1 thread than on 2."""
    import torch

    for module in bench.sampler_modules():
        sample = module.sample

        def one_thread(*a, _sample=sample, **k):
            n = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return _sample(*a, **k)
            finally:
                torch.set_num_threads(n)

        module.sample = one_thread


# Config changes: policyshift's own extra work that TRL does not do, switched off
CONFIG_EXPERIMENTS = {
    # no full-vocabulary exact KL(π‖π_ref) and entropy per visited state (metrics only; TRL computes neither in its
    # rollout): the sampler keeps no entropy/hidden states, the reference pass no second LM head for the policy
    "no_exact_kl": {"rollout.exact_kl": False},
}

EXPERIMENTS = {
    "cdf_sampling": bench.EXPERIMENTS["cdf_sampling"],  # inverse-CDF draw instead of torch.multinomial (ppo_vs_trl.py)
    "decode_one_thread": _exp_decode_one_thread,
    "no_exact_kl": lambda: None,  # a config change (CONFIG_EXPERIMENTS)
}


# ---- driver --------------------------------------------------------------------------------------
PHASES = ["generate_s", "reference_s", "score_s", "update_s", "update_forward_s", "update_backward_s", "update_optim_s", "other_s"]


def summarize(runs: list[dict], flops: dict) -> dict:
    steady = [it for r in runs for it in bench.steady_iterations(r)]
    med = {k: statistics.median(it[k] for it in steady) for k in ["step_s"] + PHASES}
    step = med["step_s"]
    peak = statistics.median(r["matmul_peak_gflops"] for r in runs)
    return {
        "s_per_step": step, "completions_per_s": COMPLETIONS / step, "phases_s": {k: med[k] for k in PHASES},
        "per_run_median_s": [bench.steady_median(r, "step_s") for r in runs],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "matmul_peak_gflops": peak,
        "nominal_gflops": flops["nominal_gflop"] / step, "dense_gflops": flops["dense_gflop"] / step,
        "dense_util": flops["dense_gflop"] / step / peak, "n_steady": len(steady),
        "others_cores_median": statistics.median(it["others_cores"] for it in steady),
    }


def print_table(beta: float, summary: dict, flops: dict):
    impls = list(summary)
    rows = [
        ("s / step (median)", "s_per_step", "{:.3f}"),
        ("completions / s", "completions_per_s", "{:.2f}"),
        ("  generate (sampling loop)", ("phases_s", "generate_s"), "{:.3f}"),
        ("  reference forward", ("phases_s", "reference_s"), "{:.3f}"),
        ("  score (reward function)", ("phases_s", "score_s"), "{:.3f}"),
        ("  update (1 optimizer step)", ("phases_s", "update_s"), "{:.3f}"),
        ("    update forward", ("phases_s", "update_forward_s"), "{:.3f}"),
        ("    update backward", ("phases_s", "update_backward_s"), "{:.3f}"),
        ("    optimizer (+clip)", ("phases_s", "update_optim_s"), "{:.3f}"),
        ("  other (tokenize, decode, logprobs, adv., metrics)", ("phases_s", "other_s"), "{:.3f}"),
        ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
        ("dense GFLOP/s", "dense_gflops", "{:.1f}"),
        ("matmul peak GFLOP/s (same load)", "matmul_peak_gflops", "{:.1f}"),
        ("utilization (dense / peak)", "dense_util", "{:.1%}"),
    ]
    get = lambda s, key: s[key[0]][key[1]] if isinstance(key, tuple) else s[key]  # noqa: E731
    w = 52
    print(f"\nβ = {beta}: all steady steps")
    print(f"{'':<{w}}" + "".join(f"{k:>14}" for k in impls))
    for label, key, fmt in rows:
        print(f"{label:<{w}}" + "".join(f"{fmt.format(get(summary[k], key)):>14}" for k in impls))
    for k in impls:
        s = summary[k]
        print(f"{k}: {s['n_steady']} steady steps (others' load median {s['others_cores_median']:.2f} cores), "
              f"per-run medians {', '.join(f'{x:.3f}' for x in s['per_run_median_s'])}")
    print(f"FLOPs per step: nominal {flops['nominal_gflop']:.1f} GFLOP, dense {flops['dense_gflop']:.1f} GFLOP "
          f"(rollout {flops['dense_rollout_gflop']:.1f}, update {flops['dense_update_gflop']:.1f})")
    for k in impls:
        if k != "trl" and "trl" in summary:
            print(f"completions/s, {k} / TRL (pooled medians): {summary['trl']['s_per_step'] / summary[k]['s_per_step']:.2f}x")


def worker_main(ns):
    args = (Path(ns.assets), ns.iters, ns.warmup, ns.threads, ns.beta[0])
    if ns.worker == "trl":
        out = run_trl(*args)
    else:
        out = run_policyshift(*args, ns.experiment if ns.worker == "exp" else [])
    Path(ns.result).write_text(json.dumps(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trl-python", help="the python of the virtualenv that holds trl==1.16.0 (never installed by this script)")
    ap.add_argument("--beta", type=float, action="append", help="KL coefficient(s) to run (repeatable; default 0)")
    ap.add_argument("--iters", type=int, default=6, help="steady steps per run (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2, help="steps per run excluded from the figures")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each implementation, alternated")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--omp-wait-policy", choices=["passive", "active", "default"], default="passive",
                    help="OMP_WAIT_POLICY for the workers (passive: see benchmarks/README.md, 'the noise')")
    ap.add_argument("--only", action="append", choices=["policyshift", "trl", "exp"], help="run only these (repeatable)")
    ap.add_argument("--experiment", action="append", default=[], choices=sorted(EXPERIMENTS),
                    help="policyshift variant (a monkeypatch, repeatable), run as an extra implementation 'exp'")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each run, wait up to SECONDS for the machine to be free of other load")
    ap.add_argument("--json", help="write the raw runs and the summary here")
    ap.add_argument("--assets", help="directory for the tokenizer/models/prompts (the PPO benchmark's; reused if built)")
    ap.add_argument("--worker", choices=["policyshift", "trl", "exp"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    ns.beta = ns.beta or [0.0]
    if ns.worker:
        return worker_main(ns)
    impls = ns.only or (["policyshift", "trl"] + (["exp"] if ns.experiment else []))
    if "exp" in impls and not ns.experiment:
        ap.error("--only exp needs --experiment")
    if "trl" in impls and not ns.trl_python:
        ap.error("--trl-python is required to run TRL (see benchmarks/README.md for its virtualenv)")

    assets = bench.build_assets(Path(ns.assets) if ns.assets else Path(tempfile.mkdtemp(prefix="grpo-bench-assets-")))
    n_params, _ = bench.param_counts(assets)
    flops = {b: grpo_flop_count(n_params, b) for b in ns.beta}
    env = {**os.environ, "OMP_NUM_THREADS": str(ns.threads), "MKL_NUM_THREADS": str(ns.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "ACCELERATE_USE_CPU": "true", "PYTHONWARNINGS": "ignore"}
    if ns.omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = ns.omp_wait_policy.upper()
    trl_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # TRL's venv imports nothing of policyshift
    python = {"policyshift": sys.executable, "exp": sys.executable, "trl": ns.trl_python}
    print(f"{COMPLETIONS} completions/step ({PROMPTS_PER_STEP} prompts × n={NUM_GENERATIONS}), {PROMPT_LEN}+{RESPONSE_LEN} tokens; "
          f"threads {ns.threads}, OMP_WAIT_POLICY {env.get('OMP_WAIT_POLICY', 'unset')}; β {ns.beta}; "
          f"{ns.rounds} rounds × ({ns.warmup} warm-up + {ns.iters}) steps; experiments: {', '.join(ns.experiment) or 'none'}", flush=True)
    runs: dict[float, dict[str, list]] = {b: {k: [] for k in impls} for b in ns.beta}
    for r in range(ns.rounds):
        for beta in ns.beta:
            for impl in (impls if r % 2 == 0 else impls[::-1]):
                if ns.wait_quiet:
                    bench.wait_until_quiet(ns.wait_quiet)
                with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                    result = f.name
                cmd = [python[impl], __file__, "--worker", impl, "--assets", str(assets), "--iters", str(ns.iters),
                       "--warmup", str(ns.warmup), "--threads", str(ns.threads), "--beta", str(beta), "--result", result]
                cmd += [x for e in ns.experiment for x in ("--experiment", e)]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=trl_env if impl == "trl" else env, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
                    raise SystemExit(f"{impl} worker failed (exit {proc.returncode})")
                run = json.loads(Path(result).read_text())
                os.unlink(result)
                runs[beta][impl].append(run)
                steady = [it["step_s"] for it in bench.steady_iterations(run)]
                print(f"round {r + 1} β={beta} {impl:<12} median {statistics.median(steady):.3f} s/step  others' load "
                      f"{bench.steady_median(run, 'others_cores'):.2f} cores (min {min(steady):.3f}, max {max(steady):.3f}; "
                      f"matmul peak {run['matmul_peak_gflops']:.0f} GFLOP/s; rss {run['peak_rss_mib']:.0f} MiB; "
                      f"wall {time.perf_counter() - t0:.0f} s)", flush=True)
    out = {}
    for beta in ns.beta:
        summary = {k: summarize(v, flops[beta]) for k, v in runs[beta].items()}
        print_table(beta, summary, flops[beta])
        paired = bench.paired_ratios(runs[beta])
        for (a, b), (ratios, n_rounds) in paired.items():
            if ratios:
                print(f"paired per-round speed-up {a} vs {b} (completions/s ratio; rounds where the others' load differed "
                      f"< 0.1 cores: {len(ratios)} of {n_rounds}): median {statistics.median(ratios):.2f}x, "
                      f"range {min(ratios):.2f}-{max(ratios):.2f}")
        out[str(beta)] = {"flops": flops[beta], "summary": summary, "runs": runs[beta],
                          "paired_speedups": {f"{a}_vs_{b}": r for (a, b), (r, _) in paired.items()}}
    if ns.json:
        Path(ns.json).write_text(json.dumps({"setting": {
            "completions": COMPLETIONS, "num_generations": NUM_GENERATIONS, "prompt_len": PROMPT_LEN, "response_len": RESPONSE_LEN,
            "threads": ns.threads, "params": n_params, "omp_wait_policy": env.get("OMP_WAIT_POLICY")}, "by_beta": out}, indent=1))


if __name__ == "__main__":
    main()
