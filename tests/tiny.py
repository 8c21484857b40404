"""Tiny real models for tests: a word-level tokenizer trained with `tokenizers` and small GPT-2s
built from GPT2Config, saved with save_pretrained so every test goes through from_pretrained.
Also the helpers the run tests share: the JSONL reader, the `policyshift train` subprocess and
the resumed-equals-uninterrupted metrics check."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).parent
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


# ---- shared by the run tests ------------------------------------------------------------------------
def rows(path) -> list[dict]:
    """Every line of a JSONL file (a torn line fails the test)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def cli_env(fault: str | None = None) -> dict:
    """The environment of a `policyshift` subprocess: this directory importable (tiny:good_fraction),
    offline, and POLICYSHIFT_FAULT set to `fault` only."""
    # the caller's PYTHONPATH stays after the tests directory: a git worktree's src/ put first there is
    # the policyshift the subprocess imports, not the editable install's
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    env.pop("POLICYSHIFT_FAULT", None)
    if fault:
        env["POLICYSHIFT_FAULT"] = fault
    return env


def cli(*args, fault: str | None = None) -> subprocess.CompletedProcess:
    """`policyshift train ARGS` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "policyshift", "train", *args], env=cli_env(fault),
                          capture_output=True, text=True, timeout=300)


def assert_same_metrics(a: list[dict], b: list[dict]):
    """Run b (resumed) logged the same steps with the same metrics as run a (timings aside); NaN equals NaN."""
    import pytest

    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for key in x:
            if key.startswith(("time/", "perf/")):
                continue
            if x[key] is None or y[key] is None:
                assert x[key] is None and y[key] is None, (x["step"], key)
            else:
                assert y[key] == pytest.approx(x[key], abs=1e-6, nan_ok=True), (x["step"], key)


def write_prompts_with_answers(path: Path, n: int = 64, seed: int = 1) -> Path:
    """Prompt rows with an extra `answer` field (a verifiable reward's ground truth): the prompt's first word."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 4))]
            f.write(json.dumps({"prompt": " ".join(words), "answer": words[0], "difficulty": len(words)}) + "\n")
    return path


def says_the_answer(prompts, responses, answer):
    """A verifiable reward: the fraction of response words equal to the row's `answer` field. It checks that
    each answer arrived beside its own prompt (the answer is the prompt's first word)."""
    out = []
    for p, r, a in zip(prompts, responses, answer):
        assert p.split()[0] == a, (p, a)
        words = r.split()
        out.append(sum(w == a for w in words) / max(len(words), 1))
    return out
