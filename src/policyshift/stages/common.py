"""What the training stages (SFT, reward model) share: seeding, the eval split, the clipped AdamW
step with its warmup + cosine schedule, loss windows, and saving the outputs."""

import json
import os
import time

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from policyshift.lora import save_pretrained


def start_stage(seed: int, device: str | None):
    """(start time, numpy Generator, device) with torch seeded: the opening of every training stage."""
    from policyshift.checks import check_device

    check_device(device, "device")
    torch.manual_seed(seed)
    return time.time(), np.random.default_rng(seed), torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def optimizer_step(loss, model, opt, sched, max_grad_norm: float = 1.0) -> None:
    """One clipped AdamW step with the schedule advanced: the inner step of every training stage."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    sched.step()


def split_eval(rng: np.random.Generator, items: list, fraction: float) -> tuple[list, list]:
    """(held-out, training) items: a seeded permutation, `fraction` of it held out (none of a single item)."""
    order = rng.permutation(len(items))
    n_eval = int(len(items) * fraction) if len(items) > 1 else 0
    return [items[i] for i in order[:n_eval]], [items[i] for i in order[n_eval:]]


def cosine_schedule(opt, steps: int):
    """5 % linear warmup, then cosine decay to 0 over `steps`."""
    return get_cosine_schedule_with_warmup(opt, num_warmup_steps=max(1, steps // 20), num_training_steps=steps)


def window_means(values: list[float]) -> tuple[float | None, float | None]:
    """Means of the first and the last tenth of a training curve (single-batch values are noisy)."""
    if not values:
        return None, None
    k = max(1, len(values) // 10)
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


def save_stage_outputs(model, tok, output_dir: str, metrics: dict, metrics_name: str, t0: float) -> dict:
    """save_pretrained model + tokenizer, then the metrics (with the stage's total seconds) as JSON."""
    os.makedirs(output_dir, exist_ok=True)
    save_pretrained(model, output_dir)  # (without importing DeepSpeed)
    tok.save_pretrained(output_dir)
    metrics["seconds"] = time.time() - t0
    with open(os.path.join(output_dir, metrics_name), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics
