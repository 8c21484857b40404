"""Supervised fine-tuning: the policy PPO starts from (and the KL reference it is held to).

Two ways in:
  * from scratch (model=None): train a byte-level BPE tokenizer on the data and build a small GPT-2 from
    GPT2Config. This is the demo's path, since nothing can be downloaded from the hub here.
  * from any HF causal LM (model="path/or/hub-id"): fine-tune it with its own tokenizer.

Data is JSONL with either {"text": ...} rows (loss on every token) or {"prompt": ..., "response": ...} rows
(loss on the response only: the prompt is context, as it will be during PPO). Every example ends with EOS, so
the model learns to stop; padding never counts in the loss.
"""

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from policyshift.checks import from_pretrained_checked
from policyshift.models import ModelError, load_tokenizer
from policyshift.data import DataError, iter_jsonl, join_prompt_response  # noqa: F401 (re-exported)
from policyshift.stages.common import cosine_schedule, optimizer_step, save_stage_outputs, split_eval, start_stage, window_means

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme: no unknown tokens, decodes back to the exact string).
    EOS and a distinct PAD are special tokens; a distinct pad keeps "the model stopped" (EOS, learned)
    apart from "nothing here" (PAD, masked) in PPO's generations."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so any text can be encoded
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


@dataclass
class SFTConfig:
    data: str  # JSONL of {"text"} or {"prompt","response"} rows
    output_dir: str  # directory the model and tokenizer are saved to (save_pretrained)
    model: Optional[str] = None  # None: a new small GPT-2 (below); else an HF causal-LM path or hub id
    tokenizer: Optional[str] = None  # None: trained on the data (new model) or the model's own
    vocab_size: int = 1024  # only for a trained tokenizer
    n_layer: int = 2  # the new GPT-2's size (ignored when model is set)
    n_embd: int = 64  # the new GPT-2's hidden size
    n_head: int = 4  # the new GPT-2's attention heads (must divide n_embd)
    n_positions: int = 128  # the new GPT-2's context length
    steps: int = 400  # optimizer steps
    batch_size: int = 32  # sequences per step
    lr: float = 2e-3  # right for a tiny model from scratch; use ~5e-5 to fine-tune a pretrained one
    seq_len: int = 64  # longer examples are truncated (counted in the metrics)
    seed: int = 0  # seeds the data split, the order and the initialisation
    eval_fraction: float = 0.05  # share of the examples held out for the eval loss
    device: Optional[str] = None  # None: cuda if available, else cpu
    log_every: int = 100  # 0: quiet


def load_sft_rows(path: str) -> list[tuple[str, str]]:
    """(prompt, response) pairs; a {"text"} row is ("", text). One-line DataError (a ValueError) on bad data."""
    rows = []
    for where, row in iter_jsonl(path, "SFT data"):
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            rows.append(("", row["text"]))
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
            rows.append((row["prompt"], join_prompt_response(row["prompt"], row["response"])))
        else:
            raise DataError(f'{where}: expected {{"text": str}} or {{"prompt": str, "response": str}}, got {json.dumps(row)[:80]}')
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _encode(tok, prompt: str, response: str, seq_len: int):
    """Token ids and how many leading ones are prompt (no loss). The prompt is tokenized on its own, as PPO
    will tokenize it, and the response appended: the ids a policy sees are the ids it was trained on."""
    def ids_of(s, special):
        ids = tok(s, add_special_tokens=special)["input_ids"] if s else []
        return ids[:-1] if ids and ids[-1] == tok.eos_token_id else ids  # some tokenizers append EOS themselves
    head = ids_of(prompt, True)
    body = ids_of(response, not prompt)  # special tokens (a BOS, say) once, at the very start
    ids = head + body + [tok.eos_token_id]
    return ids[:seq_len], len(head), len(ids) > seq_len


