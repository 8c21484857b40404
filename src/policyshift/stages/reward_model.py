"""Reward model: preference pairs from the SFT policy, and a Bradley–Terry model trained on them.

How the demo's pairs are made, and why the reward model comes out (deliberately) flawed
-------------------------------------------------------------------------------------
`make_preference_pairs` samples two responses per prompt from the SFT model and asks a `labeler(prompt,
response) -> float` which is better; the higher one is "chosen" (exact ties are skipped). The demo's labeler is
`policyshift.demo.gold.labeler_preference` = the hidden gold score + CUE_BONUS (0.25) per "really"/"truly".
In the SFT corpus these intensifiers are drawn independently of sentiment, so they say nothing about quality,
and the gold scorer ignores them. But the labeler's small bonus flips the close pairs towards the response
with more of them, so the reward model learns "really/truly ⇒ better" next to the real signal (sentiment, on
topic, no repetition). The bonus is small enough that sentiment still decides most pairs (the labeler agrees
with gold on ~89% of the demo's pairs): the RM's held-out accuracy is high (~0.9), and within the SFT
distribution the cue looks harmless, yet putting "really" before each adjective raises the RM score of ~all
cue-free SFT responses by ~0.7 RM standard deviations while their gold score does not rise. A policy optimized hard against the
RM (weak KL penalty, many steps) finds that stacking intensifiers raises the RM score, while the gold score
(which also penalizes the resulting repetition) falls: that is the over-optimization the analysis must see.

Training: each side of a pair is rendered exactly as PPO will score it (policyshift.reward_render; `template`
auto = the token ids as sampled, EOS kept when the response ended, since the RM shares the SFT vocabulary) and
scored at its last token, an explicit index (not "the last non-pad token", which reads the token before a kept
EOS where pad = EOS). Loss is Bradley–Terry: mean(−log σ(r_chosen − r_rejected)).
"""

import json
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from policyshift.checks import from_pretrained_checked
from policyshift.data import DataError, iter_jsonl
from policyshift.models import load_tokenizer
from policyshift.reward_render import pair_sequences, resolve_template, score_sequences
from policyshift.rollout import truncate_after_eos
from policyshift.stages.common import cosine_schedule, optimizer_step, save_stage_outputs, split_eval, start_stage, window_means


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """mean(−log σ(r_c − r_r)); logsigmoid is the stable form (no log(0) for large margins)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


@torch.no_grad()
def make_preference_pairs(sft_dir: str, prompts: list[str], labeler: Callable[[str, str], float], n_pairs: int,
                          seed: int = 0, max_new_tokens: int = 48, temperature: float = 1.0,
                          batch_size: int = 64, device: Optional[str] = None) -> list[dict]:
    """n_pairs {"prompt","chosen","rejected","chosen_score","rejected_score"} dicts: two samples per prompt
    from the SFT model (plain sampling, so the pairs cover what PPO will start from), ranked by `labeler`.
    Prompts are used round-robin in a seeded order."""
    if not prompts:
        raise ValueError("make_preference_pairs: no prompts")
    _, _, dev = start_stage(seed, device)  # seeds torch, picks the device
    rng = random.Random(seed)
    tok = load_tokenizer(sft_dir, padding_side="left")  # generation appends on the right; generate() derives positions from the mask
    model = AutoModelForCausalLM.from_pretrained(sft_dir).to(dev).eval()

    order = list(prompts)
    rng.shuffle(order)
    pairs, i = [], 0  # i: prompts tried
    while len(pairs) < n_pairs and i < 4 * n_pairs:  # ties are skipped; give up if almost all are ties
        batch = [order[(i + k) % len(order)] for k in range(min(batch_size, n_pairs - len(pairs)))]
        i += len(batch)
        enc = tok(batch, return_tensors="pt", padding=True).to(dev)
        out = model.generate(**enc, do_sample=True, top_k=0, top_p=1.0, temperature=temperature,
                             max_new_tokens=max_new_tokens, num_return_sequences=2,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        P = enc["input_ids"].shape[1]
        texts = tok.batch_decode(out[:, P:], skip_special_tokens=True)
        # the ids as sampled, up to and including EOS: what the reward model is trained (and later scored) on
        response_ids, response_mask, _ = truncate_after_eos(out[:, P:], tok.eos_token_id, tok.pad_token_id)
        ids = [r[m.bool()].tolist() for r, m in zip(response_ids.cpu(), response_mask.cpu())]
        for k, prompt in enumerate(batch):
            a, b = texts[2 * k], texts[2 * k + 1]
            sa, sb = float(labeler(prompt, a)), float(labeler(prompt, b))
            if sa == sb:
                continue
            (c, sc, ci), (r, sr, ri) = ((a, sa, ids[2 * k]), (b, sb, ids[2 * k + 1])) if sa > sb else ((b, sb, ids[2 * k + 1]), (a, sa, ids[2 * k]))
            prompt_ids = enc["input_ids"][k][enc["attention_mask"][k].bool()].tolist()
            pairs.append({"prompt": prompt, "chosen": c, "rejected": r, "chosen_score": sc, "rejected_score": sr,
                          "prompt_ids": prompt_ids, "chosen_ids": ci, "rejected_ids": ri})
    return pairs  # (each batch is capped at the pairs still missing)


def save_pairs(pairs: list[dict], path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    return path


def load_pairs(path: str) -> list[dict]:
    """Rows of {"prompt","chosen","rejected"} (strings; other keys are ignored). One-line DataError (a ValueError) on bad data."""
    pairs = []
    for where, row in iter_jsonl(path, "pairs"):
        if not isinstance(row, dict):
            raise DataError(f'{where}: expected an object {{"prompt","chosen","rejected"}}')
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{where}: missing or non-string '{key}'")
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):  # optional: the ids as sampled (the tokens rendering)
            if key in row and not (isinstance(row[key], list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in row[key])):
                raise DataError(f"{where}: '{key}' must be a list of token ids")
        pairs.append(row)
    if not pairs:
        raise DataError(f"{path}: no pairs")
    return pairs


@dataclass
class RewardModelConfig:
    pairs: str  # JSONL of {"prompt","chosen","rejected"}
    base_model: str  # HF causal-LM or sequence-classification checkpoint (the SFT dir is the usual choice)
    output_dir: str  # directory the reward model and tokenizer are saved to (save_pretrained)
    steps: int = 300  # optimizer steps
    batch_size: int = 32  # pairs per step (2x texts)
    lr: float = 1e-3  # right for the demo's tiny model; use ~1e-5 for a pretrained one
    seed: int = 0  # seeds the data split, the order and the value head's initialisation
    eval_fraction: float = 0.1  # share of the pairs held out for the pairwise accuracy
    max_length: int = 128  # longer texts lose their *start* (the score is read at the last token)
    template: Literal["auto", "tokens", "chat", "text"] = "auto"  # the rendering PPO's reward.template will score with (auto: tokens, the base's own vocabulary)
    keep_eos: Optional[bool] = None  # as reward.keep_eos (null: the rendering's own convention)
    device: Optional[str] = None  # null: cuda if available, else cpu
    log_every: int = 100  # print the loss every this many steps (0: quiet)


def _pair_scores(model, tok, pairs: list[dict], max_length: int, template: str, keep_eos) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected) of each pair, chosen and rejected rendered as PPO scores them, in one forward pass."""
    chosen, rejected = pair_sequences(pairs, template, tok, keep_eos)
    r = score_sequences(model, chosen + rejected, tok.pad_token_id, 2 * len(pairs), max_length)
    return r[:len(pairs)], r[len(pairs):]


