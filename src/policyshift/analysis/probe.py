"""Fixed-prompt probes: sample each held-out prompt with a fixed seed (so differences between
steps reflect the policy, not sampling noise) and record what the report and detectors read."""

from __future__ import annotations

from dataclasses import replace

import torch

from policyshift.analysis.textstats import repeated_ngram_rate
from policyshift.masked import masked_mean
from policyshift.rollout import generate_rollout


@torch.no_grad()
def sample_fixed_prompts(models, ref_policy, tokenizer, prompts, rollout_cfg, max_prompt_length, reward=None, gold_reward=None, seed=0) -> list[dict]:
    """One sample per prompt from `models.policy`. Per-token log π/π_ref is k1 per token; seq_kl is its sum.
    The exact KL and entropy are always computed here, whatever rollout.exact_kl says for training batches."""
    rollout_cfg = replace(rollout_cfg, exact_kl=True)
    device = next(models.policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for start in range(0, len(prompts), rollout_cfg.batch_size):
        chunk = prompts[start : start + rollout_cfg.batch_size]
        ro = generate_rollout(models, ref_policy, tokenizer, chunk, rollout_cfg, max_prompt_length, generator)
        scores = reward(ro.prompts, ro.responses).tolist() if reward else [None] * len(chunk)
        golds = gold_reward(ro.prompts, ro.responses).tolist() if gold_reward else [None] * len(chunk)
        log_ratio = ro.logprobs - ro.ref_logprobs
        ref_lp_mean = masked_mean(ro.ref_logprobs, ro.response_mask, 1)
        entropy_mean = masked_mean(ro.entropy, ro.response_mask, 1)
        for i, n in enumerate(ro.lengths.tolist()):
            ids = ro.response_ids[i, :n].tolist()
            rows.append({
                "prompt_id": start + i,
                "prompt": chunk[i],
                "response": ro.responses[i],
                "tokens": [tokenizer.decode([t]) for t in ids],
                "token_log_ratio": [round(x, 5) for x in log_ratio[i, :n].tolist()],
                "score": scores[i],
                "gold_score": golds[i],
                "seq_kl": log_ratio[i, :n].sum().item(),
                "seq_exact_kl": ro.exact_kl[i, :n].sum().item(),  # Σ_t KL(π‖π_ref) over the full vocabulary
                "entropy_mean": entropy_mean[i].item(),
                "length": n,
                "eos": bool(ro.has_eos[i]),
                "ref_logprob_mean": ref_lp_mean[i].item(),
                "rep_ngram_rate": repeated_ngram_rate(ids, 3),
            })
    return rows
