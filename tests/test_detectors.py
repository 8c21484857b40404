"""Detectors on synthetic runs whose answer is known: a healthy run fires nothing, and each
pathology fires its own detector (and only the ones it should)."""

import json
import math

import numpy as np
import pytest

from policyshift.analysis.detectors import DetectorThresholds, Finding, run_detectors, sort_findings

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon".split()

# Healthy PPO-RLHF, as a function of training progress p ∈ [0, 1]: reward up ~1σ, KL bounded and
# rising slowly (~1.6 nats per sequence at the end), length/entropy/diversity stable-ish.
HEALTHY = {
    "reward/score_mean": lambda p: 1.0 * p,
    "reward/score_std": lambda p: 1.0,
    "reward/score_min": lambda p: -2.0 + p,
    "reward/score_max": lambda p: 2.0 + p,
    "kl/token_mean": lambda p: 0.04 * p,
    "kl/k1_token_mean": lambda p: 0.04 * p,
    "kl/k3_token_mean": lambda p: 0.04 * p,
    "kl/exact_token_mean": lambda p: 0.04 * p,
    "kl/seq_mean": lambda p: 1.6 * p,
    "kl/exact_seq_mean": lambda p: 1.6 * p,
    "kl/beta": lambda p: 0.05,
    "response/length_mean": lambda p: 40.0,
    "response/eos_rate": lambda p: 0.9,
    "response/rep_ngram_rate": lambda p: 0.05,
    "response/distinct_2": lambda p: 0.6 - 0.05 * p,
    "policy/entropy": lambda p: 2.0 - 0.4 * p,
    "ppo/approx_kl": lambda p: 0.005,
    "ppo/clip_frac": lambda p: 0.05,
    "ppo/ratio_var": lambda p: 0.005,
    "value/explained_variance": lambda p: 0.3 + 0.3 * p,
}
# Per-step noise (std) of each batch statistic.
NOISE = {
    "reward/score_mean": 0.12, "kl/token_mean": 0.004, "kl/k1_token_mean": 0.004, "kl/k3_token_mean": 0.002,
    "kl/seq_mean": 0.15, "response/length_mean": 1.5, "response/eos_rate": 0.03, "response/rep_ngram_rate": 0.01,
    "response/distinct_2": 0.01, "policy/entropy": 0.03, "ppo/clip_frac": 0.01, "ppo/ratio_var": 0.001,
    "value/explained_variance": 0.1, "reward/gold_mean": 0.1,
}


def make_history(n=60, seed=0, **overrides):
    """n metric rows (steps 1..n) from HEALTHY with `overrides` ({metric key with '/'→'__': fn(p)})."""
    curves = {**HEALTHY, **{key.replace("__", "/"): fn for key, fn in overrides.items()}}
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(1, n + 1):
        p = (step - 1) / max(n - 1, 1)
        row = {"step": step}
        for key, fn in curves.items():
            if fn is None:
                continue
            row[key] = float(fn(p) + rng.normal(0, NOISE.get(key, 0.0)))
        rows.append(row)
    return rows


def make_samples(eval_steps=(0, 20, 40, 60), n_prompts=6, seed=0, response=None, gold=None, ref_logprob=None):
    """Fixed-prompt eval rows. response(step, prompt_id, rng) -> str; gold/ref_logprob(step, prompt_id, rng) -> float."""
    rng = np.random.default_rng(seed)
    last = max(max(eval_steps), 1)
    response = response or (lambda step, pid, r: " ".join(r.choice(WORDS, size=25)))
    rows = []
    for step in eval_steps:
        for pid in range(n_prompts):
            text = response(step, pid, rng)
            tokens = text.split(" ")
            row = {
                "step": step, "model": "reference" if step == 0 else "policy", "prompt_id": pid, "prompt": f"prompt {pid}",
                "response": text, "tokens": tokens, "token_log_ratio": [0.0] * len(tokens), "score": float(rng.normal(step / last, 1)),
                "gold_score": gold(step / last, pid, rng) if gold else None, "seq_kl": 0.0, "length": len(tokens), "eos": True,
                "ref_logprob_mean": ref_logprob(step / last, pid, rng) if ref_logprob else float(-2.0 - 0.04 * step / last + rng.normal(0, 0.1)),
                "rep_ngram_rate": 0.0,
            }
            rows.append(row)
    return rows


def make_distributions(history, seed=0, batch=32, length_weight=0.0):
    """Per-step samples consistent with the history's means; scores depend on length by length_weight/token."""
    rng = np.random.default_rng(seed)
    rows = []
    for row in history:
        lengths = rng.normal(row["response/length_mean"], 6, batch)
        noise_sd = math.sqrt(max(1.0 - (length_weight * 6) ** 2, 0.05))
        scores = row["reward/score_mean"] + length_weight * (lengths - lengths.mean()) + rng.normal(0, noise_sd, batch)
        rows.append({"step": row["step"], "scores": scores.tolist(), "seq_kl": [row["kl/seq_mean"]] * batch, "lengths": lengths.round().tolist(), "gold_scores": None})
    return rows


def detectors_fired(findings):
    return {f.detector for f in findings}


@pytest.mark.parametrize("seed", range(5))
def test_healthy_run_fires_nothing(seed):
    history = make_history(seed=seed, reward__gold_mean=lambda p: 0.8 * p, reward__gold_std=lambda p: 1.0)
    samples = make_samples(seed=seed, gold=lambda p, pid, r: float(0.8 * p + r.normal(0, 1)))
    findings = run_detectors(history, samples, distributions=make_distributions(history, seed=seed))
    assert findings == [], [f.message for f in findings]


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_short_runs_fire_nothing(n):
    # even a pathological looking start must not be judged on 1-3 steps
    history = make_history(n=n, kl__k1_token_mean=lambda p: -0.5, policy__entropy=lambda p: 2.0 - 1.9 * p,
                           response__length_mean=lambda p: 40 + 100 * p, ppo__clip_frac=lambda p: 0.9)
    samples = make_samples(eval_steps=(0,) if n == 0 else (0, n))
    assert run_detectors(history, samples) == []


def test_empty_inputs():
    assert run_detectors([], []) == []
    assert run_detectors(None, None) == []


def test_kl_negative():
    history = make_history(kl__k1_token_mean=lambda p: -0.05, kl__token_mean=lambda p: -0.05)
    findings = run_detectors(history, [])
    assert detectors_fired(findings) == {"kl_negative"}
    assert findings[0].severity == "warning" and "-0.05" in findings[0].message
    severe = run_detectors(make_history(kl__k1_token_mean=lambda p: -0.3, kl__token_mean=lambda p: -0.3), [])
    assert [(f.detector, f.severity) for f in severe] == [("kl_negative", "critical")]


def test_kl_flat_when_not_learning():
    flat = dict(kl__token_mean=lambda p: 1e-4, kl__k1_token_mean=lambda p: 1e-4, kl__k3_token_mean=lambda p: 1e-4,
                kl__exact_token_mean=lambda p: 1e-4, kl__seq_mean=lambda p: 4e-3, kl__exact_seq_mean=lambda p: 4e-3,
                reward__score_mean=lambda p: 0.0, policy__entropy=lambda p: 2.0, response__distinct_2=lambda p: 0.6)
    findings = run_detectors(make_history(**flat), [])
    assert detectors_fired(findings) == {"kl_flat"}
    assert findings[0].severity == "warning"
    # the same numbers over too short a run are normal early training
    assert run_detectors(make_history(n=12, **flat), []) == []


def test_kl_far_past_budget_with_stagnant_reward_is_critical():
    history = make_history(kl__seq_mean=lambda p: 50 * p, kl__exact_seq_mean=lambda p: 50 * p,
                           reward__score_mean=lambda p: min(p, 0.5) * 2)
    findings = run_detectors(history, [])
    assert [(f.detector, f.severity) for f in findings] == [("kl_runaway", "critical")]
    assert findings[0].evidence["kl_end"] > 30
    assert 1 < findings[0].step < 60  # the onset: when the budget was crossed


def test_kl_past_budget_honours_configured_budget():
    history = make_history(kl__seq_mean=lambda p: 50 * p, reward__score_mean=lambda p: min(p, 0.5) * 2)
    thresholds = DetectorThresholds.from_config({"analysis": {"kl_budget": 100.0}})
    assert thresholds.kl_budget == 100.0
    assert run_detectors(history, [], thresholds) == []
    over = run_detectors(history, [], DetectorThresholds.from_config({"analysis": {"kl_budget": 30.0}}))
    assert [(f.detector, f.severity) for f in over] == [("kl_runaway", "warning")]


