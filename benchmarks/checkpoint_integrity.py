"""What the integrity manifest adds to a checkpoint's write time (target: at most 10%).

Saves full checkpoints (policy + tokenizer, critic, AdamW state with its moments, scheduler, RNGs,
trainer state) of the demo's model sizes with policyshift.checkpoint.save_checkpoint, alternating
rounds with and without the manifest (write_manifest replaced by a no-op), and prints the medians of
  * write: how long save_checkpoint blocks the training loop (the manifest is hashed in a background
    thread after it returns);
  * complete: until the checkpoint is renamed into place (wait_for_checkpoints), i.e. with the hashing;
and the overhead of each. The files are fsync'ed by neither variant: both measure the write into the
page cache, where hashing reads the bytes back from memory.

    python benchmarks/checkpoint_integrity.py [--rounds 15] [--sizes quick,full,mid]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

# the demo's GPT-2s (demo/presets.py: 2 layers, 1024-token BPE vocabulary, 128 positions), and a larger one
SIZES = {"quick": dict(n_layer=2, n_embd=64, n_head=4), "full": dict(n_layer=2, n_embd=128, n_head=4),
         "mid": dict(n_layer=4, n_embd=512, n_head=8)}


def build(size: dict, tokenizer_dir: Path):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    words = [f"w{i} x{i % 37} y{i % 91}" for i in range(4000)]
    tok.train_from_iterator(words, trainers.BpeTrainer(vocab_size=1024, special_tokens=["<pad>", "<eos>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    config = GPT2Config(vocab_size=1024, n_positions=128, **size)
    policy = GPT2LMHeadModel(config)
    critic = GPT2ForSequenceClassification(GPT2Config(vocab_size=1024, n_positions=128, num_labels=1, **size))
    params = [*policy.parameters(), *critic.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    sum(p.sum() for p in params).backward()
    optimizer.step()  # the moments exist: optimizer.pt is as large as in a real run
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    n = sum(p.numel() for p in params)
    return SimpleNamespace(policy=policy, critic=critic), tokenizer, optimizer, scheduler, n


def main() -> None:
    import policyshift.checkpoint as ckpt

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sizes", default="quick,full,mid")
    args = parser.parse_args()
    torch.set_num_threads(1)
    real = ckpt.write_manifest
    for name in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            models, tokenizer, optimizer, scheduler, n = build(SIZES[name], Path(tmp))
            times = {(v, what): [] for v in ("without", "with") for what in ("write", "complete")}
            for r in range(args.rounds + 1):
                for variant in ("without", "with") if r % 2 else ("with", "without"):
                    ckpt.write_manifest = real if variant == "with" else (lambda root: None)
                    t = time.perf_counter()
                    out = ckpt.save_checkpoint(Path(tmp) / variant, r, models, tokenizer, optimizer, scheduler, {"step": r},
                                               [{}], keep_last_n=1)
                    written = time.perf_counter()
                    ckpt.wait_for_checkpoints()
                    if r:  # round 0 warms up imports and the page cache
                        times[variant, "write"].append(written - t)
                        times[variant, "complete"].append(time.perf_counter() - t)
            ckpt.write_manifest = real
            size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
            line = f"{name:6s} {n / 1e6:6.2f} M params  checkpoint {size_mb:6.1f} MB"
            for what in ("write", "complete"):
                a, b = (statistics.median(times[v, what]) for v in ("without", "with"))
                line += f"  {what} {a * 1e3:6.1f} → {b * 1e3:6.1f} ms ({100 * (b - a) / a:+5.1f}%)"
            print(line)


if __name__ == "__main__":
    main()
