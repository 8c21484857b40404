"""`policyshift compare A B --prompts FILE`: how far checkpoint B moved from A (e.g. RL vs SFT),
whoever trained them. B's samples give KL(B‖A) (k1, k3 and the exact full-vocabulary KL); both
models' samples are shown side by side, tokens coloured by log π_B/π_A."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from policyshift.analysis.report.kit import esc, render_sample_columns, standalone_page
from policyshift.checks import fit_prompt_budget, model_context
from policyshift.config import RolloutConfig
from policyshift.data import load_prompt_rows
from policyshift.kl import kl_k1, kl_k3
from policyshift.masked import masked_mean, masked_sum
from policyshift.models import ModelError, PolicyAndCritic, freeze, load_causal_lm, load_tokenizer, same_vocabulary
from policyshift.rewards import make_reward, score_rollout
from policyshift.rollout import generate_rollout


def _kl_summary(ro) -> dict:
    """KL(π‖π_ref) of rollout `ro` (sampled from π), per token and per sequence."""
    mask = ro.response_mask
    out = {}
    for name, per_token in (("k1", kl_k1(ro.logprobs, ro.ref_logprobs)), ("k3", kl_k3(ro.logprobs, ro.ref_logprobs)), ("exact", ro.exact_kl)):
        out[f"{name}_token_mean"] = masked_mean(per_token, mask).item()
        out[f"{name}_seq_mean"] = masked_sum(per_token, mask, 1).mean().item()
    return out


def _rows(ro, tokenizer, scores, ratio_sign: float) -> list[dict]:
    log_ratio = ratio_sign * (ro.logprobs - ro.ref_logprobs)  # always log π_B − log π_A
    rows = []
    for i, n in enumerate(ro.lengths.tolist()):
        ids = ro.response_ids[i, :n].tolist()
        rows.append({"response": ro.responses[i], "tokens": [tokenizer.decode([t]) for t in ids],
                     "log_ratio_b_over_a": [round(x, 5) for x in log_ratio[i, :n].tolist()],
                     "seq_log_ratio_b_over_a": log_ratio[i, :n].sum().item(), "length": n, "eos": bool(ro.has_eos[i]),
                     "score": None if scores is None else float(scores[i])})
    return rows


@torch.no_grad()
def compare_checkpoints(a: str, b: str, prompts_file: str, out_dir: str, reward_model: str | None = None, reward_function: str | None = None,
                        max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0, batch_size: int = 16, max_prompt_length: int = 64,
                        prompt_field: str = "prompt", probes: list | None = None) -> dict:
    tok_a, tok_b = load_tokenizer(a), load_tokenizer(b)
    if not same_vocabulary(tok_a, tok_b):
        raise ModelError(f"{a} and {b} use different vocabularies: a per-token KL between them is undefined")
    model_a, model_b = freeze(load_causal_lm(a)), freeze(load_causal_lm(b))
    contexts = [c for c in (model_context(model_a.config), model_context(model_b.config)) if c is not None]
    rows = load_prompt_rows(prompts_file, prompt_field, tokenizer=tok_a)  # chat rows: rendered with tok_a's chat template
    prompts = [row.text for row in rows]
    max_prompt_length = fit_prompt_budget(tok_a, prompts, max_prompt_length, max_new_tokens, min(contexts, default=None), "--max-new-tokens")
    reward = make_reward(reward_model, reward_function) if (reward_model or reward_function) else None
    cfg = RolloutConfig(batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature)

    probe_scores = _probe_suites(probes or [], model_a, model_b, tok_a, cfg, max_prompt_length, seed)
    summaries, samples = {"a": [], "b": []}, []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        # Same seed for both: with B = A the two columns are the very same samples.
        ro_b = generate_rollout(PolicyAndCritic(model_b), model_a, tok_a, chunk, cfg, max_prompt_length, torch.Generator().manual_seed(seed + start))
        ro_a = generate_rollout(PolicyAndCritic(model_a), model_b, tok_a, chunk, cfg, max_prompt_length, torch.Generator().manual_seed(seed + start))
        fields = {"messages": [row.messages for row in rows[start : start + batch_size]]}  # a chat-template reward model's input
        scores_a = score_rollout(reward, ro_a, fields, tok_a) if reward else None
        scores_b = score_rollout(reward, ro_b, fields, tok_a) if reward else None
        summaries["b"].append((len(chunk), _kl_summary(ro_b), scores_b))
        summaries["a"].append((len(chunk), _kl_summary(ro_a), scores_a))
        for i, (ra, rb) in enumerate(zip(_rows(ro_a, tok_a, scores_a, -1.0), _rows(ro_b, tok_a, scores_b, 1.0))):
            samples.append({"prompt_id": start + i, "prompt": chunk[i], "a": ra, "b": rb})

    def pooled(side):  # weight each chunk's means by its number of prompts
        n = sum(c for c, _, _ in summaries[side])
        keys = summaries[side][0][1].keys()
        return {k: sum(c * s[k] for c, s, _ in summaries[side]) / n for k in keys}

    result = {
        "a": a, "b": b, "prompts": prompts_file, "n_prompts": len(prompts), "temperature": temperature, "max_new_tokens": max_new_tokens,
        "kl_b_from_a": pooled("b"),  # KL(π_B‖π_A) on B's samples: how far B moved
        "kl_a_from_b": pooled("a"),  # KL(π_A‖π_B) on A's samples (the reverse direction)
        "reward": None if reward is None else {
            "a_mean": torch.cat([s for _, _, s in summaries["a"]]).mean().item(),
            "b_mean": torch.cat([s for _, _, s in summaries["b"]]).mean().item()},
        "probes": probe_scores,
        "samples": samples,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    (out / "compare.html").write_text(render_compare(result))
    return result


def _probe_suites(configs: list, model_a, model_b, tokenizer, cfg: RolloutConfig, max_prompt_length: int, seed: int) -> dict:
    """Each probe suite's mean score and standard error for A and for B (the same seed: with B = A, equal)."""
    import sys

    from policyshift import keys
    from policyshift.analysis.suites import evaluate_suites, load_suites

    if not configs:
        return {}
    suites = load_suites(configs, tokenizer, model_a, max_prompt_length, cfg.max_new_tokens)
    warn = lambda line: print(f"warning: {line}", file=sys.stderr)  # noqa: E731
    a = evaluate_suites(suites, PolicyAndCritic(model_a), model_b, tokenizer, cfg, seed, warn)
    b = evaluate_suites(suites, PolicyAndCritic(model_b), model_a, tokenizer, cfg, seed, warn)
    return {s.name: {"a_mean": a[keys.probe_key(s.name)], "a_se": a[keys.probe_se_key(s.name)], "b_mean": b[keys.probe_key(s.name)],
                     "b_se": b[keys.probe_se_key(s.name)], "higher_is_better": s.higher_is_better}
            for s in suites if not s.disabled}