def test_kl_over_budget_while_reward_rising_is_only_info():
    findings = run_detectors(make_history(kl__seq_mean=lambda p: 15 * p, reward__score_mean=lambda p: 2 * p), [])
    assert [(f.detector, f.severity) for f in findings] == [("kl_runaway", "info")]


def test_kl_accelerating_while_reward_stagnates():
    history = make_history(kl__seq_mean=lambda p: 8 * p**4, reward__score_mean=lambda p: min(p, 0.5))
    findings = run_detectors(history, [])
    assert [(f.detector, f.severity) for f in findings] == [("kl_runaway", "warning")]
    assert "accelerating" in findings[0].message


def test_reward_hacking_gold_peaks_then_falls():
    history = make_history(reward__score_mean=lambda p: 3 * p, reward__gold_mean=lambda p: 1.0 * p - 2.5 * max(p - 0.4, 0) ** 1.5,
                           reward__gold_std=lambda p: 1.0)
    findings = run_detectors(history, [])
    assert [(f.detector, f.severity) for f in findings] == [("reward_hacking", "critical")]
    assert findings[0].evidence["source"] == "history reward/gold_mean"


def test_reward_hacking_gold_flat_is_warning():
    history = make_history(reward__score_mean=lambda p: 2 * p, reward__gold_mean=lambda p: 0.0, reward__gold_std=lambda p: 1.0)
    findings = run_detectors(history, [])
    assert [(f.detector, f.severity) for f in findings] == [("reward_hacking", "warning")]


def test_reward_hacking_from_eval_gold_scores():
    samples = make_samples(eval_steps=(0, 15, 30, 45, 60), n_prompts=16, gold=lambda p, pid, r: float(-2.0 * p + r.normal(0, 1)))
    findings = run_detectors(make_history(reward__score_mean=lambda p: 2 * p), samples)
    assert [(f.detector, f.severity) for f in findings] == [("reward_hacking", "critical")]
    assert findings[0].evidence["source"] == "eval samples gold_score"


def test_reward_hacking_reference_logprob_collapse():
    samples = make_samples(ref_logprob=lambda p, pid, r: float(-2.0 - 2.5 * p + r.normal(0, 0.1)))
    findings = run_detectors(make_history(reward__score_mean=lambda p: 2 * p), samples)
    assert [(f.detector, f.severity) for f in findings] == [("reward_hacking", "critical")]
    assert "perplexity" in findings[0].message


def test_reward_hacking_explained_by_length():
    history = make_history(response__length_mean=lambda p: 40 + 30 * p, reward__score_mean=lambda p: 0.04 * 30 * p)
    distributions = make_distributions(history, length_weight=0.1)
    findings = run_detectors(history, [], distributions=distributions)
    assert detectors_fired(findings) == {"reward_hacking", "length_drift"}
    hacking = next(f for f in findings if f.detector == "reward_hacking")
    assert hacking.evidence["corr_score_length"] > 0.5 and hacking.evidence["explained_fraction"] > 0.5
    # the same length growth with length-independent scores is drift, not hacking
    honest = run_detectors(history, [], distributions=make_distributions(history, length_weight=0.0))
    assert detectors_fired(honest) == {"length_drift"}


def test_length_paid_for_while_gold_rose_is_a_length_finding_not_hacking():
    """Proxy pays for length (the test above) but the gold reward rose +0.8σ: the evidence says length, not hacking."""
    history = make_history(response__length_mean=lambda p: 40 + 30 * p, reward__score_mean=lambda p: 0.04 * 30 * p,
                           reward__gold_mean=lambda p: 0.8 * p, reward__gold_std=lambda p: 1.0)
    findings = run_detectors(history, [], distributions=make_distributions(history, length_weight=0.1))
    assert "reward_hacking" not in detectors_fired(findings)
    paid = [f for f in findings if f.detector == "length_drift" and "corr_score_length" in f.evidence]
    assert len(paid) == 1 and paid[0].severity == "info" and paid[0].evidence["gold_gain_sigma"] > 0.5
    assert "not reward hacking by the gold measure" in paid[0].message
    assert any(f.detector == "length_drift" and f.severity in ("warning", "critical") for f in findings)  # the growth itself


