"""What the policy learned to say: the word n-grams (1–3) whose frequency rose or fell most between
the reference's responses and a checkpoint's, on the same fixed prompts, and the tokens the policy
now favours most (mean log π/π_ref).

Ranking: the weighted log-odds ratio with an informative Dirichlet prior of Monroe, Colaresi & Quinn
(2008, "Fightin' Words", eq. 16–22). For an n-gram w with counts y_w^p (policy), y_w^r (reference),
totals n^p, n^r over the n-grams of the same order, and prior counts α_w (α_0 = Σ α_w):

    δ_w = log[(y_w^p + α_w) / (n^p + α_0 − y_w^p − α_w)] − log[(y_w^r + α_w) / (n^r + α_0 − y_w^r − α_w)]
    σ²(δ_w) ≈ 1/(y_w^p + α_w) + 1/(y_w^r + α_w),      z_w = δ_w / σ(δ_w)

The prior is the pooled counts of both sides scaled to α_0 = PRIOR_WEIGHT·(n^p + n^r): a phrase seen
twice gets a wide σ and cannot outrank one the policy now says in every response, while the raw
log-odds ratio would put any once-seen word at the top. z ranks by evidence, not by size alone."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

PRIOR_WEIGHT = 0.5  # α_0 as a share of the pooled counts: strong enough to damp once-seen n-grams
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def ngrams(tokens: list[str], n: int) -> list[str]:
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@dataclass
class Phrase:
    text: str
    z: float  # > 0: the policy says it more than the reference
    delta: float  # log-odds ratio (nats)
    count_reference: int
    count_policy: int
    share_reference: float  # share of responses containing it
    share_policy: float
    example: str  # a response containing it (the policy's if it rose, the reference's if it fell)
    example_index: int = -1  # its position in the texts given to rank_phrases
    example_prompt_id: object = None  # learned_phrases: the example's fixed prompt (the sample browser's anchor)


def log_odds_z(policy: Counter, reference: Counter, prior_weight: float = PRIOR_WEIGHT) -> dict[str, tuple[float, float]]:
    """{n-gram: (z, δ)} for every n-gram of either side (Monroe et al. 2008, see the module docstring)."""
    n_p, n_r = sum(policy.values()), sum(reference.values())
    pooled = n_p + n_r
    if not pooled:
        return {}
    a0 = prior_weight * pooled
    out = {}
    for w in set(policy) | set(reference):
        a = a0 * (policy[w] + reference[w]) / pooled
        y_p, y_r = policy[w], reference[w]
        if n_p + a0 - y_p - a <= 0 or n_r + a0 - y_r - a <= 0:  # w is every n-gram of both sides: its odds are undefined
            continue
        delta = math.log((y_p + a) / (n_p + a0 - y_p - a)) - math.log((y_r + a) / (n_r + a0 - y_r - a))
        out[w] = (delta / math.sqrt(1 / (y_p + a) + 1 / (y_r + a)), delta)
    return out


def rank_phrases(policy_texts: list[str], reference_texts: list[str], max_n: int = 3, top: int = 10) -> tuple[list[Phrase], list[Phrase]]:
    """(rose, fell): the `top` n-grams (1..max_n words) with the largest and smallest z. Each n-gram order
    is scored against its own totals, then the orders are ranked together."""
    tok_p, tok_r = [words(t) for t in policy_texts], [words(t) for t in reference_texts]
    scored: list[Phrase] = []
    for n in range(1, max_n + 1):
        grams_p, grams_r = [ngrams(t, n) for t in tok_p], [ngrams(t, n) for t in tok_r]
        count_p, count_r = Counter(g for doc in grams_p for g in doc), Counter(g for doc in grams_r for g in doc)
        docs_p, docs_r = Counter(g for doc in grams_p for g in set(doc)), Counter(g for doc in grams_r for g in set(doc))
        for w, (z, delta) in log_odds_z(count_p, count_r).items():
            scored.append(Phrase(w, z, delta, count_r[w], count_p[w], docs_r[w] / max(len(tok_r), 1), docs_p[w] / max(len(tok_p), 1), ""))
    rose = sorted((p for p in scored if p.z > 0), key=lambda p: -p.z)[:top]
    fell = sorted((p for p in scored if p.z < 0), key=lambda p: p.z)[:top]
    for phrases, texts, toks in ((rose, policy_texts, tok_p), (fell, reference_texts, tok_r)):
        for p in phrases:
            n = p.text.count(" ") + 1
            p.example_index = next((i for i, t in enumerate(toks) if p.text in ngrams(t, n)), -1)
            p.example = texts[p.example_index] if p.example_index >= 0 else ""
    return rose, fell


def favoured_tokens(rows: list[dict], top: int = 10, min_count: int = 3) -> list[tuple[str, float, int]]:
    """(token, mean log π/π_ref, occurrences) of the tokens sampled at least `min_count` times in `rows`
    (samples.jsonl rows: `tokens` with `token_log_ratio`), highest mean first."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        for token, ratio in zip(row.get("tokens") or [], row.get("token_log_ratio") or []):
            if isinstance(ratio, (int, float)) and math.isfinite(ratio):
                sums.setdefault(str(token).strip() or repr(token), []).append(float(ratio))
    ranked = [(t, sum(v) / len(v), len(v)) for t, v in sums.items() if len(v) >= min_count]
    return sorted(ranked, key=lambda x: -x[1])[:top]


def learned_phrases(samples: list[dict], step: int | None = None, top: int = 10) -> dict | None:
    """The summary for one eval step's fixed-prompt rows against the reference's (samples.jsonl rows with
    `model` "reference" / "policy"); `step` None: the last policy step. None when either side is missing."""
    reference = [r for r in samples if r.get("model") == "reference"]
    policy_steps = sorted({int(r["step"]) for r in samples if r.get("model") != "reference" and isinstance(r.get("step"), (int, float))})
    if not reference or not policy_steps:
        return None
    step = policy_steps[-1] if step is None else step
    policy = [r for r in samples if r.get("model") != "reference" and r.get("step") == step]
    rose, fell = rank_phrases([str(r.get("response", "")) for r in policy], [str(r.get("response", "")) for r in reference], top=top)
    for phrases, rows in ((rose, policy), (fell, reference)):
        for p in phrases:
            p.example_prompt_id = rows[p.example_index].get("prompt_id") if p.example_index >= 0 else None
    return {"step": step, "n_policy": len(policy), "n_reference": len(reference), "rose": rose, "fell": fell,
            "tokens": favoured_tokens(policy, top)}