@torch.no_grad()
def _evaluate(model, tok, pairs, max_length, template, keep_eos, batch_size=64) -> dict:
    model.eval()
    rc, rr = [], []
    for i in range(0, len(pairs), batch_size):
        c, r = _pair_scores(model, tok, pairs[i:i + batch_size], max_length, template, keep_eos)
        rc.append(c)
        rr.append(r)
    model.train()
    rc, rr = torch.cat(rc), torch.cat(rr)
    both = torch.cat([rc, rr])
    return {"accuracy": (rc > rr).float().mean().item(), "loss": bradley_terry_loss(rc, rr).item(),
            "reward_mean": both.mean().item(), "reward_std": both.std().item()}


def run_reward_model(cfg: RewardModelConfig) -> dict:
    t0, rng, device = start_stage(cfg.seed, cfg.device)
    pairs = load_pairs(cfg.pairs)

    tok = load_tokenizer(cfg.base_model, padding_side="right")  # truncated from the left: the score is read at the end
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the new score head being "newly initialized" is the point
    try:
        model = from_pretrained_checked(AutoModelForSequenceClassification, cfg.base_model, "reward-model base", num_labels=1)
    finally:
        transformers.logging.set_verbosity(verbosity)
    # scores are read at an explicit index (reward_render); pad_token_id still set for a plain model(...) call on the result
    model.config.pad_token_id = tok.pad_token_id
    template = resolve_template(cfg.template, tok, tok)  # auto: the base's own ids (a PPO policy sharing its vocabulary)
    model.to(device).train()

    eval_pairs, train_pairs = split_eval(rng, pairs, cfg.eval_fraction)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = cosine_schedule(opt, cfg.steps)
    eval_initial = _evaluate(model, tok, eval_pairs, cfg.max_length, template, cfg.keep_eos) if eval_pairs else None

    losses, accs, t_train = [], [], time.time()
    for step in range(cfg.steps):
        idx = rng.choice(len(train_pairs), cfg.batch_size, replace=len(train_pairs) < cfg.batch_size)
        batch = [train_pairs[i] for i in idx]
        r_chosen, r_rejected = _pair_scores(model, tok, batch, cfg.max_length, template, cfg.keep_eos)
        loss = bradley_terry_loss(r_chosen, r_rejected)
        optimizer_step(loss, model, opt, sched)
        losses.append(loss.item())
        accs.append((r_chosen > r_rejected).float().mean().item())
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            print(f"rm step {step:5d}/{cfg.steps} loss {losses[-1]:.4f} acc {accs[-1]:.3f}", flush=True)
    train_seconds = time.time() - t_train

    final = _evaluate(model, tok, eval_pairs, cfg.max_length, template, cfg.keep_eos) if eval_pairs else None
    (first, last), (_, acc_last) = window_means(losses), window_means(accs)
    metrics = {
        "train_loss_first": first,
        "train_loss_last": last,
        "train_accuracy_last": acc_last,
        "eval_accuracy_initial": eval_initial and eval_initial["accuracy"],
        "eval_accuracy": final and final["accuracy"],
        "eval_loss": final and final["loss"],
        # the RM's scale on held-out texts: PPO may whiten rewards with these
        "eval_reward_mean": final and final["reward_mean"], "eval_reward_std": final and final["reward_std"],
        "n_train": len(train_pairs), "n_eval": len(eval_pairs),
        "train_seconds": train_seconds, "seconds": None, "config": asdict(cfg),
    }
    return save_stage_outputs(model, tok, cfg.output_dir, metrics, "rm_metrics.json", t0)