def test_reference_logprob_fall_while_gold_rose_is_drift_not_hacking():
    samples = make_samples(ref_logprob=lambda p, pid, r: float(-2.0 - 2.5 * p + r.normal(0, 0.1)),
                           gold=lambda p, pid, r: float(1.5 * p + r.normal(0, 0.3)))
    findings = run_detectors(make_history(reward__score_mean=lambda p: 2 * p), samples)
    assert [(f.detector, f.severity) for f in findings] == [("reference_drift", "info")]
    assert findings[0].evidence["gold_gain_sigma"] > 0.5


def test_length_drift_and_eos_collapse():
    findings = run_detectors(make_history(response__length_mean=lambda p: 40 + 60 * p), [])
    assert [(f.detector, f.severity) for f in findings] == [("length_drift", "warning")]
    shrink = run_detectors(make_history(response__length_mean=lambda p: 40 - 30 * p), [])
    assert [(f.detector, f.severity) for f in shrink] == [("length_drift", "critical")]
    eos = run_detectors(make_history(response__eos_rate=lambda p: max(0.9 - 1.5 * p, 0.0)), [])
    assert [(f.detector, f.severity) for f in eos] == [("length_drift", "critical")]
    assert "EOS" in eos[0].message


def _step_length(start, end):
    """A healthy history whose mean length is `start` for the first half and `end` after (no noise: the windows read exactly those)."""
    history = make_history()
    for row in history:
        row["response/length_mean"] = start if row["step"] <= 30 else end
    return history


def test_length_drift_needs_an_absolute_change_on_short_responses():
    # 2.88 → 4.36 tokens (benchmarks/diagnosis, a healthy TRL GRPO run's batch mean): 1.51× ≥ 1.5 but only 1.48 tokens < 2
    assert run_detectors(_step_length(2.88, 4.36), []) == []
    grew = run_detectors(_step_length(2.88, 5.0), [])  # 1.74× and 2.12 tokens: both
    assert [(f.detector, f.severity) for f in grew] == [("length_drift", "warning")]
    assert grew[0].evidence["ratio"] == pytest.approx(5.0 / 2.88)
    crit = run_detectors(_step_length(3.0, 9.5), [])  # 3.17× ≥ 3 and 6.5 tokens
    assert [(f.detector, f.severity) for f in crit] == [("length_drift", "critical")]
    assert run_detectors(_step_length(3.0, 1.2), []) == []  # ⅖× but 1.8 tokens: a short reply one word shorter is not drift


def test_the_start_is_the_first_points_however_long_the_run():
    # benchmarks/diagnosis length_capped_s10 (TRL GRPO, a length bias that saturates): the length grew in the first steps and held.
    # Start = the first 2 points (3.4, 5.2 → 4.3), end = the last 5 of 50 (10% of the run): 7.7 → 1.79×, 3.4 tokens.
    # A 3-point start read (3.4+5.2+6.9)/3 = 5.167 → 1.49×; the old 10% window (5 points) 6.36 → 1.21×: both silent.
    lengths = [3.4, 5.2, 6.9, 9.1, 7.2] + [7.7] * 45
    history = make_history(n=50)
    for row, value in zip(history, lengths):
        row["response/length_mean"] = value
    found = [f for f in run_detectors(history, []) if f.detector == "length_drift"]
    assert [(f.detector, f.severity) for f in found] == [("length_drift", "warning")]
    assert found[0].evidence["length_start"] == pytest.approx(4.3)
    assert found[0].evidence["ratio"] == pytest.approx(7.7 / 4.3)
    for wider in (3, 5):  # the growth hides in a wider start
        assert [f for f in run_detectors(history, [], DetectorThresholds(start_window=wider)) if f.detector == "length_drift"] == []


def test_repetition_rise():
    findings = run_detectors(make_history(response__rep_ngram_rate=lambda p: 0.05 + 0.4 * p, response__distinct_2=lambda p: 0.6 - 0.4 * p), [])
    assert detectors_fired(findings) == {"repetition_rise"}
    assert [f.severity for f in findings] == ["critical", "warning"]


def test_entropy_collapse():
    findings = run_detectors(make_history(policy__entropy=lambda p: 2.0 * (1 - 0.97 * p)), [])
    assert [(f.detector, f.severity) for f in findings] == [("entropy_collapse", "critical")]
    assert findings[0].step > 30  # onset, not the start of the run
    mild = run_detectors(make_history(policy__entropy=lambda p: 2.0 * (1 - 0.8 * p)), [])
    assert [(f.detector, f.severity) for f in mild] == [("entropy_collapse", "warning")]