def render_compare(result: dict) -> str:
    kl, rev = result["kl_b_from_a"], result["kl_a_from_b"]
    rows = "".join(
        f"<tr><td>{name}</td><td>{kl[f'{k}_token_mean']:.4f}</td><td>{kl[f'{k}_seq_mean']:.4f}</td><td>{rev[f'{k}_seq_mean']:.4f}</td></tr>"
        for name, k in (("sampled k1 = log π_B/π_A", "k1"), ("sampled k3", "k3"), ("exact full-vocabulary", "exact")))
    reward = result["reward"]
    reward_html = f"<p>Reward mean: A {reward['a_mean']:.4f}, B {reward['b_mean']:.4f}</p>" if reward else "<p>No reward given.</p>"
    probes = result.get("probes") or {}
    if probes:
        reward_html += ("<h3>Probe suites</h3><table><tr><th>suite</th><th>A (mean ± s.e.)</th><th>B (mean ± s.e.)</th><th>better</th></tr>"
                        + "".join(f"<tr><td>{esc(n)}</td><td>{p['a_mean']:.4f} ± {p['a_se']:.4f}</td><td>{p['b_mean']:.4f} ± {p['b_se']:.4f}</td>"
                                  f"<td>{'higher' if p['higher_is_better'] else 'lower'}</td></tr>" for n, p in probes.items()) + "</table>")
    columns = "".join(
        render_sample_columns(s["prompt"], [
            {"label": "A", "tokens": s["a"]["tokens"], "log_ratios": s["a"]["log_ratio_b_over_a"], "score": s["a"]["score"],
             "gold_score": None, "seq_kl": s["a"]["seq_log_ratio_b_over_a"], "length": s["a"]["length"]},
            {"label": "B", "tokens": s["b"]["tokens"], "log_ratios": s["b"]["log_ratio_b_over_a"], "score": s["b"]["score"],
             "gold_score": None, "seq_kl": s["b"]["seq_log_ratio_b_over_a"], "length": s["b"]["length"]}])
        for s in result["samples"])
    body = (
        f"<header><h1>policyshift compare</h1><p>A = <code>{esc(result['a'])}</code>, B = <code>{esc(result['b'])}</code>, "
        f"{result['n_prompts']} prompts from <code>{esc(result['prompts'])}</code>, T = {result['temperature']}</p></header>"
        f'<section class="panel" id="compare-kl"><h2>KL between the checkpoints</h2><table><tr><th>estimator</th>'
        f"<th>KL(B‖A) per token</th><th>KL(B‖A) per sequence</th><th>KL(A‖B) per sequence</th></tr>{rows}</table>{reward_html}</section>"
        f'<section class="panel" id="compare-samples"><h2>Samples</h2><p>Tokens coloured by log π_B/π_A: red = B favours the token '
        f"more than A, blue = less. Column “seq KL” is Σ log π_B/π_A over the response.</p>{columns}</section>"
    )
    return standalone_page("policyshift compare", body)
