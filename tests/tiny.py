"""Tiny real models for tests: a word-level tokenizer trained with `tokenizers` and small GPT-2s
built from GPT2Config, saved with save_pretrained so every test goes through from_pretrained."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = "good bad fine great the a cat dog runs sits on mat and is very not happy sad".split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def make_tokenizer(out_dir: Path, words=WORDS, extra=()):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<eos>", "<unk>"])
    tok.train_from_iterator([" ".join(list(words) + list(extra))], trainer)
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out_dir)
    return fast


def make_policy(out_dir: Path, tokenizer, n_layer: int = 2, n_embd: int = 32, seed: int = 0, head: str = "causal"):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_layer=n_layer, n_head=2, n_embd=n_embd,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = (GPT2LMHeadModel if head == "causal" else GPT2ForSequenceClassification)(config if head == "causal" else _num_labels(config))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def _num_labels(config):
    config.num_labels = 1
    return config


def write_prompts(path: Path, n: int = 64, seed: int = 1) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))}) + "\n")
    return path


def good_fraction(prompts, responses):
    """Reward: the fraction of response words that are 'good' (a Python reward function)."""
    out = []
    for r in responses:
        words = r.split()
        out.append(sum(w == "good" for w in words) / max(len(words), 1))
    return out