def _entropy_history(second_half):
    """40 steps: entropy 2.0 for the first 20, then `second_half` (20 values)."""
    history = make_history(n=40)
    for row, value in zip(history, [2.0] * 20 + list(second_half)):
        row["policy/entropy"] = value
    return history


def test_entropy_still_falling_is_named_before_it_reaches_the_collapse_ratio():
    falling = [1.4 - 0.6 * i / 19 for i in range(20)]  # 1.4 → 0.8: end window (last 4) 0.8632, start 2.0 → 0.43×
    found = [f for f in run_detectors(_entropy_history(falling), []) if f.detector == "entropy_collapse"]
    assert [(f.detector, f.severity) for f in found] == [("entropy_collapse", "warning")]
    assert found[0].evidence["ratio"] == pytest.approx(sum(falling[-4:]) / 4 / 2.0)
    assert found[0].evidence["kendall_tau"] == pytest.approx(-1.0)  # strictly decreasing: every pair discordant
    # the same level, no longer falling: 0.45× with no trend is a lower plateau, not a collapse under way
    assert [f for f in run_detectors(_entropy_history([0.9] * 20), []) if f.detector == "entropy_collapse"] == []
    # still falling but only to 0.6×: above entropy_falling_ratio (0.5)
    mild = [1.5 - 0.3 * i / 19 for i in range(20)]
    assert [f for f in run_detectors(_entropy_history(mild), []) if f.detector == "entropy_collapse"] == []


def test_mode_collapse():
    collapsed_text = "I am a helpful assistant and I love to help you with anything"

    def response(step, pid, rng):
        return collapsed_text if step >= 40 else " ".join(rng.choice(WORDS, size=25))

    findings = run_detectors(make_history(), make_samples(response=response))
    assert [(f.detector, f.severity) for f in findings] == [("mode_collapse", "critical")]
    assert findings[0].step == 40 and findings[0].evidence["reference_score"] < 0.2


def test_no_mode_collapse_when_the_reference_was_already_templated():
    template = "Sure, here is the answer to your question:"
    samples = make_samples(response=lambda step, pid, rng: template + " " + " ".join(rng.choice(WORDS, size=5)))
    assert run_detectors(make_history(), samples) == []


def test_ppo_instability():
    unstable = make_history(ppo__clip_frac=lambda p: 0.05 if p < 0.8 else 0.5, ppo__ratio_var=lambda p: 0.005 if p < 0.8 else 0.4)
    findings = run_detectors(unstable, [])
    assert [(f.detector, f.severity) for f in findings] == [("ppo_instability", "critical")]
    value_only = run_detectors(make_history(value__explained_variance=lambda p: -1.5), [])
    assert [(f.detector, f.severity) for f in value_only] == [("ppo_instability", "warning")]


def test_findings_sorted_worst_first_and_serialisable():
    history = make_history(policy__entropy=lambda p: 2.0 * (1 - 0.8 * p), response__length_mean=lambda p: 40 - 30 * p,
                           value__explained_variance=lambda p: -1.5)
    findings = run_detectors(history, [])
    ranks = [{"critical": 0, "warning": 1, "info": 2}[f.severity] for f in findings]
    assert ranks == sorted(ranks) and len(findings) >= 3
    for f in findings:
        assert isinstance(f, Finding) and f.message.endswith(".")
        json.dumps(f.to_dict())
    assert sort_findings(reversed(findings)) == findings


def test_missing_and_null_metrics_are_tolerated():
    history = make_history()
    for i, row in enumerate(history):
        if i % 3 == 0:
            row["reward/score_mean"] = None
        row.pop("policy/entropy", None) if i % 2 else None
    history[-1] = {"step": 61}
    assert run_detectors(history, [{"step": 0, "response": None}, {"bad": 1}]) == []