def _collate(examples, pad_id: int, device):
    """Right-padded batch. Labels are -100 on prompt and padding, built from lengths and not by comparing to
    pad_id: when pad == eos (many HF tokenizers), the EOS that ends each example must still be learned."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, (ids, n_prompt) in enumerate(examples):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
        labels[i, n_prompt:len(ids)] = input_ids[i, n_prompt:len(ids)]
    return {k: v.to(device) for k, v in
            {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}.items()}


@torch.no_grad()
def _eval_loss(model, examples, pad_id, device, batch_size=64) -> float:
    """Mean loss per predicted token over the held-out examples (token-weighted, not batch-weighted)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = _collate(examples[i:i + batch_size], pad_id, device)
        n = (batch["labels"][:, 1:] != -100).sum().item()  # HF shifts labels by one inside the model
        total += model(**batch).loss.item() * n
        count += n
    model.train()
    return total / max(count, 1)


def run_sft(cfg: SFTConfig) -> dict:
    t0, rng, device = start_stage(cfg.seed, cfg.device)
    rows = load_sft_rows(cfg.data)

    if cfg.tokenizer is None and cfg.model is None:
        tok = train_tokenizer((p + r for p, r in rows), cfg.vocab_size)
    else:
        tok = load_tokenizer(cfg.tokenizer or cfg.model, padding_side="right")
    if tok.eos_token_id is None:
        raise ModelError(f"tokenizer {cfg.tokenizer or cfg.model} has no eos_token: the policy must learn to emit one at the end of a text")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # safe here: labels are masked by length, not by token id

    if cfg.model is None:
        if cfg.seq_len > cfg.n_positions:
            raise ValueError(f"seq_len ({cfg.seq_len}) > n_positions ({cfg.n_positions})")
        config = GPT2Config(
            vocab_size=len(tok), n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            # no dropout: a tiny model trained briefly underfits anyway, and without it PPO's log-probs are the
            # same whether the policy is in train or eval mode
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        model = GPT2LMHeadModel(config)
    else:
        model = from_pretrained_checked(AutoModelForCausalLM, cfg.model, "causal language model")
    if getattr(model, "loss_type", "") is None:
        # GPT2LMHeadModel's class name maps to no entry of transformers' loss table (it warns and falls back):
        # name the loss this stage trains
        model.loss_type = "ForCausalLM"
    model.to(device).train()
    if cfg.model is None:
        tok.model_max_length = cfg.n_positions

    encoded = [_encode(tok, p, r, cfg.seq_len) for p, r in rows]
    n_truncated = sum(t for _, _, t in encoded)
    examples = [(ids, n) for ids, n, _ in encoded if len(ids) > n]  # drop rows with nothing to learn
    eval_set, train_set = split_eval(rng, examples, cfg.eval_fraction)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = cosine_schedule(opt, cfg.steps)
    eval_loss_initial = _eval_loss(model, eval_set, tok.pad_token_id, device) if eval_set else None

    losses, t_train = [], time.time()
    for step in range(cfg.steps):
        idx = rng.choice(len(train_set), cfg.batch_size, replace=len(train_set) < cfg.batch_size)
        loss = model(**_collate([train_set[i] for i in idx], tok.pad_token_id, device)).loss
        optimizer_step(loss, model, opt, sched)
        losses.append(loss.item())
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            print(f"sft step {step:5d}/{cfg.steps} loss {losses[-1]:.4f} lr {sched.get_last_lr()[0]:.2e}", flush=True)
    train_seconds = time.time() - t_train

    first, last = window_means(losses)
    metrics = {
        "train_loss_first": first,
        "train_loss_last": last,
        "eval_loss_initial": eval_loss_initial,
        "eval_loss": _eval_loss(model, eval_set, tok.pad_token_id, device) if eval_set else None,
        "n_train": len(train_set), "n_eval": len(eval_set), "n_truncated": n_truncated,
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds, "seconds": None, "config": asdict(cfg),
    }
    if metrics["eval_loss"] is not None:
        metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])

    model.generation_config.eos_token_id = tok.eos_token_id  # generate() stops at EOS and pads with PAD
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.pad_token_id = tok.pad_token_id
    return save_stage_outputs(model, tok, cfg.output_dir, metrics, "sft_metrics.json", t0)

