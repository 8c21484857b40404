"""Measure a policy on the held-out prompts: sample responses (temperature 1, full softmax, stop at EOS), the true
sequence KL Σ_t (log π − log π_ref) of the sampled tokens (unbiased for KL(π‖π_ref) of the response), the gold
score (policyshift.demo.gold, never shown to a trainer) and the proxy score (the RM on prompt ids + response ids
with their EOS, minus the missing-EOS penalty: what the trainers optimized). Also the best-of-n pool: BON_POOL
reference samples per prompt with their proxy and gold."""

from __future__ import annotations

import torch

import settings as S


class Evaluator:
    def __init__(self, world: dict):
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        from world import read_prompts

        torch.set_num_threads(1)
        self.tok = AutoTokenizer.from_pretrained(world["sft"], padding_side="left")
        self.ref = AutoModelForCausalLM.from_pretrained(world["sft"], dtype=torch.float32).eval()
        self.rm = AutoModelForSequenceClassification.from_pretrained(world["reward_model"], num_labels=1, dtype=torch.float32).eval()
        self.prompts = read_prompts(world["heldout_prompts"])

    @torch.no_grad()
    def sample(self, model, n_per_prompt: int, seed: int, batch: int = 256) -> dict:
        """n_per_prompt samples of every held-out prompt from `model`: per sample the sequence log-ratio sum, gold,
        proxy, length and whether it ended with EOS (flat lists, prompt-major)."""
        from policyshift.demo.gold import score as gold_score
        from policyshift.models import position_ids_from_mask
        from policyshift.reward_render import score_sequences

        tok, eos, pad = self.tok, self.tok.eos_token_id, self.tok.pad_token_id
        rows = [p for p in self.prompts for _ in range(n_per_prompt)]
        torch.manual_seed(seed)  # generate draws from the global generator
        out = {"kl": [], "gold": [], "proxy": [], "length": [], "eos": []}
        for i in range(0, len(rows), batch):
            chunk = rows[i:i + batch]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            seq = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=S.RESPONSE_LEN,
                                 eos_token_id=eos, pad_token_id=pad)
            P = enc["input_ids"].shape[1]
            resp = seq[:, P:]
            # the response runs up to and including its first EOS
            is_eos = resp == eos
            ended = is_eos.any(1)
            first = torch.where(ended, is_eos.float().argmax(1), torch.full_like(ended, resp.shape[1], dtype=torch.long))
            rmask = torch.arange(resp.shape[1])[None] <= first[:, None]
            attn = torch.cat([enc["attention_mask"], rmask.long()], 1)
            full = torch.where(attn.bool(), seq, pad)
            pos = position_ids_from_mask(attn)
            lp = []
            for m in (model, self.ref):
                logits = m(input_ids=full, attention_mask=attn, position_ids=pos).logits[:, P - 1:-1].float()
                lp.append(torch.log_softmax(logits, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1))
            kl = ((lp[0] - lp[1]) * rmask).sum(1)
            texts = tok.batch_decode(torch.where(rmask, resp, pad), skip_special_tokens=True)
            ids = [enc["input_ids"][j][enc["attention_mask"][j].bool()].tolist() + resp[j][rmask[j]].tolist() for j in range(len(chunk))]
            proxy = score_sequences(self.rm, ids, pad, 128, 512) - S.MISSING_EOS_PENALTY * (~ended).float()
            out["kl"] += kl.tolist()
            out["gold"] += gold_score(chunk, texts)
            out["proxy"] += proxy.tolist()
            out["length"] += rmask.sum(1).tolist()
            out["eos"] += ended.tolist()
        return out

    def checkpoint(self, path: str, seed: int = S.EVAL_SEED) -> dict:
        """Mean KL (± its SE), gold, proxy, length and EOS share of a saved policy on the held-out prompts."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        s = self.sample(model, S.EVAL_SAMPLES_PER_PROMPT, seed)
        n = len(s["kl"])
        kl = torch.tensor(s["kl"])
        return {"kl": kl.mean().item(), "kl_se": (kl.std() / n**0.5).item(), "gold": sum(s["gold"]) / n,
                "proxy": sum(s["proxy"]) / n, "length": sum(s["length"]) / n, "eos": sum(s["eos"]) / n}

    def bon_pool(self, seed: int = S.EVAL_SEED + 1) -> dict:
        """BON_POOL reference samples per held-out prompt: {"proxy": [[...] per prompt], "gold": [[...] per prompt]}."""
        s = self.sample(self.ref, S.BON_POOL, seed, batch=512)
        k = S.BON_POOL
        return {key: [s[key][i:i + k] for i in range(0, len(s[key]), k)] for key in ("proxy", "gold", "kl")}