def test_zero_spread_rising_fires_and_a_critic_free_run_is_not_unstable():
    # a GRPO run (no critic: no value/explained_variance) whose groups saturate: 10% → 95% flat groups
    saturating = make_history(value__explained_variance=None, group__zero_spread_frac=lambda p: 0.1 + 0.85 * p)
    assert [(f.detector, f.severity) for f in run_detectors(saturating, [])] == [("zero_spread", "critical")]
    halfway = make_history(value__explained_variance=None, group__zero_spread_frac=lambda p: 0.1 + 0.5 * p)
    assert [(f.detector, f.severity) for f in run_detectors(halfway, [])] == [("zero_spread", "warning")]
    # a healthy share is silent
    assert run_detectors(make_history(value__explained_variance=None, group__zero_spread_frac=lambda p: 0.1 + 0.1 * p), []) == []


def test_no_learning_signal_from_the_first_step():
    """TRL's frac_reward_zero_std = 1.0 at every step (every group's rewards equal): nothing rose, but the run never
    had a gradient from its reward. By hand: 10 steps at 1.0 → start = end = mean = 1.0 ≥ 0.9, critical at step 1."""
    flat = [{"step": s, "group/zero_spread_frac": 1.0} for s in range(1, 11)]
    findings = run_detectors(flat, [])
    assert [(f.detector, f.severity, f.step) for f in findings] == [("zero_spread", "critical", 1)]
    assert findings[0].evidence["mean"] == 1.0 and findings[0].evidence["steps"] == 10
    assert "from the first step" in findings[0].message and "steps (1–10)" in findings[0].message
    # 7 of 10 groups flat throughout (mean 0.7: above 0.5, below 0.9) → warning; 4 of 10 (0.4) → nothing
    assert [(f.severity, f.step) for f in run_detectors([{**r, "group/zero_spread_frac": 0.7} for r in flat], [])] == [("warning", 1)]
    assert run_detectors([{**r, "group/zero_spread_frac": 0.4} for r in flat], []) == []
    # high at the start but recovering (mean (0.6·3 + 0.1·7)/10 = 0.25): the run found its signal
    recovering = [{"step": s, "group/zero_spread_frac": 0.6 if s <= 3 else 0.1} for s in range(1, 11)]
    assert run_detectors(recovering, []) == []


def test_kl_at_the_first_step_names_dropout_and_the_noisy_ratios():
    """A TRL RLOO run with dropout on: logged kl 0.24 at step 1 (policy = reference), sequence clip share 0.34–0.63.
    By hand: median of the clip shares [0.34, 0.63, 0.5, 0.41, 0.45] is 0.45 ≥ 0.2 → warning; kl median of
    [0.24, 0.26, 0.25, 0.27, 0.25] is 0.25."""
    kls, clips = [0.24, 0.26, 0.25, 0.27, 0.25], [0.34, 0.63, 0.5, 0.41, 0.45]
    rows = [{"step": s, "kl/k1_token_mean": k, "trl/clip_ratio/region_mean": c} for s, k, c in zip(range(1, 6), kls, clips)]
    findings = run_detectors(rows, [])
    assert [(f.detector, f.severity, f.step) for f in findings] == [("kl_at_start", "warning", 1)]
    ev = findings[0].evidence
    assert ev["kl_first_step"] == 0.24 and ev["kl_median"] == 0.25 and ev["clip_median"] == 0.45 and (ev["clip_min"], ev["clip_max"]) == (0.34, 0.63)
    assert "dropout" in findings[0].message and "disable_dropout=True" in findings[0].message and "45%" in findings[0].message
    # the same KL with a quiet update (clip share 0.05): the cause is told, as information
    quiet = [{**r, "trl/clip_ratio/region_mean": 0.05} for r in rows]
    assert [(f.detector, f.severity) for f in run_detectors(quiet, [])] == [("kl_at_start", "info")]
    # 0.004 nats/token at step 1 is rounding (≤ 0.01); a log whose first row is step 5 (logging_steps = 5) saw updates
    assert run_detectors([{**r, "kl/k1_token_mean": 0.004} for r in quiet], []) == []
    assert run_detectors([{**r, "step": r["step"] + 4} for r in rows], []) == []
    # step 0 is analyze's reference-vs-itself row: not a training step
    assert run_detectors([{"step": 0, "kl/k1_token_mean": 0.0}, *[{**r, "step": r["step"] * 10} for r in rows]], []) == []


