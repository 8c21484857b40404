"""Step time and peak GPU memory of real-sized models on one GPU (issue: memory that does not grow with
batch × length × vocabulary; "On a GPU"). Nothing can be downloaded on the device machine, so the models are
built from their configs with random weights and a synthetic word-level tokenizer of the model's own
vocabulary size (151,936 for Qwen2); the reward is a Python function. Each setting runs `--steps` steps in a
fresh trainer; the first is warm-up (CUDA kernels, allocator), the rest are timed.

    PYTHONPATH=src python benchmarks/gpu_step.py --out results.json [--only qwen2-0.5b-grpo]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

WORDS_IN_PROMPT = 16
TOKENIZERS: dict = {}  # model kind → its tokenizer, built once


def synthetic_tokenizer(out: Path, vocab_size: int):
    """A word-level tokenizer whose vocabulary is exactly the model's: w0 … w{V−4} plus <pad>, <eos>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(vocab_size - 3)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out)
    return fast


def build(kind: str, out: Path):
    """The model saved at `out` (random weights) and its tokenizer (passed to the trainer as an object: transformers 5
    would reload a Qwen2 directory's tokenizer as Qwen2Tokenizer, which reads these words as <unk>)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if kind == "smoke":  # the script's own check on a CPU
        config = GPT2Config(vocab_size=4096, n_positions=128, n_layer=1, n_head=2, n_embd=32, bos_token_id=1, eos_token_id=1, pad_token_id=0)
        model = GPT2LMHeadModel(config)
    elif kind == "gpt2":  # GPT-2 small (the examples/gpt2_sentiment.yaml policy's shape)
        config = GPT2Config(vocab_size=50257, n_positions=1024, n_layer=12, n_head=12, n_embd=768, bos_token_id=1, eos_token_id=1, pad_token_id=0)
        model = GPT2LMHeadModel(config)
    else:  # Qwen2-0.5B's shape
        config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                             num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=1, eos_token_id=1,
                             pad_token_id=0)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    return synthetic_tokenizer(out, config.vocab_size)


def even_words(prompts, responses):
    """Reward: the share of response words with an even number (something a random policy can learn)."""
    out = []
    for r in responses:
        words = [w for w in r.split() if w.startswith("w") and w[1:].isdigit()]
        out.append(sum(int(w[1:]) % 2 == 0 for w in words) / max(len(words), 1))
    return out


SETTINGS = {  # name → (model kind, config sections)
    "smoke": ("smoke", {"rollout": {"batch_size": 8, "max_new_tokens": 8, "num_generations": 4}, "algorithm": {"advantage": "grpo"}}),
    "gpt2-ppo": ("gpt2", {"rollout": {"batch_size": 64, "max_new_tokens": 48}, "ppo": {"num_minibatches": 4}}),
    "qwen2-0.5b-ppo": ("qwen2", {"rollout": {"batch_size": 64, "max_new_tokens": 256}, "ppo": {"num_minibatches": 4, "grad_accum_steps": 2},
                                 "train": {"mixed_precision": "bf16"}}),
    "qwen2-0.5b-grpo": ("qwen2", {"rollout": {"batch_size": 64, "max_new_tokens": 256, "num_generations": 8},
                                  "algorithm": {"advantage": "grpo"}, "kl": {"placement": "loss", "estimator": "k3", "beta": 0.04},
                                  "ppo": {"epochs": 1, "num_minibatches": 2, "grad_accum_steps": 2}, "train": {"mixed_precision": "bf16"}}),
}


def run(name: str, root: Path, steps: int, extra: dict) -> dict:
    from policyshift import PPOConfig, PPOTrainer
    from policyshift.config import _deep_merge

    kind, sections = SETTINGS[name]
    model_dir = root / kind
    if kind not in TOKENIZERS:
        TOKENIZERS[kind] = build(kind, model_dir)
    rng = random.Random(0)
    prompts = [" ".join(f"w{rng.randrange(1000)}" for _ in range(WORDS_IN_PROMPT)) for _ in range(512)]
    base = {"model": {"policy": str(model_dir)}, "data": {"max_prompt_length": 32}, "analysis": {"every": 0, "num_prompts": 8},
            "train": {"steps": steps, "output_dir": str(root / "runs" / name), "save_every": 0, "overwrite": True},
            "tracking": {"tensorboard": False}}
    cfg = PPOConfig.from_dict(_deep_merge(_deep_merge(base, sections), extra))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = PPOTrainer(cfg, prompts=prompts, reward=even_words, tokenizer=TOKENIZERS[kind])
    loaded = torch.cuda.max_memory_allocated() if cuda else 0
    t0 = time.perf_counter()
    history = trainer.train()
    wall = time.perf_counter() - t0
    timed = history[1:] or history
    mean = lambda key: sum(r[key] for r in timed) / len(timed)  # noqa: E731
    return {
        "setting": name, "device": torch.cuda.get_device_name() if cuda else "cpu", "steps": len(history), "wall_s_incl_eval_and_report": wall,
        "step_s": mean("time/step"), "generate_s": mean("time/generate"), "score_s": mean("time/score"), "update_s": mean("time/update"),
        "episodes_per_s": cfg.rollout.batch_size / mean("time/step"), "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "gpu_gib_after_loading": loaded / 2**30, "response_length_mean": mean("response/length_mean"),
        "kl_token_mean_last": history[-1].get("kl/token_mean"), "config": sections | extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", action="append", choices=list(SETTINGS))
    parser.add_argument("--extra", default="{}", help="JSON merged into every setting's config (e.g. chunk sizes)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or [n for n in SETTINGS if n != "smoke"]:
            try:
                results.append(run(name, Path(tmp), args.steps, json.loads(args.extra)))
            except Exception as exc:  # a setting that does not fit is a result too
                results.append({"setting": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None})
            print(json.dumps(results[-1]), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
