"""Memory benchmark: peak RSS and time of ONE PPO step against vocabulary, batch and response length.

Setting (issue #17): CPU, fp32, 1 torch thread; a Qwen2-style policy of 2 layers × 64 wide (4 heads, 2 KV
heads, MLP 256, tied embeddings) with random weights and a V-word word-level tokenizer built here (nothing
from the hub); a separate critic of the same shape (the default: a sequence classifier from the policy's
weights); a Python reward (distinct-token fraction: no reward model in the measurement); 8-token prompts,
B prompts, R response tokens (no early stop at EOS), 1 PPO epoch, 1 minibatch split into
--grad-accum micro-batches.

One configuration per invocation, in a fresh process. It builds the trainer, resets the process's peak
RSS (`echo 5 > /proc/self/clear_refs` resets VmHWM), runs one `ppo_step()`, and reports the peak RSS of
that step (models, optimizer and everything the step allocated), the RSS before it, and the step time.
An address-space-safe guard: the data segment is capped at --limit-gib (RLIMIT_DATA), so a
configuration that needs more fails with "out of memory at the cap" instead of swamping the machine.

    python benchmarks/memory_vocab.py --vocab 151936 --batch 64 --response 256 --grad-accum 8 --chunk 256 --forward-batch 16
    PYTHONPATH=/path/to/old/src python benchmarks/memory_vocab.py --vocab 32768 --batch 32 --response 128 --label before

Old versions without rollout.logit_chunk_size/forward_batch_size are run with those options dropped.
Rows are appended as JSON lines to --out (default benchmarks/memory_vocab.jsonl is NOT written unless
given) and printed as a markdown table row. See benchmarks/README.md "Memory vs vocabulary".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

PROMPT_LEN, N_PROMPTS = 8, 256


def reward(prompts, responses):
    """Distinct-word fraction of each response: cheap, so the step's memory is the models'."""
    return [len(set(r.split())) / max(1, len(r.split())) for r in responses]


def build_assets(root: Path, vocab: int) -> Path:
    """A word-level tokenizer with exactly `vocab` ids, a random 2 × 64 Qwen2 policy, prompts."""
    import random

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = root / f"v{vocab}"
    if (out / "policy" / "config.json").is_file():
        return out
    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0)
    Qwen2ForCausalLM(config).save_pretrained(out / "policy")
    fast.save_pretrained(out / "tokenizer")  # its own directory: next to a qwen2 config AutoTokenizer would pick Qwen2's class
    rng = random.Random(0)
    with open(out / "prompts.jsonl", "w") as f:
        for _ in range(N_PROMPTS):
            f.write(json.dumps({"prompt": " ".join(f"w{rng.randrange(vocab - 3)}" for _ in range(PROMPT_LEN))}) + "\n")
    return out


def peak_rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run(ns) -> dict:
    import torch

    import policyshift
    from policyshift.config import PPOConfig, RolloutConfig
    from policyshift.trainer import PPOTrainer

    torch.set_num_threads(1)
    assets = build_assets(Path(ns.assets), ns.vocab)
    new = "logit_chunk_size" in RolloutConfig.__dataclass_fields__
    rollout = {"batch_size": ns.batch, "max_new_tokens": ns.response, "stop_at_eos": False}
    if new:
        rollout.update(logit_chunk_size=ns.chunk, forward_batch_size=ns.forward_batch, exact_kl=not ns.no_exact_kl)
    cfg = PPOConfig.from_dict({
        "model": {"policy": str(assets / "policy"), "tokenizer": str(assets / "tokenizer"), "dtype": "float32"},
        "data": {"prompts": str(assets / "prompts.jsonl"), "max_prompt_length": PROMPT_LEN},
        "rollout": rollout,
        "reward": {"function": f"{Path(__file__).resolve()}:reward"},
        "ppo": {"epochs": 1, "num_minibatches": 1, "grad_accum_steps": ns.grad_accum, "lr": 1e-5},
        "analysis": {"num_prompts": 0, "every": 0},
        "train": {"steps": 10, "save_every": 0, "output_dir": tempfile.mkdtemp(prefix="ps-mem-"), "device": "cpu", "num_threads": 1,
                  "overwrite": True},
        "tracking": {"tensorboard": False},
    })
    trainer = PPOTrainer(cfg)
    before = rss_gib("VmRSS")
    reset = peak_rss_reset()
    t0 = time.perf_counter()
    metrics = trainer.ppo_step()
    dt = time.perf_counter() - t0
    return {"label": ns.label, "src": str(Path(policyshift.__file__).parent), "vocab": ns.vocab, "batch": ns.batch, "response": ns.response,
            "grad_accum": ns.grad_accum, "chunk": ns.chunk if new else None, "forward_batch": ns.forward_batch if new else None,
            "exact_kl": (not ns.no_exact_kl) if new else True, "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "rss_before_gib": before,
            "peak_gib": rss_gib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "step_s": dt, "generate_s": metrics["time/generate"], "update_s": metrics["time/update"],
            "response_len": metrics["response/length_mean"], "status": "ok"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--response", type=int, required=True)
    ap.add_argument("--grad-accum", type=int, default=1, help="ppo.grad_accum_steps: update micro-batch = batch / this")
    ap.add_argument("--chunk", type=int, default=None, help="rollout.logit_chunk_size (new versions); default: the library's")
    ap.add_argument("--forward-batch", type=int, default=None, help="rollout.forward_batch_size (new versions); default: whole batch")
    ap.add_argument("--no-exact-kl", action="store_true", help="rollout.exact_kl false (new versions)")
    ap.add_argument("--label", default="after")
    ap.add_argument("--limit-gib", type=float, default=20.0, help="RLIMIT_DATA cap: a run needing more fails instead of swapping")
    ap.add_argument("--assets", default=os.path.join(tempfile.gettempdir(), "ps-mem-assets"))
    ap.add_argument("--out", help="append the result as one JSON line here")
    ap.add_argument("--fixed-mmap-threshold", action="store_true",
                    help="rerun under MALLOC_MMAP_THRESHOLD_=1 MiB: glibc then returns every freed large tensor to the OS at once "
                         "(its default threshold adapts upward and keeps freed ~10 MB blocks resident, which inflates and blurs the peak)")
    ns = ap.parse_args(argv)
    if ns.fixed_mmap_threshold and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)})
    cap = int(ns.limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        row = run(ns)
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower() and "memory" not in str(exc).lower():
            raise
        row = {"label": ns.label, "vocab": ns.vocab, "batch": ns.batch, "response": ns.response, "grad_accum": ns.grad_accum,
               "chunk": ns.chunk, "forward_batch": ns.forward_batch, "peak_gib": None, "status": f"out of memory at the {ns.limit_gib:g} GiB cap"}
    if ns.out:
        with open(ns.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    peak = f"{row['peak_gib']:.2f}" if row.get("peak_gib") is not None else row["status"]
    step = f"{row['step_s']:.1f}" if "step_s" in row else "—"
    malloc = "1 MiB" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "default"
    print(f"| {row['label']} | {malloc} | {row['vocab']:,} | {row['batch']} × {row['response']} | {row['grad_accum']} | {row.get('forward_batch') or '—'} | "
          f"{row.get('chunk') or '—'} | {peak} | {step} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
