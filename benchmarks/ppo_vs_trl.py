"""Speed benchmark: policyshift's PPOTrainer against TRL 1.12's PPOTrainer (`trl.experimental.ppo`) at equal work.

Setting (the issue's): CPU, fp32, a GPT-2 of 4 layers × 256 wide (4 heads), vocabulary 4096; batch 16,
8-token prompts, 48-token responses (no early stop at EOS: both generate all 48 tokens), 4 PPO epochs
× 2 minibatches (8 optimizer steps per iteration), a separate value model and a separate reward model
(GPT-2 sequence classifiers of the same size), k1 KL estimator, β 0.05, lr 1e-5.

Both implementations load the same weights and tokenizer from one directory (built here: nothing
comes from the hub). Each run of an implementation is its own subprocess, so that its peak RSS is its
own; runs alternate (policyshift, TRL, [exp, exp,] TRL, policyshift, ...) over `--rounds`, and speed-ups
are also reported paired within each round (back-to-back runs under the same load of other processes,
which every worker measures per iteration from /proc/stat). Every worker first measures the fp32 matmul
peak under the load of that moment.

    python benchmarks/ppo_vs_trl.py --assets /tmp/ppo-assets             # 2 rounds × (2 + 8) iterations, 2 threads
    python benchmarks/ppo_vs_trl.py --iters 4 --warmup 1 --rounds 3 --wait-quiet 60 --json out.json
    python benchmarks/ppo_vs_trl.py --only policyshift --only exp --experiment cdf_sampling
    python benchmarks/ppo_vs_trl.py --only trl --only exp --experiment bf16_autocast --experiment shared_critic

See benchmarks/README.md for the measured figures.

Needs `pip install trl==1.12.0` (policyshift's `bench` extra) next to policyshift.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ---- the setting ---------------------------------------------------------------------------------
BATCH, PROMPT_LEN, RESPONSE_LEN = 16, 8, 48
EPOCHS, MINIBATCHES = 4, 2
N_LAYER, N_EMBD, N_HEAD, VOCAB, N_POSITIONS = 4, 256, 4, 4096, 1024  # 1024: GPT-2's default position table
LR, KL_COEF = 1e-5, 0.05
N_PROMPTS = 512


# ---- FLOP count ----------------------------------------------------------------------------------
def flop_count(n_params: int, n_params_cls: int) -> dict:
    """FLOPs of one PPO iteration, counted analytically.

    Convention of the issue ("nominal"): a forward pass costs 2·params·tokens, forward+backward 3× that;
    tokens per episode L = prompt + response = 8 + 48 = 56, B = 16 episodes:

        rollout  = 2·N_pol·B·L  (generation: prefill + one token per step, ≈ B·L tokens through the policy)
                 + 2·N_pol·B·L  (reference forward)
                 + 2·N_cls·B·L  (value forward)
                 + 2·N_cls·B·L  (reward forward)
        update   = epochs · 3 · (2·N_pol·B·L + 2·N_cls·B·L)   (each epoch sees every episode once)
        total    = rollout + update

    N counts every parameter, embeddings included (as the issue's 222 GFLOP figure does).
    `dense` counts only the matmul work a forward pass must do: the transformer blocks
    (12·d²·layers weights, + attention scores 2·2·d·ctx per token per layer at the mean context)
    and the LM head (2·d·V per token) on the positions whose logits are used (the response positions);
    embedding lookups cost no FLOPs. Both implementations do the same *required* work; TRL also runs
    its LM head on the prompt positions, which `dense` does not count.
    """
    B, L = BATCH, PROMPT_LEN + RESPONSE_LEN
    tokens = B * L
    fwd_pol, fwd_cls = 2 * n_params * tokens, 2 * n_params_cls * tokens
    rollout = 2 * fwd_pol + 2 * fwd_cls
    update = EPOCHS * 3 * (fwd_pol + fwd_cls)
    nominal = rollout + update

    d, layers = N_EMBD, N_LAYER
    block_w = 12 * d * d * layers  # qkv 3d², proj d², mlp 8d²
    attn = 2 * 2 * d * (L / 2) * layers  # QKᵀ and AV at the mean causal context L/2
    per_tok_body = 2 * block_w + attn
    head = 2 * d * VOCAB
    body_fwd = per_tok_body * tokens
    pol_fwd = body_fwd + head * B * RESPONSE_LEN
    dense_rollout = 2 * pol_fwd + 2 * body_fwd  # generation, reference, value, reward
    dense_update = EPOCHS * 3 * (pol_fwd + body_fwd)
    return {
        "nominal_gflop": nominal / 1e9, "nominal_rollout_gflop": rollout / 1e9, "nominal_update_gflop": update / 1e9,
        "dense_gflop": (dense_rollout + dense_update) / 1e9, "dense_rollout_gflop": dense_rollout / 1e9,
        "dense_update_gflop": dense_update / 1e9,
    }


def matmul_peak(threads: int, seconds: float = 1.5, n: int = 2048) -> float:
    """fp32 GFLOP/s of a large torch.mm loop (the best of a few ~0.2 s windows)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.2:
            torch.mm(a, b)
            k += 1
        best = max(best, 2 * n**3 * k / (time.perf_counter() - t0) / 1e9)
    return best


# ---- assets: tokenizer, models, prompts ----------------------------------------------------------
def _words(rng: random.Random, n: int) -> list[str]:
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["an", "en", "in", "on", "ar", "er", "or", "st", "th"]
    out = set()
    while len(out) < n:
        out.add("".join(rng.choice(syll) for _ in range(rng.randint(1, 4))))
    return sorted(out)


def build_assets(root: Path) -> Path:
    """Byte-level BPE tokenizer (vocab 4096) trained with `tokenizers`, a GPT-2 policy and two GPT-2
    sequence classifiers (reward, value) saved with save_pretrained, and 512 prompts of exactly 8 tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

    if (root / "done").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = _words(rng, 6000)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 20))) for _ in range(30000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|pad|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|pad|>")
    assert len(fast) == VOCAB, len(fast)

    # prompts of exactly PROMPT_LEN tokens that round-trip: decode(ids) encodes back to the same ids
    prompts, ids_list = [], []
    for text in texts:
        ids = fast(" " + text)["input_ids"][:PROMPT_LEN]
        if len(ids) < PROMPT_LEN:
            continue
        s = fast.decode(ids)
        if fast(s)["input_ids"] == ids:
            prompts.append(s)
            ids_list.append(ids)
        if len(prompts) == N_PROMPTS:
            break
    assert len(prompts) == N_PROMPTS
    with open(root / "prompts.jsonl", "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")
    (root / "prompt_ids.json").write_text(json.dumps(ids_list))

    def config(**kw):
        return GPT2Config(vocab_size=VOCAB, n_positions=N_POSITIONS, n_layer=N_LAYER, n_embd=N_EMBD, n_head=N_HEAD,
                          bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, **kw)

    torch.manual_seed(0)
    GPT2LMHeadModel(config()).save_pretrained(root / "policy")
    torch.manual_seed(1)
    GPT2ForSequenceClassification(config(num_labels=1)).save_pretrained(root / "reward")
    torch.manual_seed(2)
    GPT2ForSequenceClassification(config(num_labels=1)).save_pretrained(root / "value")
    for sub in ("policy", "reward", "value"):
        fast.save_pretrained(root / sub)
    (root / "done").write_text("")
    return root


def param_counts(assets: Path) -> tuple[int, int]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    pol = AutoModelForCausalLM.from_pretrained(assets / "policy")
    cls = AutoModelForSequenceClassification.from_pretrained(assets / "value")
    return sum(p.numel() for p in pol.parameters()), sum(p.numel() for p in cls.parameters())


# ---- timers --------------------------------------------------------------------------------------
class Timers:
    """Accumulating wall-clock timers; `wrap(obj, name, key)` times every call of obj.name."""

    def __init__(self):
        self.acc: dict[str, float] = {}

    def add(self, key: str, dt: float):
        self.acc[key] = self.acc.get(key, 0.0) + dt

    def wrap(self, obj, name: str, key, on_exit=None):
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            k = key(*args, **kwargs) if callable(key) else key
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.add(k, time.perf_counter() - t0)
            if on_exit is not None:
                on_exit(out)
            return out

        setattr(obj, name, timed)

    def pop(self) -> dict:
        out, self.acc = self.acc, {}
        return out


def cpu_snapshot() -> tuple[int, int, int]:
    """(busy jiffies of the whole machine, all jiffies, jiffies of this process): the difference of two
    snapshots tells how much CPU *other* processes took while an iteration ran."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = sum(v) - v[3] - v[4]  # minus idle and iowait
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return busy, sum(v), int(fields[11]) + int(fields[12])  # utime + stime, all threads


def others_cores(a, b) -> float:
    """Mean number of cores that other processes kept busy between snapshots a and b."""
    busy, total, own = (y - x for x, y in zip(a, b))
    ncpu = os.cpu_count() or 1
    return max(busy - own, 0) / total * ncpu if total else 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- policyshift worker --------------------------------------------------------------------------
def policyshift_config(assets: Path, threads: int, experiments: list[str], output_dir: str):
    """The benchmark setting as a policyshift PPOConfig, with the config changes of `experiments`
    (CONFIG_EXPERIMENTS) applied. Shared with profile_policyshift.py, so both run the same setup."""
    from policyshift.config import PPOConfig

    overrides = {k: v for name in experiments for k, v in CONFIG_EXPERIMENTS.get(name, {}).items()}
    return PPOConfig.from_dict({
        "model": {"policy": str(assets / "policy"), "critic": str(assets / "value"), "dtype": "float32"},
        "data": {"prompts": str(assets / "prompts.jsonl"), "max_prompt_length": PROMPT_LEN},
        "rollout": {"batch_size": BATCH, "max_new_tokens": RESPONSE_LEN, "temperature": 1.0, "stop_at_eos": False},
        "reward": {"model": str(assets / "reward"), "batch_size": 32},
        "kl": {"estimator": "k1", "beta": KL_COEF, "controller": "fixed"},
        "ppo": {"epochs": EPOCHS, "num_minibatches": MINIBATCHES, "lr": LR},
        "analysis": {"num_prompts": 0, "every": 0},
        "train": {"steps": 1000, "save_every": 0, "output_dir": output_dir, "device": "cpu", "num_threads": threads, "overwrite": True},
        "tracking": {"tensorboard": False},
    }, overrides)


def sampler_modules() -> list:
    """The modules that call policyshift's sampling loop by their own name `sample`: rollout (its
    generate_rollout without an engine) and engines (HFEngine, the trainer's default engine, imports
    it). A wrapper that times or labels the sampling must replace the name in both."""
    import policyshift.engines
    import policyshift.rollout

    return [policyshift.rollout, policyshift.engines]


def run_policyshift(assets: Path, iters: int, warmup: int, threads: int, experiments: list[str]) -> dict:
    import torch

    from policyshift.trainer import PPOTrainer

    torch.set_num_threads(threads)
    peak = matmul_peak(threads)
    for name in experiments:
        EXPERIMENTS[name]()
    cfg = policyshift_config(assets, threads, experiments, tempfile.mkdtemp(prefix="ps-bench-"))
    trainer = PPOTrainer(cfg)
    timers = Timers()
    lengths = []
    for module in sampler_modules():
        timers.wrap(module, "sample", "sample", on_exit=lambda out: lengths.append(out[0].shape[1]))
    timers.wrap(trainer.models, "forward", "update_forward")
    timers.wrap(torch.autograd, "backward", "update_backward")
    timers.wrap(trainer.optimizer, "step", "update_optim")
    timers.wrap(torch.nn.utils, "clip_grad_norm_", "update_optim")
    iters_out = []
    for i in range(warmup + iters):
        timers.pop()
        c0, t0 = cpu_snapshot(), time.perf_counter()
        m = trainer.ppo_step()
        dt, c1 = time.perf_counter() - t0, cpu_snapshot()
        t = timers.pop()
        iters_out.append({
            "step_s": dt,
            "others_cores": others_cores(c0, c1),
            "generate_s": t.get("sample", 0.0),
            "rollout_fwd_s": m["time/generate"] - t.get("sample", 0.0) + m["time/score"],
            "update_s": m["time/update"],
            "update_forward_s": t.get("update_forward", 0.0),
            "update_backward_s": t.get("update_backward", 0.0),
            "update_optim_s": t.get("update_optim", 0.0),
            "response_len": lengths[-1],
        })
    assert all(r["response_len"] == RESPONSE_LEN for r in iters_out), "policyshift generated fewer than 48 tokens"
    return {"impl": "policyshift" + ("+" + "+".join(experiments) if experiments else ""), "threads": torch.get_num_threads(), "matmul_peak_gflops": peak, "iterations": iters_out,
            "warmup": warmup, "peak_rss_mib": peak_rss_mib(), "experiments": experiments}


# ---- TRL worker ----------------------------------------------------------------------------------
def run_trl(assets: Path, iters: int, warmup: int, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(threads)
    peak = matmul_peak(threads)
    n_iter = warmup + iters
    tok = AutoTokenizer.from_pretrained(assets / "policy", padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(assets / "policy", dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(assets / "policy", dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(assets / "reward", num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(assets / "value", num_labels=1, dtype=torch.float32)
    ids = json.loads((assets / "prompt_ids.json").read_text())
    dataset = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        # one iteration = 16 episodes: local_batch_size = per_device_train_batch_size × grad_accum = 16, split in 2
        # minibatches of 8, each one micro-batch, one optimizer step per minibatch (8 steps per iteration).
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, num_mini_batches=MINIBATCHES,
        num_ppo_epochs=EPOCHS, local_rollout_forward_batch_size=BATCH,
        response_length=RESPONSE_LEN, temperature=1.0, kl_estimator="k1", kl_coef=KL_COEF,
        missing_eos_penalty=None, stop_token=None, stop_token_id=None,
        total_episodes=BATCH * n_iter, num_sample_generations=0, learning_rate=LR,
        # TRL's PPO defaults are bf16=True and gradient_checkpointing=True: the setting is fp32, no recompute
        # (bf16=True would change nothing here anyway: TRL 1.12's PPOTrainer builds its own Accelerator()
        # without mixed_precision, so the flag never reaches the model math; checked: accelerator.mixed_precision == "no")
        bf16=False, fp16=False, gradient_checkpointing=False,
        report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True, logging_steps=1000000,
        seed=0, use_cpu=True, dataloader_num_workers=0,
    )
    timers = Timers()
    gen_steps = []
    marks: dict = {}

    def after_generation(out):
        gen_steps.append(out[1].shape[1])  # logits of each generated step: 48 means no early stop
        marks["gen_end"] = time.perf_counter()

    def forward_key(*a, **k):
        if torch.is_grad_enabled() and "update_start" not in marks:
            marks["update_start"] = time.perf_counter()
        return "update_forward" if torch.is_grad_enabled() else "rollout_forward"

    timers.wrap(trl_ppo, "batch_generation", "generate", on_exit=after_generation)
    timers.wrap(trl_ppo, "forward", forward_key)
    timers.wrap(trl_ppo, "get_reward", "rollout_forward")
    timers.wrap(torch.autograd, "backward", "update_backward")
    iterations = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks["step_start"], marks["cpu"] = time.perf_counter(), cpu_snapshot()

        def on_step_end(self, args, state, control, **kw):
            now, cpu = time.perf_counter(), cpu_snapshot()
            t = timers.pop()
            iterations.append({
                "step_s": now - marks["step_start"],
                "others_cores": others_cores(marks["cpu"], cpu),
                "generate_s": t.get("generate", 0.0),
                "rollout_fwd_s": marks["update_start"] - marks["gen_end"],
                "update_s": now - marks["update_start"],
                "update_forward_s": t.get("update_forward", 0.0),
                "update_backward_s": t.get("update_backward", 0.0),
                "update_optim_s": t.get("update_optim", 0.0),
                "response_len": gen_steps[-1],
            })
            marks.clear()
            marks["step_start"], marks["cpu"] = now, cpu  # what follows on_step_end (gc.collect, dels) counts to the next iteration

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value, callbacks=[StepTimer()])
    timers.wrap(trainer.optimizer, "step", "update_optim")
    torch.set_num_threads(threads)  # in case anything during set-up changed it
    trainer.train()
    assert len(iterations) == n_iter, (len(iterations), n_iter)
    assert all(r["response_len"] == RESPONSE_LEN for r in iterations), "TRL stopped generating before 48 tokens"
    return {"impl": "trl", "threads": torch.get_num_threads(), "matmul_peak_gflops": peak, "iterations": iterations,
            "warmup": warmup, "peak_rss_mib": peak_rss_mib(), "experiments": []}


# ---- experiments: policyshift variants, run as the extra implementation "exp" --------------------
# A candidate speed-up is a monkeypatch (the sources are not edited) that names the file and function it
# stands in for; see benchmarks/README.md for the measured gains. Candidates that landed in policyshift
# were removed from here (fused_adamw, gelu_tanh, lean_update_losses, lean_rollout: in 6517a6e; see git
# history). Options the library already has are config changes (CONFIG_EXPERIMENTS).
def _exp_cdf_sampling():
    """rollout.py sample(): draw the token by inverse CDF (one uniform per row, cumsum + searchsorted)
    instead of torch.multinomial, which on CPU draws an exponential variate for every vocabulary entry
    (16 × 4096 per step: ~1.2 ms of the ~9 ms decode step). Exactly the same distribution, a different
    random stream (so not the same tokens as today for a given seed)."""
    import torch

    orig = torch.multinomial

    def multinomial(probs, num_samples, replacement=False, *, generator=None, out=None):
        if num_samples != 1 or probs.dim() != 2 or out is not None:
            return orig(probs, num_samples, replacement, generator=generator, out=out)
        cdf = probs.cumsum(-1)
        u = torch.rand(probs.shape[0], 1, generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
        return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[1] - 1)

    torch.multinomial = multinomial


# Not equal work: policyshift options that TRL 1.12's PPO does not offer (run_policyshift applies them).
CONFIG_EXPERIMENTS = {
    # value head on the policy's own last hidden state: no critic backbone to run forward and backward
    # (TRL needs a separate value model)
    "shared_critic": {"model.share_critic_backbone": True},
    # bf16 matmuls, fp32 master weights and optimizer: torch.autocast("cpu", bfloat16) over the rollout
    # (sampling, reference and value forwards) and around the update's forward; the backward follows its
    # forward's autocast. Shows what the CPU's AVX512-BF16 matmuls buy; logprobs carry bf16 rounding.
    # (TRL 1.12's own bf16=True never reaches its PPO's math: see run_trl.)
    "bf16_autocast": {"train.mixed_precision": "bf16"},
}

EXPERIMENTS = {
    "shared_critic": lambda: None,  # config changes: nothing to patch
    "bf16_autocast": lambda: None,
    "cdf_sampling": _exp_cdf_sampling,
}
# "all" = the experiments that do the same work as plain policyshift (not bf16, not shared_critic)
EQUAL_WORK = ["cdf_sampling"]


# ---- driver --------------------------------------------------------------------------------------
PHASES = ["generate_s", "rollout_fwd_s", "update_s", "update_forward_s", "update_backward_s", "update_optim_s"]


def wait_until_quiet(timeout_s: float, window_s: float = 3.0) -> float:
    """Block until other processes keep < QUIET cores busy over a `window_s` window (or timeout_s passes).
    Returns the last measured load of the others, in cores."""
    t_end = time.monotonic() + timeout_s
    while True:
        a = cpu_snapshot()
        time.sleep(window_s)
        load = others_cores(a, cpu_snapshot())
        if load < QUIET or time.monotonic() >= t_end:
            return load


QUIET = 0.15  # an iteration is "quiet" when other processes kept < 0.15 cores busy on average while it ran


def steady_iterations(run: dict) -> list[dict]:
    """A run's iterations after its warm-up: every figure is taken from these only."""
    return run["iterations"][run["warmup"]:]


def steady_median(run: dict, key: str) -> float:
    return statistics.median(it[key] for it in steady_iterations(run))


def summarize(runs: list[dict], flops: dict, quiet_only: bool = False) -> dict:
    steady = [it for r in runs for it in steady_iterations(r)]
    n_all = len(steady)
    if quiet_only:
        steady = [it for it in steady if it.get("others_cores", 0.0) < QUIET]
        if not steady:
            return {}
    med = {k: statistics.median(it[k] for it in steady) for k in ["step_s"] + PHASES}
    per_run = [steady_median(r, "step_s") for r in runs]
    peak = statistics.median(r["matmul_peak_gflops"] for r in runs)
    step = med["step_s"]
    q = statistics.quantiles([it["step_s"] for it in steady], n=4) if len(steady) >= 4 else [min(x["step_s"] for x in steady), 0, max(x["step_s"] for x in steady)]
    return {
        "s_per_iter": step, "episodes_per_s": BATCH / step, "iqr_s": [q[0], q[-1]], "per_run_median_s": per_run,
        "phases_s": {k: med[k] for k in PHASES}, "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "nominal_gflops": flops["nominal_gflop"] / step, "dense_gflops": flops["dense_gflop"] / step,
        "matmul_peak_gflops": peak, "nominal_util": flops["nominal_gflop"] / step / peak,
        "dense_util": flops["dense_gflop"] / step / peak, "n_steady": len(steady), "n_all": n_all,
        "others_cores_median": statistics.median(it.get("others_cores", 0.0) for it in steady),
    }


def paired_ratios(runs: dict) -> dict:
    """Speed-up of each implementation over TRL (and of exp over policyshift) round by round: runs of one
    round are back to back, so when the others' load was the same for both, their ratio is far less noisy
    than a ratio of pooled medians."""
    pairs = [(k, "trl") for k in runs if k != "trl" and "trl" in runs]
    if "exp" in runs and "policyshift" in runs:
        pairs.append(("exp", "policyshift"))
    out = {}
    for a, b in pairs:
        ratios = []
        for ra, rb in zip(runs[a], runs[b]):
            if abs(steady_median(ra, "others_cores") - steady_median(rb, "others_cores")) < 0.1:
                ratios.append(steady_median(rb, "step_s") / steady_median(ra, "step_s"))
        out[(a, b)] = (ratios, min(len(runs[a]), len(runs[b])))
    return out


def print_table(summary: dict, flops: dict):
    impls = list(summary)  # "policyshift", "trl", and "exp" (policyshift with --experiment patches) when present
    rows = [
        ("s / iteration (median)", "s_per_iter", "{:.3f}"),
        ("episodes / s", "episodes_per_s", "{:.2f}"),
        ("  generate (sampling loop)", ("phases_s", "generate_s"), "{:.3f}"),
        ("  rollout fwd (ref+value+reward)", ("phases_s", "rollout_fwd_s"), "{:.3f}"),
        ("  update (4 epochs × 2 mb)", ("phases_s", "update_s"), "{:.3f}"),
        ("    update forward", ("phases_s", "update_forward_s"), "{:.3f}"),
        ("    update backward", ("phases_s", "update_backward_s"), "{:.3f}"),
        ("    optimizer (+clip)", ("phases_s", "update_optim_s"), "{:.3f}"),
        ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
        ("nominal GFLOP/s", "nominal_gflops", "{:.1f}"),
        ("dense GFLOP/s", "dense_gflops", "{:.1f}"),
        ("matmul peak GFLOP/s (same load)", "matmul_peak_gflops", "{:.1f}"),
        ("utilization (nominal / peak)", "nominal_util", "{:.1%}"),
        ("utilization (dense / peak)", "dense_util", "{:.1%}"),
    ]

    def get(s, key):
        return s[key[0]][key[1]] if isinstance(key, tuple) else s[key]

    ratios = [(k, "trl") for k in impls if k != "trl" and "trl" in impls]
    w = 34
    print(f"\n{'':<{w}}" + "".join(f"{k:>14}" for k in impls) + "".join(f"{k[:6] + '/TRL':>12}" for k, _ in ratios))
    for label, key, fmt in rows:
        vals = {k: get(summary[k], key) for k in impls}
        line = f"{label:<{w}}" + "".join(f"{fmt.format(vals[k]):>14}" for k in impls)
        line += "".join(f"{vals[a] / vals[b]:>12.2f}" if vals[b] else f"{'':>12}" for a, b in ratios)
        print(line)
    for k in impls:
        s = summary[k]
        print(f"{k}: {s['n_steady']} of {s['n_all']} steady iterations (others' load median {s['others_cores_median']:.2f} cores), IQR {s['iqr_s'][0]:.3f}-{s['iqr_s'][1]:.3f} s, "
              f"per-run medians {', '.join(f'{x:.3f}' for x in s['per_run_median_s'])}")
    print(f"FLOPs per iteration: nominal {flops['nominal_gflop']:.1f} GFLOP (rollout {flops['nominal_rollout_gflop']:.1f}, "
          f"update {flops['nominal_update_gflop']:.1f}); dense {flops['dense_gflop']:.1f} GFLOP")
    for k, _ in ratios:
        print(f"speed-up {k} vs TRL (TRL s/iter / {k} s/iter): {summary['trl']['s_per_iter'] / summary[k]['s_per_iter']:.2f}x")
    if "exp" in summary and "policyshift" in summary:
        print(f"speed-up exp vs policyshift: {summary['policyshift']['s_per_iter'] / summary['exp']['s_per_iter']:.2f}x")


def worker_main(ns):
    assets = Path(ns.assets)
    if ns.worker == "policyshift":
        out = run_policyshift(assets, ns.iters, ns.warmup, ns.threads, [])
    elif ns.worker == "exp":
        out = run_policyshift(assets, ns.iters, ns.warmup, ns.threads, ns.experiment)
    else:
        out = run_trl(assets, ns.iters, ns.warmup, ns.threads)
    Path(ns.result).write_text(json.dumps(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=8, help="steady iterations per run (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2, help="iterations per run excluded from the figures")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each implementation, alternated")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--omp-wait-policy", choices=["passive", "active", "default"], default="passive",
                    help="OMP_WAIT_POLICY for the workers. passive (default): on a shared, oversubscribed machine, "
                         "spinning OpenMP threads that wait for a descheduled sibling make 2 threads 3-7x slower than 1")
    ap.add_argument("--only", action="append", choices=["policyshift", "trl", "exp"],
                    help="run only these (repeatable); default: policyshift and trl, plus exp when --experiment is given")
    ap.add_argument("--experiment", action="append", default=[], choices=sorted(EXPERIMENTS) + ["all"],
                    help="policyshift variant, a monkeypatch or a config change (repeatable; 'all' = the equal-work "
                         "ones); runs as an extra implementation 'exp' next to plain policyshift")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each run, wait up to SECONDS for the machine to be free of other load")
    ap.add_argument("--json", help="write the raw runs and the summary here")
    ap.add_argument("--assets", help="directory for the tokenizer/models/prompts (reused if already built)")
    ap.add_argument("--worker", choices=["policyshift", "trl", "exp"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    ns.experiment = [e for x in ns.experiment for e in (EQUAL_WORK if x == "all" else [x])]
    if ns.worker:
        return worker_main(ns)

    assets = build_assets(Path(ns.assets) if ns.assets else Path(tempfile.mkdtemp(prefix="ppo-bench-assets-")))
    n_pol, n_cls = param_counts(assets)
    flops = flop_count(n_pol, n_cls)
    impls = ns.only or (["policyshift", "trl"] + (["exp"] if ns.experiment else []))
    if "exp" in impls and not ns.experiment:
        ap.error("--only exp needs --experiment")
    env = {**os.environ, "OMP_NUM_THREADS": str(ns.threads), "MKL_NUM_THREADS": str(ns.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "ACCELERATE_USE_CPU": "true", "PYTHONWARNINGS": "ignore"}
    if ns.omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = ns.omp_wait_policy.upper()
    print(f"threads {ns.threads}, OMP_WAIT_POLICY {env.get('OMP_WAIT_POLICY', 'unset')}, {ns.rounds} rounds x "
          f"({ns.warmup} warm-up + {ns.iters}) iterations; experiments: {', '.join(ns.experiment) or 'none'}", flush=True)
    runs: dict[str, list] = {k: [] for k in impls}
    for r in range(ns.rounds):
        order = impls if r % 2 == 0 else impls[::-1]
        for impl in order:
            if ns.wait_quiet:
                wait_until_quiet(ns.wait_quiet)
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                result = f.name
            cmd = [sys.executable, __file__, "--worker", impl, "--assets", str(assets), "--iters", str(ns.iters),
                   "--warmup", str(ns.warmup), "--threads", str(ns.threads), "--result", result]
            for e in ns.experiment:
                cmd += ["--experiment", e]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
                raise SystemExit(f"{impl} worker failed (exit {proc.returncode})")
            run = json.loads(Path(result).read_text())
            os.unlink(result)
            runs[impl].append(run)
            steady = [it["step_s"] for it in steady_iterations(run)]
            print(f"round {r + 1} {impl:<12} median {statistics.median(steady):.3f} s/iter  "
                  f"others' load {steady_median(run, 'others_cores'):.2f} cores "
                  f"(min {min(steady):.3f}, max {max(steady):.3f}; matmul peak {run['matmul_peak_gflops']:.0f} GFLOP/s; "
                  f"rss {run['peak_rss_mib']:.0f} MiB; wall {time.perf_counter() - t0:.0f} s)", flush=True)
    summary = {k: summarize(v, flops) for k, v in runs.items()}
    print("\nall steady iterations:")
    print_table(summary, flops)
    paired = paired_ratios(runs)
    for (a, b), (ratios, n_rounds) in paired.items():
        if ratios:
            print(f"paired per-round speed-up {a} vs {b} ({b} s/iter / {a} s/iter, rounds where the others' load differed "
                  f"< 0.1 cores: {len(ratios)} of {n_rounds}): median {statistics.median(ratios):.2f}x, "
                  f"range {min(ratios):.2f}-{max(ratios):.2f}")
    quiet = {k: summarize(v, flops, quiet_only=True) for k, v in runs.items()}
    if all(quiet.values()):
        print(f"\nquiet steady iterations only (other processes < {QUIET} cores busy):")
        print_table(quiet, flops)
    else:
        print(f"\n(no quiet iterations for {', '.join(k for k, v in quiet.items() if not v)}: the machine was shared throughout)")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"setting": {
            "batch": BATCH, "prompt_len": PROMPT_LEN, "response_len": RESPONSE_LEN, "epochs": EPOCHS, "minibatches": MINIBATCHES,
            "n_layer": N_LAYER, "n_embd": N_EMBD, "vocab": VOCAB, "threads": ns.threads, "params_policy": n_pol, "params_cls": n_cls,
            "omp_wait_policy": env.get("OMP_WAIT_POLICY"), "experiments": ns.experiment}, "flops": flops, "summary": summary, "summary_quiet": quiet,
            "paired_speedups": {f"{a}_vs_{b}": r for (a, b), (r, _) in paired.items()},
            "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