def _short_response_kl(level):
    """Per-token KL rising linearly to `level` on 3-token responses: the sequence KL (3 × level) stays under the 10-nat budget."""
    curve = lambda p: level * p  # noqa: E731
    return dict(kl__token_mean=curve, kl__k1_token_mean=curve, kl__k3_token_mean=curve, kl__exact_token_mean=curve,
                kl__seq_mean=lambda p: 3 * level * p, kl__exact_seq_mean=lambda p: 3 * level * p)


def test_kl_per_token_over_budget_on_short_responses():
    # exact per-token KL (no noise in make_history) 1.4·p over 60 steps: the end window is the last 6 steps, p = 54/59 … 59/59,
    # mean 1.4 × 56.5/59 = 1.3407 nats/token ≥ 0.5 (warning) and < 1.5 (3 × 0.5: critical); sequence KL ends at 4.0 < 10
    findings = run_detectors(make_history(**_short_response_kl(1.4), reward__score_mean=lambda p: 2 * p), [])
    assert [(f.detector, f.severity) for f in findings] == [("kl_runaway", "warning")]
    assert findings[0].evidence["metric"] == "kl/exact_token_mean"
    assert findings[0].evidence["kl_token_end"] == pytest.approx(1.4 * 56.5 / 59)
    assert "1.34 nats per token" in findings[0].message
    # onset: the first step whose trailing 6-step mean, 1.4 × (i − 2.5)/59 at 0-based index i, is ≥ 0.5: i ≥ 23.57 → i = 24, step 25
    assert findings[0].step == 25
    critical = run_detectors(make_history(**_short_response_kl(2.0), reward__score_mean=lambda p: 2 * p), [])  # 2 × 56.5/59 = 1.915 ≥ 1.5
    assert [(f.detector, f.severity) for f in critical] == [("kl_runaway", "critical")]
    # 0.5 × 56.5/59 = 0.479 < 0.5: under the budget, nothing (the sequence KL, 1.5 nats, is far under 10)
    assert run_detectors(make_history(**_short_response_kl(0.5), reward__score_mean=lambda p: 2 * p), []) == []


def test_kl_per_token_from_the_checkpoints_fixed_prompts():
    # a training log whose KL looks healthy (0.04 nats/token) and checkpoints measured on fixed prompts (analyze's fixed/ keys)
    history = make_history(n=20)
    for step, kl in ((0, 0.0), (10, 0.3), (20, 0.7)):
        row = next((r for r in history if r["step"] == step), None)
        if row is None:
            history.insert(0, row := {"step": step})
        row["fixed/kl/k1_token_mean"] = kl
    findings = run_detectors(history, [])
    assert [(f.detector, f.severity) for f in findings] == [("kl_runaway", "warning")]
    # the last checkpoint's 0.7 nats/token, 1.4× the budget, crossed at checkpoint 20 (10 was at 0.3)
    assert findings[0].evidence == {"metric": "fixed/kl/k1_token_mean", "kl_token_end": 0.7, "kl_token_budget": 0.5, "source": "fixed prompts, checkpoint 20"}
    assert findings[0].step == 20 and "1.4× the 0.5-nat/token budget" in findings[0].message
    history[-1]["fixed/kl/k1_token_mean"] = 0.45  # under the budget at the last checkpoint: nothing
    assert run_detectors(history, []) == []


# ---------------------------------------------------------------- the registry (analysis.detectors)


def test_registry_composes_each_familys_thresholds_into_one_object():
    import dataclasses

    from policyshift.analysis.detectors import DETECTORS, FAMILIES, common

    assert list(DETECTORS) == ["kl_negative", "kl_flat", "kl_runaway", "kl_at_start", "no_reference_kl", "reward_hacking", "length_drift", "truncation",
                               "repetition_rise", "entropy_collapse", "mode_collapse", "ppo_instability", "zero_spread", "degenerate_groups",
                               "rollout_mismatch", "new_phrase", "probe_change"]
    names = [f.name for f in dataclasses.fields(DetectorThresholds)]
    owned = [f.name for m in (common, *FAMILIES) for f in dataclasses.fields(m.Thresholds)]
    assert names == owned and len(set(names)) == len(names)
    t = DetectorThresholds()
    assert (t.min_steps, t.kl_budget, t.new_phrase_min_z, t.probe_directions) == (8, 10.0, 3.0, {})
    # the config keys users set keep working; overrides win over the config
    assert DetectorThresholds.from_config({"analysis": {"kl_budget": 4}}).kl_budget == 4.0
    assert DetectorThresholds.from_config({"analysis": {"kl_budget": 0}}).kl_budget == 10.0
    assert DetectorThresholds.from_config({"analysis": {"kl_budget": 4}}, kl_budget=2.0, min_steps=4).kl_budget == 2.0


