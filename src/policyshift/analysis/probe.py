"""Fixed-prompt probes: sample each held-out prompt with a fixed seed (so differences between
steps reflect the policy, not sampling noise) and record what the report and detectors read.

The trainer's live analysis (analysis.live) and `policyshift analyze` (analysis.analyze) both
sample through `sample_fixed_prompts`, so a policyshift run and an analyzed run carry the same
samples.jsonl fields, and `fixed_prompt_metrics` turns one step's rows into the per-step aggregates."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from policyshift import keys
from policyshift.textstats import distinct_n, repeated_ngram_rate
from policyshift.kl import kl_k3
from policyshift.masked import masked_mean
from policyshift.rewards import score_rollout
from policyshift.rollout import generate_rollout

FIXED_SEED_OFFSET = 7  # a training run samples its fixed prompts with train.seed + 7 (`analyze --seed` reproduces them)


def fixed_prompt_seed(train_seed: int) -> int:
    return train_seed + FIXED_SEED_OFFSET


FIXED_PREFIX = "fixed/"  # metrics.jsonl keys computed on the fixed prompts at a checkpoint, not on a training batch
_KL_KEYS = {"k1": (keys.KL_K1_TOKEN_MEAN, keys.KL_K1_SEQ_MEAN), "k3": (keys.KL_K3_TOKEN_MEAN, keys.KL_K3_SEQ_MEAN),
            "exact": (keys.KL_EXACT_TOKEN_MEAN, keys.KL_EXACT_SEQ_MEAN)}


def _rounded(values: torch.Tensor) -> list[float]:
    return [round(x, 5) for x in values.tolist()]


@torch.no_grad()
def sample_fixed_prompts(models, ref_policy, tokenizer, prompts, rollout_cfg, max_prompt_length, reward=None, gold_reward=None, seed=0,
                         fields: dict[str, list] | None = None) -> list[dict]:
    """One sample per prompt from `models.policy`, scored by `ref_policy`. Per token: log π/π_ref (= k1),
    k3 and the exact full-vocabulary KL(π‖π_ref) at that state; `seq_*` are their sums over the response
    (sequence KL in nats), `entropy_mean` the policy's mean entropy per token. The exact KL and entropy are
    always computed here, whatever rollout.exact_kl says for training batches.
    `fields`: the prompt rows' other columns (one list per field, aligned with `prompts`), passed to a reward
    function that takes them (e.g. `answer` for a verifiable reward)."""
    rollout_cfg = replace(rollout_cfg, exact_kl=True)
    device = next(models.policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for start in range(0, len(prompts), rollout_cfg.batch_size):
        chunk = prompts[start : start + rollout_cfg.batch_size]
        ro = generate_rollout(models, ref_policy, tokenizer, chunk, rollout_cfg, max_prompt_length, generator)
        chunk_fields = {k: v[start : start + rollout_cfg.batch_size] for k, v in (fields or {}).items()}
        scores = score_rollout(reward, ro, chunk_fields, tokenizer).tolist() if reward else [None] * len(chunk)
        golds = score_rollout(gold_reward, ro, chunk_fields, tokenizer).tolist() if gold_reward else [None] * len(chunk)
        log_ratio = ro.logprobs - ro.ref_logprobs
        k3 = kl_k3(ro.logprobs, ro.ref_logprobs)
        ref_lp_mean = masked_mean(ro.ref_logprobs, ro.response_mask, 1)
        entropy_mean = masked_mean(ro.entropy, ro.response_mask, 1)
        for i, n in enumerate(ro.lengths.tolist()):
            ids = ro.response_ids[i, :n].tolist()
            rows.append({
                "prompt_id": start + i,
                "prompt": chunk[i],
                "response": ro.responses[i],
                "tokens": [tokenizer.decode([t]) for t in ids],
                "token_log_ratio": _rounded(log_ratio[i, :n]),
                "token_k3": _rounded(k3[i, :n]),
                "token_exact_kl": _rounded(ro.exact_kl[i, :n]),
                "score": scores[i],
                "gold_score": golds[i],
                "seq_kl": log_ratio[i, :n].sum().item(),
                "seq_k3": k3[i, :n].sum().item(),
                "seq_exact_kl": ro.exact_kl[i, :n].sum().item(),  # Σ_t KL(π‖π_ref) over the full vocabulary
                "length": n,
                "eos": bool(ro.has_eos[i]),
                "ref_logprob_mean": ref_lp_mean[i].item(),
                "entropy_mean": entropy_mean[i].item(),
                "rep_ngram_rate": repeated_ngram_rate(ids, 3),
            })
    return rows


def _finite(rows: list[dict], key: str) -> list[float]:
    out = []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


def _moments(prefix: str, values: list[float]) -> dict:
    if not values:
        return {}
    n, mean = len(values), sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0  # torch's unbiased std, as the trainer logs
    return {f"{prefix}_mean": mean, f"{prefix}_std": std, f"{prefix}_min": min(values), f"{prefix}_max": max(values)}


def fixed_prompt_metrics(rows: list[dict]) -> dict:
    """One step's fixed-prompt rows → the metrics.jsonl quantities, keyed like a training step's
    (README "Metrics"), without the `fixed/` prefix. Token means pool every response token of every
    prompt (Σ seq sums / Σ lengths), sequence means average the per-response sums; KL is in nats.
    Rows missing a field (older samples.jsonl) leave that metric out instead of guessing it."""
    if not rows:
        return {}
    tokens = sum(int(r["length"]) for r in rows)
    out: dict[str, float] = {}
    for name, key in (("k1", "seq_kl"), ("k3", "seq_k3"), ("exact", "seq_exact_kl")):
        sums = _finite(rows, key)
        if len(sums) == len(rows) and tokens:
            token_key, seq_key = _KL_KEYS[name]
            out[token_key] = sum(sums) / tokens
            out[seq_key] = sum(sums) / len(sums)
    if keys.KL_K1_TOKEN_MEAN in out:  # the sampled estimator of an analyzed run is k1 (config kl.estimator)
        out[keys.KL_TOKEN_MEAN], out[keys.KL_SEQ_MEAN] = out[keys.KL_K1_TOKEN_MEAN], out[keys.KL_K1_SEQ_MEAN]
    out.update(_moments(keys.SCORE, _finite(rows, "score")))
    gold = _finite(rows, "gold_score")
    if gold:
        moments = _moments(keys.GOLD, gold)
        out[keys.GOLD_MEAN], out[keys.GOLD_STD] = moments[keys.GOLD_MEAN], moments[keys.GOLD_STD]
    entropy = [(r["entropy_mean"], r["length"]) for r in rows if isinstance(r.get("entropy_mean"), (int, float))]
    if len(entropy) == len(rows) and tokens:
        out[keys.ENTROPY] = sum(e * n for e, n in entropy) / tokens
    out[keys.LENGTH_MEAN] = tokens / len(rows)
    out[keys.EOS_RATE] = sum(bool(r.get("eos")) for r in rows) / len(rows)
    rep = _finite(rows, "rep_ngram_rate")
    if rep:
        out[keys.REP_NGRAM_RATE] = sum(rep) / len(rep)
    # rows keep decoded tokens, not ids: they stand in for the ids (two ids that decode alike count as one)
    out[keys.DISTINCT_2] = distinct_n([r.get("tokens") or [] for r in rows], 2)
    ref_lp = _finite(rows, "ref_logprob_mean")
    if ref_lp:
        out[keys.REF_LOGPROB_MEAN] = sum(ref_lp) / len(ref_lp)
    return out


@torch.no_grad()
def score_texts(policy, ref_policy, tokenizer, prompts: list[str], responses: list[str], temperature: float, batch_size: int,
                max_prompt_length: int) -> list[tuple[list[str], list[float]]]:
    """(decoded tokens, log π/π_ref per token) of given responses — another trainer's logged completions,
    re-tokenized with `tokenizer` (left-padded prompts, right-padded responses; padding never scored).
    A response longer than the context leaves for it is cut at the end."""
    from policyshift.kl import gather_tokens, log_softmax_t
    from policyshift.models import response_logits

    device = next(policy.parameters()).device
    context = getattr(policy.config, "max_position_embeddings", None) or getattr(policy.config, "n_positions", None)
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_length)
        room = (context - enc["input_ids"].shape[1]) if context else None
        ids = [tokenizer(r, add_special_tokens=False)["input_ids"][:room] for r in responses[start : start + batch_size]]
        width = max(max(len(i) for i in ids), 1)
        response = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for i, row in enumerate(ids):
            response[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        input_ids = torch.cat([enc["input_ids"], response], 1).to(device)
        attention = torch.cat([enc["attention_mask"], mask], 1).to(device)
        response = response.to(device)
        lp = gather_tokens(log_softmax_t(response_logits(policy, input_ids, attention, width), temperature), response)
        ref_lp = gather_tokens(log_softmax_t(response_logits(ref_policy, input_ids, attention, width), temperature), response)
        log_ratio = torch.where(mask.to(device).bool(), lp - ref_lp, 0.0)
        out += [([tokenizer.decode([t]) for t in row], log_ratio[i, : len(row)].tolist()) for i, row in enumerate(ids)]
    return out