def test_one_severity_order():
    from policyshift.analysis.findings import SEVERITIES, at_least

    assert SEVERITIES == ("critical", "warning", "info")
    assert at_least("critical", "warning") and at_least("warning", "warning") and not at_least("info", "warning")
    assert not at_least("warning", "critical")
    found = sort_findings([Finding("b", "info", 1, "", {}), Finding("a", "warning", 5, "", {}), Finding("c", "critical", 9, "", {})])
    assert [f.severity for f in found] == ["critical", "warning", "info"]


def test_live_reference_row_is_the_offline_step_0():
    """The trainer's history starts at step 1 and gives the reference's probe scores as `reference`: the same
    findings as the offline history that holds the step-0 row."""
    ref = {"step": 0, "probe/ifeval": 0.6, "probe/ifeval_se": 0.02}
    training = [{"step": s, "reward/score_mean": 0.0} for s in range(1, 11)]
    training[-1].update({"probe/ifeval": 0.4, "probe/ifeval_se": 0.03})
    live = run_detectors(training, [], reference=ref)
    assert [f.detector for f in live] == ["probe_change"]
    assert live == run_detectors([ref, *training], [])
    assert run_detectors(training, []) == []  # without the reference there is nothing to compare with


def test_new_phrase_thresholds_are_the_familys_own():
    from policyshift.analysis.detectors.new_phrase import detect_new_phrases

    ref = [{"step": 0, "model": "reference", "prompt_id": i, "response": f"word{i} here"} for i in range(10)]
    pol = [{"step": 5, "model": "policy", "prompt_id": i, "response": f"word{i} here truly amazing"} for i in range(10)]
    assert detect_new_phrases([], ref + pol, DetectorThresholds()) == []  # z ≈ 1.7 on 10 responses: below the default 3
    assert [f.detector for f in detect_new_phrases([], ref + pol, DetectorThresholds(new_phrase_min_z=1.5))] == ["new_phrase"]
    assert detect_new_phrases([], ref + pol, DetectorThresholds(new_phrase_min_z=1.5, new_phrase_min_responses=11)) == []


# ---- the live run's history: columns kept as it grows ------------------------------------------------------


def test_a_live_history_reads_as_the_plain_rows_it_holds():
    """The trainer's History (columns kept between the detectors' reads, so each read costs only the new rows) gives the
    same series, keys and findings as a list of the same rows — with its last row changed after a read (a step's probe
    scores join it after the evaluation), and cut back (a resume)."""
    from policyshift.analysis.runlog import History, history_keys, metric_series

    rows = make_history(n=120, seed=3, reward__score_mean=lambda p: 4 * p)  # a rising reward: findings to compare
    live = History()
    for i, row in enumerate(rows, 1):
        live.append(dict(row))
        if i % 10 == 0 or i == len(rows):
            plain = [dict(r) for r in live]
            for key in ("reward/score_mean", "kl/seq_mean", "step", "probe/mine"):
                for got, want in zip(metric_series(live, key), metric_series(plain, key)):
                    np.testing.assert_array_equal(got, want)
            assert history_keys(live) == history_keys(plain)
            assert [f.log_row() for f in run_detectors(live, [])] == [f.log_row() for f in run_detectors(plain, [])]
            live[-1]["probe/mine"] = float(i)  # after the read: the next one must see it
    assert len(metric_series(live, "probe/mine")[0]) == 12 and "probe/mine" in history_keys(live)
    live.append({"step": 121})  # a last row without the keys: the kept columns themselves are what a read returns
    for key in ("reward/score_mean", "probe/mine"):  # ... and they cannot be changed through it
        values = metric_series(live, key)[1]
        with pytest.raises(ValueError):
            values[0] = 1e9
        assert metric_series(live, key)[1][0] != 1e9
    live.pop()
    del live[60:]  # cut back, then grown again with other values
    live.extend({"step": s, "reward/score_mean": -1.0} for s in range(61, 71))
    steps, values = metric_series(live, "reward/score_mean")
    assert steps.tolist() == list(range(1, 71)) and values[-10:].tolist() == [-1.0] * 10
