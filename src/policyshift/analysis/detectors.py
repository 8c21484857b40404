"""Detectors of RLHF pathologies over a run's logs: reward hacking, KL runaway, collapse, PPO blow-ups.

Every detector is a pure function (history, samples, thresholds, distributions) -> list[Finding]:
`history` is the metrics.jsonl rows ordered by step, `samples` the fixed-prompt evaluation rows,
`distributions` the per-step score/KL/length lists. They compare a window at the *end* of the run
with a window at its *start* (or fit slopes), never single steps, and stay silent until the run has
`min_steps` logged steps: a per-step batch is noisy, and a 1–3 step run has no trend to diagnose.
Rewards are compared in units of the batch reward std at the start, so thresholds do not depend on
the reward model's scale.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np

from policyshift import keys as K
from policyshift.analysis.runlog import as_float, config_get, metric_series
from policyshift.analysis.textstats import mode_collapse_score
from policyshift.analysis.phrases import detect_new_phrases
from policyshift.analysis.probe_verdict import detect_probe_change
from policyshift.analysis.probe_verdict import directions as probe_directions

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    detector: str
    severity: str  # "info" | "warning" | "critical"
    step: int  # when the condition set in (or the step it was observed at)
    message: str  # one sentence: what happened, the evidence numbers, and what it suggests
    evidence: dict

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DetectorThresholds:
    """Every threshold the detectors use. Rewards are in units of the start's batch reward std (σ)."""

    # -- shared --
    min_steps: int = 8  # trend detectors stay silent on shorter runs
    window_frac: float = 0.1  # start/end windows are this fraction of the run ...
    min_window: int = 3  # ... but at least this many steps
    significance_t: float = 3.0  # |t| a mean must exceed to count as "significantly" non-zero

    # -- kl_negative: mean sampled k1 over the last kl_negative_window steps --
    kl_negative_window: int = 20
    kl_negative_min_steps: int = 5
    kl_negative_tol: float = 0.01  # nats/token below zero before it matters (warning)
    kl_negative_critical: float = 0.1  # nats/token below zero: the penalty now *rewards* drifting

    # -- kl_flat: KL ~0 and reward flat = not learning --
    kl_flat_min_steps: int = 20  # early flatness is normal; only judge a run that had time to move
    kl_flat_max: float = 1e-3  # nats/token
    reward_flat_effect: float = 0.1  # σ; reward gain below this is "flat"

    # -- kl_runaway --
    kl_budget: float = 10.0  # sequence KL (nats) the run may spend; config analysis.kl_budget overrides
    kl_budget_critical_factor: float = 3.0  # end KL above budget × this is critical
    kl_accel_ratio: float = 3.0  # 2nd-half KL slope / 1st-half slope counting as "accelerating"
    kl_accel_min_rise_frac: float = 0.25  # ... and the 2nd half must add ≥ this × budget nats
    reward_stagnant_effect: float = 0.1  # σ gained over the 2nd half below this is "stagnating"

    # -- reward_hacking --
    hacking_min_proxy_gain: float = 0.3  # σ: proxy reward must have risen at least this much
    gold_flat_effect: float = 0.1  # σ_gold: gold gain below this while proxy rises → warning
    gold_drop_effect: float = 0.25  # σ_gold: gold falling this much below its start → critical
    gold_peak_drop_effect: float = 0.5  # σ_gold: gold this far below its own peak → critical
    ref_logprob_drop: float = 1.0  # nats/token fall of log π_ref(response) → warning; 2× → critical
    length_corr_min: float = 0.5  # within-batch corr(score, length) that makes length suspicious
    length_change_min: float = 1.2  # length ratio (either way) for length to explain the gain
    length_explained_min: float = 0.5  # fraction of the proxy gain the length change explains

    # -- length_drift --
    length_ratio_warning: float = 1.5  # end/start mean length (or its inverse)
    length_ratio_critical: float = 3.0
    eos_collapse_frac: float = 0.5  # end EOS rate below this × start → warning
    eos_critical_rate: float = 0.05  # end EOS rate below this (from a start ≥ 0.3) → critical

    # -- repetition_rise --
    rep_rise_abs: float = 0.1  # rep_ngram_rate must rise by this much ...
    rep_rise_factor: float = 2.0  # ... and to this × its start
    rep_critical: float = 0.3  # rep_ngram_rate at the end that makes it critical
    distinct_fall_ratio: float = 0.6  # distinct_2 end/start below this → warning
    distinct_critical_ratio: float = 0.3

    # -- entropy_collapse --
    entropy_ratio_warning: float = 0.3  # end/start policy entropy
    entropy_ratio_critical: float = 0.1
    entropy_min_start: float = 0.05  # nats; a near-greedy start has no entropy to lose

    # -- mode_collapse (eval samples) --
    mode_collapse_min_prompts: int = 3
    mode_collapse_warning: float = 0.5  # mean pairwise 3-gram Jaccard across prompts
    mode_collapse_critical: float = 0.8
    mode_collapse_min_rise: float = 0.3  # over the reference's score at step 0

    # -- ppo_instability: fraction of the last ppo_window steps past each limit --
    ppo_window: int = 10
    ppo_min_steps: int = 5
    ppo_persist_frac: float = 0.5
    clip_frac_max: float = 0.3
    ratio_var_max: float = 0.1  # ratio std ≈ 0.3
    explained_variance_min: float = -0.5  # (a critic-free run logs no explained variance: that check stays silent)

    # -- zero_spread: groups whose n scores are all equal (no learning signal under a group baseline) --
    zero_spread_warning: float = 0.5  # end-window fraction of such groups → warning
    zero_spread_critical: float = 0.9
    zero_spread_rise: float = 0.2  # ... and it rose at least this much since the start (a flat-from-the-start task is another problem)

    # -- probe_change (analysis.probe_verdict): each probe suite's direction, from the run's analysis.probes --
    probe_directions: dict = field(default_factory=dict)  # {suite: higher_is_better}

    @classmethod
    def from_config(cls, config: dict | None, **overrides) -> "DetectorThresholds":
        """Defaults, with the run's `analysis.kl_budget` if its config sets one."""
        values = {}
        budget = as_float(config_get(config or {}, "analysis.kl_budget"))
        if math.isfinite(budget) and budget > 0:
            values["kl_budget"] = budget
        values["probe_directions"] = probe_directions(config or {})
        values.update(overrides)
        return cls(**values)


# ---------------------------------------------------------------------------- helpers


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "n/a"


def _window(n: int, t: DetectorThresholds) -> int:
    """Start/end window length for a series of n points (never overlapping when n ≥ 2)."""
    return max(1, min(max(t.min_window, round(t.window_frac * n)), n // 2 if n >= 2 else 1))


def _start_end(values: np.ndarray, t: DetectorThresholds) -> tuple[float, float]:
    w = _window(len(values), t)
    return float(values[:w].mean()), float(values[-w:].mean())


def _first_series(history: list[dict], keys: Iterable[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """The first of `keys` the history actually logged (most points wins ties in preference order)."""
    best = (np.array([]), np.array([]), "")
    for key in keys:
        steps, values = metric_series(history, key)
        if len(values) > len(best[1]):
            best = (steps, values, key)
    return best


def _rolling_mean(values: np.ndarray, w: int) -> np.ndarray:
    """Trailing mean over up to w points (shorter at the start)."""
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - w)
    return (cumulative[idx] - cumulative[lo]) / (idx - lo)


def _onset_step(steps: np.ndarray, values: np.ndarray, crossed: Callable[[float], bool], w: int) -> int:
    """First step of the trailing run of (smoothed) values that satisfy `crossed`: when it set in."""
    flags = [crossed(v) for v in _rolling_mean(values, w)]
    i = len(flags)
    while i > 0 and flags[i - 1]:
        i -= 1
    return int(steps[min(i, len(steps) - 1)])


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0
    return float(np.polyfit(x, y, 1)[0])


def _welch_t(a: np.ndarray, b: np.ndarray) -> float:
    """t statistic of mean(b) − mean(a); ±inf when both groups are noise-free."""
    diff = float(np.mean(b) - np.mean(a))
    var = (np.var(a, ddof=1) / len(a) if len(a) > 1 else 0.0) + (np.var(b, ddof=1) / len(b) if len(b) > 1 else 0.0)
    if var <= 0:
        return math.copysign(math.inf, diff) if diff else 0.0
    return diff / math.sqrt(var)


def _reward_scale(history: list[dict], t: DetectorThresholds) -> float:
    """σ: the batch reward std at the start of the run (fallback: spread of the step means)."""
    _, stds = metric_series(history, K.SCORE_STD)
    if len(stds):
        scale = float(stds[: _window(len(stds), t)].mean())
    else:
        _, means = metric_series(history, K.SCORE_MEAN)
        scale = float(np.std(means)) if len(means) > 1 else 1.0
    return scale if scale > 1e-8 else 1.0


def _proxy_gain(history: list[dict], t: DetectorThresholds) -> tuple[float, float, float]:
    """(gain in σ, start mean, end mean) of the proxy reward; NaN gain before min_steps."""
    _, reward = metric_series(history, K.SCORE_MEAN)
    if len(reward) < t.min_steps:
        return math.nan, math.nan, math.nan
    start, end = _start_end(reward, t)
    return (end - start) / _reward_scale(history, t), start, end


def _last_step(history: list[dict]) -> int:
    steps = [as_float(row.get("step")) for row in history]
    finite = [s for s in steps if math.isfinite(s)]
    return int(max(finite)) if finite else 0


def _eval_groups(samples: list[dict]) -> dict[int, list[dict]]:
    """Samples grouped by eval step (step 0 = the reference), steps ascending."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for row in samples:
        step = as_float(row.get("step"))
        if math.isfinite(step):
            groups[int(step)].append(row)
    return dict(sorted(groups.items()))


def _finite_array(values: Iterable) -> np.ndarray:
    arr = np.array([as_float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def _sample_values(rows: list[dict], key: str) -> np.ndarray:
    return _finite_array(row.get(key) for row in rows)


# ---------------------------------------------------------------------------- detectors


def detect_kl_negative(history, samples, t: DetectorThresholds, distributions=()) -> list[Finding]:
    # k1 = log π/π_ref sampled from π is unbiased for a non-negative KL: a significantly negative
    # mean means the samples did not come from the π whose log-probs were scored.
    steps, k1, key = _first_series(history, [K.KL_K1_TOKEN_MEAN, K.KL_TOKEN_MEAN])
    if len(k1) < t.kl_negative_min_steps:
        return []
    recent = k1[-t.kl_negative_window :]
    mean = float(recent.mean())
    se = float(recent.std(ddof=1) / math.sqrt(len(recent))) if len(recent) > 1 else math.inf
    t_stat = mean / se if se > 0 else (-math.inf if mean < 0 else 0.0)
    if not (mean < -t.kl_negative_tol and t_stat < -t.significance_t):
        return []
    severity = "critical" if mean < -t.kl_negative_critical else "warning"
    message = (
        f"The sampled KL ({key}) averaged {_fmt(mean)} nats/token over the last {len(recent)} steps "
        f"(t = {_fmt(t_stat)}), but a true KL is never negative: responses are probably not sampled "
        f"from the scored policy (top-k/top-p or temperature ≠ 1 at generation, or misaligned log-probs)."
    )
    evidence = {"metric": key, "mean": mean, "t_stat": t_stat, "window": len(recent)}
    _, exact = metric_series(history, K.KL_EXACT_TOKEN_MEAN)
    if len(exact):
        evidence["exact_token_mean"] = float(exact[-t.kl_negative_window :].mean())
    return [Finding("kl_negative", severity, int(steps[-len(recent)]), message, evidence)]


def detect_kl_flat(history, samples, t: DetectorThresholds, distributions=()) -> list[Finding]:
    steps, kl, key = _first_series(history, [K.KL_EXACT_TOKEN_MEAN, K.KL_K1_TOKEN_MEAN, K.KL_TOKEN_MEAN])
    gain, start, end = _proxy_gain(history, t)
    if len(kl) < t.kl_flat_min_steps or len(steps) < t.kl_flat_min_steps or not math.isfinite(gain):
        return []
    _, kl_end = _start_end(kl, t)
    if not (abs(kl_end) < t.kl_flat_max and gain < t.reward_flat_effect):
        return []
    message = (
        f"After {len(kl)} steps the KL to the reference is still {_fmt(kl_end)} nats/token ({key}) and "
        f"reward moved {gain:+.2f}σ ({_fmt(start)} → {_fmt(end)}): the policy is not learning "
        f"(β too high, learning rate too low, or no gradient reaching the policy)."
    )
    evidence = {"metric": key, "kl_end": kl_end, "reward_gain_sigma": gain, "reward_start": start, "reward_end": end}
    return [Finding("kl_flat", "warning", int(steps[-1]), message, evidence)]


def detect_kl_runaway(history, samples, t: DetectorThresholds, distributions=()) -> list[Finding]:
    steps, kl, key = _first_series(history, [K.KL_SEQ_MEAN, K.KL_EXACT_SEQ_MEAN])
    if len(kl) < t.min_steps:
        return []
    w = _window(len(kl), t)
    _, kl_end = _start_end(kl, t)
    _, reward = metric_series(history, K.SCORE_MEAN)
    half = len(kl) // 2
    scale = _reward_scale(history, t)
    # Reward gained over the second half, from a line fit: robust to one noisy end window.
    recent_gain = math.nan
    if len(reward) >= t.min_steps:
        r_steps = np.arange(len(reward), dtype=float)[len(reward) // 2 :]
        recent_gain = _slope(r_steps, reward[len(reward) // 2 :]) * max(np.ptp(r_steps), 1.0) / scale
    stagnant = not (recent_gain >= t.reward_stagnant_effect)  # NaN (no reward logged) counts as stagnant
    reward_note = "reward stagnating" if stagnant else "reward still rising"
    evidence = {"metric": key, "kl_end": kl_end, "kl_budget": t.kl_budget, "reward_gain_2nd_half_sigma": recent_gain}

    if kl_end > t.kl_budget:
        if kl_end > t.kl_budget * t.kl_budget_critical_factor:
            severity = "critical"
        else:
            severity = "warning" if stagnant else "info"
        onset = _onset_step(steps, kl, lambda v: v > t.kl_budget, w)
        message = (
            f"Sequence KL reached {_fmt(kl_end)} nats, {kl_end / t.kl_budget:.1f}× the {_fmt(t.kl_budget)}-nat budget "
            f"({reward_note}, {recent_gain:+.2f}σ over the second half): raise β or lower the learning rate, "
            f"or stop and keep an earlier checkpoint."
        )
        return [Finding("kl_runaway", severity, onset, message, evidence)]

    first_slope = _slope(steps[:half], kl[:half])
    second_slope = _slope(steps[half:], kl[half:])
    second_rise = second_slope * float(np.ptp(steps[half:]))
    accelerating = second_slope > t.kl_accel_ratio * max(first_slope, 1e-12) and second_rise > t.kl_accel_min_rise_frac * t.kl_budget
    if not (accelerating and stagnant):
        return []
    evidence.update({"slope_first_half": first_slope, "slope_second_half": second_slope, "rise_second_half": second_rise})
    message = (
        f"Sequence KL is accelerating (slope {_fmt(first_slope)} → {_fmt(second_slope)} nats/step, +{_fmt(second_rise)} nats "
        f"in the second half, now {_fmt(kl_end)}) while reward stagnates ({recent_gain:+.2f}σ): the policy is drifting "
        f"without gaining reward; raise β or lower the learning rate."
    )
    return [Finding("kl_runaway", "warning", int(steps[half]), message, evidence)]


def _gold_sample_scale(history, samples, distributions, w: int) -> float:
    """σ_gold: the per-sample gold std at the start. The per-step means' own spread is no substitute
    (it is σ/√batch, and includes the trend), so fall back through every per-sample source first."""
    _, gold_std = metric_series(history, K.GOLD_STD)
    if len(gold_std):
        return float(gold_std[:w].mean())
    first_rows = [row.get("gold_scores") for row in distributions[:w] if isinstance(row.get("gold_scores"), list)]
    pooled = _finite_array(v for rows in first_rows for v in rows)
    if pooled.size > 1:
        return float(pooled.std())
    reference = _sample_values(_eval_groups(samples).get(0, []), "gold_score")
    if reference.size > 1:
        return float(reference.std(ddof=1))
    _, gold = metric_series(history, K.GOLD_MEAN)
    return float(np.std(gold))


def _gold_history(history, samples, t: DetectorThresholds, distributions):
    """Start/end/peak gold reward from the per-step history, or None if it was not logged."""
    steps, gold = metric_series(history, K.GOLD_MEAN)
    if len(gold) < t.min_steps:
        return None
    w = _window(len(gold), t)
    start_vals, end_vals = gold[:w], gold[-w:]
    scale = _gold_sample_scale(history, samples, distributions, w)
    smooth = _rolling_mean(gold, w)
    # The peak window must end before the end window starts, or the two share their noise.
    peak_idx = int(np.argmax(smooth[: len(gold) - w])) if len(gold) > w else len(gold) - 1
    # Per-step noise from first differences (insensitive to the trend): SE of a w-step mean is that / √w.
    step_noise = float(np.std(np.diff(gold)) / math.sqrt(2)) if len(gold) > 2 else 0.0
    return {
        "source": "history reward/gold_mean",
        "start": float(start_vals.mean()),
        "end": float(end_vals.mean()),
        "peak": float(smooth[peak_idx]),
        "peak_step": int(steps[peak_idx]),
        "drop_se": step_noise * math.sqrt(2.0 / w),  # SE of (peak window mean − end window mean)
        "t_stat": _welch_t(start_vals, end_vals),
        "scale": scale if scale > 1e-8 else 1.0,
        "end_step": int(steps[-1]),
    }


def _gold_samples(samples):
    """Start (reference, step 0) / end / peak gold reward on the fixed eval prompts, or None."""
    groups = {step: _sample_values(rows, "gold_score") for step, rows in _eval_groups(samples).items()}
    groups = {step: vals for step, vals in groups.items() if vals.size}
    if 0 not in groups or len(groups) < 3:  # the reference plus at least two policy evals
        return None
    steps = sorted(groups)
    start_vals, end_vals = groups[0], groups[steps[-1]]
    means = {step: float(groups[step].mean()) for step in steps}
    peak_step = max(steps[:-1], key=means.get)

    def se(vals: np.ndarray) -> float:
        return float(vals.std(ddof=1) / math.sqrt(vals.size)) if vals.size > 1 else 0.0

    scale = float(start_vals.std(ddof=1)) if start_vals.size > 1 else 1.0
    return {
        "source": "eval samples gold_score",
        "start": means[0],
        "end": means[steps[-1]],
        "peak": means[peak_step],
        "peak_step": peak_step,
        "drop_se": math.hypot(se(groups[peak_step]), se(end_vals)),
        "t_stat": _welch_t(start_vals, end_vals),
        "scale": scale if scale > 1e-8 else 1.0,
        "end_step": steps[-1],
    }


def _check_gold(history, samples, t, distributions, proxy_gain) -> list[Finding]:
    gold = _gold_history(history, samples, t, distributions) or _gold_samples(samples)
    if gold is None:
        return []
    gain = (gold["end"] - gold["start"]) / gold["scale"]
    from_peak = (gold["peak"] - gold["end"]) / gold["scale"]
    evidence = {**gold, "proxy_gain_sigma": proxy_gain, "gold_gain_sigma": gain, "gold_below_peak_sigma": from_peak}
    falling = gain <= -t.gold_drop_effect and gold["t_stat"] <= -2.0
    past_peak = (
        gold["peak_step"] < gold["end_step"]
        and from_peak >= t.gold_peak_drop_effect
        and gold["peak"] - gold["end"] > t.significance_t * gold["drop_se"]
    )
    if falling or past_peak:
        what = (
            f"gold fell {gain:+.2f}σ ({_fmt(gold['start'])} → {_fmt(gold['end'])})"
            if falling
            else f"gold fell {from_peak:.2f}σ below its peak {_fmt(gold['peak'])} at step {gold['peak_step']} (now {_fmt(gold['end'])})"
        )
        message = (
            f"Reward hacking: the proxy reward rose {proxy_gain:+.2f}σ while {what} ({gold['source']}): the policy is "
            f"exploiting the reward model; stop and keep the checkpoint near the gold peak, raise β, or fix the reward."
        )
        return [Finding("reward_hacking", "critical", gold["end_step"], message, evidence)]
    if gain < t.gold_flat_effect:
        message = (
            f"The proxy reward rose {proxy_gain:+.2f}σ but gold reward did not follow ({gain:+.2f}σ, "
            f"{_fmt(gold['start'])} → {_fmt(gold['end'])}, {gold['source']}): gains may not be real; inspect samples, raise β."
        )
        return [Finding("reward_hacking", "warning", gold["end_step"], message, evidence)]
    return []


def _check_ref_logprob(samples, t, proxy_gain) -> list[Finding]:
    groups = {step: _sample_values(rows, "ref_logprob_mean") for step, rows in _eval_groups(samples).items()}
    groups = {step: vals for step, vals in groups.items() if vals.size}
    if 0 not in groups or len(groups) < 2:
        return []
    last = max(groups)
    start, end = float(groups[0].mean()), float(groups[last].mean())
    drop = start - end
    if drop < t.ref_logprob_drop:
        return []
    severity = "critical" if drop >= 2 * t.ref_logprob_drop else "warning"
    message = (
        f"The reference model finds the policy's outputs far less likely (mean log π_ref {_fmt(start)} → {_fmt(end)} "
        f"nats/token, perplexity ×{math.exp(drop):.1f}) while the proxy reward rose {proxy_gain:+.2f}σ: outputs are "
        f"drifting off-distribution in ways the reward model pays for; read the samples, raise β."
    )
    evidence = {"ref_logprob_start": start, "ref_logprob_end": end, "drop": drop, "proxy_gain_sigma": proxy_gain}
    return [Finding("reward_hacking", severity, last, message, evidence)]


def _score_length_groups(samples, t, distributions) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scores, lengths) batches from the end of the run: training distributions, else eval samples."""
    groups = []
    rows = list(distributions)
    for row in rows[-_window(len(rows), t) :] if rows else []:
        scores = np.array([as_float(v) for v in row.get("scores") or []], dtype=float)
        lengths = np.array([as_float(v) for v in row.get("lengths") or []], dtype=float)
        if scores.size and scores.size == lengths.size:
            groups.append((scores, lengths))
    if not groups:
        evals = [(s, rows) for s, rows in _eval_groups(samples).items() if s > 0]
        for _, eval_rows in evals[-t.min_window :]:
            scores = np.array([as_float(r.get("score")) for r in eval_rows], dtype=float)
            lengths = np.array([as_float(r.get("length")) for r in eval_rows], dtype=float)
            groups.append((scores, lengths))
    return groups


def _check_length(history, samples, t, distributions, proxy_gain, proxy_start, proxy_end) -> list[Finding]:
    _, length = metric_series(history, K.LENGTH_MEAN)
    if len(length) < t.min_steps:
        return []
    len_start, len_end = _start_end(length, t)
    if len_start <= 0 or abs(math.log(max(len_end, 1e-9) / len_start)) < math.log(t.length_change_min):
        return []
    # Within-batch association only: centring each batch removes the run-level trends, which would
    # make length and reward look correlated whenever both merely change over training.
    xs, ys = [], []
    for scores, lengths in _score_length_groups(samples, t, distributions):
        keep = np.isfinite(scores) & np.isfinite(lengths)
        if keep.sum() >= 3:
            xs.append(lengths[keep] - lengths[keep].mean())
            ys.append(scores[keep] - scores[keep].mean())
    if not xs:
        return []
    x, y = np.concatenate(xs), np.concatenate(ys)
    if x.size < 10 or x.std() == 0 or y.std() == 0:
        return []
    corr = float(np.corrcoef(x, y)[0, 1])
    slope = float(np.dot(x, y) / np.dot(x, x))
    explained = slope * (len_end - len_start) / (proxy_end - proxy_start) if proxy_end != proxy_start else math.nan
    if not (corr >= t.length_corr_min and explained >= t.length_explained_min):
        return []
    message = (
        f"Reward tracks length (within-batch corr {corr:.2f}) and mean length went {_fmt(len_start)} → {_fmt(len_end)} "
        f"tokens, which explains {explained:.0%} of the {proxy_gain:+.2f}σ proxy gain: the reward model is paying for "
        f"length; add a length penalty or fix the reward."
    )
    evidence = {"corr_score_length": corr, "slope_per_token": slope, "length_start": len_start, "length_end": len_end, "explained_fraction": explained, "n": int(x.size)}
    return [Finding("reward_hacking", "warning", _last_step(history), message, evidence)]


def detect_reward_hacking(history, samples, t: DetectorThresholds, distributions=()) -> list[Finding]:
    proxy_gain, proxy_start, proxy_end = _proxy_gain(history, t)
    if not proxy_gain >= t.hacking_min_proxy_gain:  # the proxy must actually be going up
        return []
    return (
        _check_gold(history, samples, t, distributions, proxy_gain)
        + _check_ref_logprob(samples, t, proxy_gain)
        + _check_length(history, samples, t, distributions, proxy_gain, proxy_start, proxy_end)
    )


def detect_length_drift(history, samples, t: DetectorThresholds, distributions=()) -> list[Finding]:
    findings = []
    steps, length = metric_series(history, K.LENGTH_MEAN)
    if len(length) >= t.min_steps:
        start, end = _start_end(length, t)
        ratio = end / start if start > 0 else math.nan
        if math.isfinite(ratio) and ratio > 0:
            far = max(ratio, 1 / ratio)
            if far >= t.length_ratio_warning:
                severity = "critical" if far >= t.length_ratio_critical else "warning"
                grew = ratio > 1
                onset = _onset_step(steps, length / start, (lambda v: v >= t.length_ratio_warning) if grew else (lambda v: v <= 1 / t.length_ratio_warning), _window(len(length), t))
                message = (
                    f"Mean response length {'grew' if grew else 'shrank'} {ratio:.2f}× ({_fmt(start)} → {_fmt(end)} tokens): "
                    f"check whether the reward pays for length (see reward vs length) and add a length penalty or raise β."
                )
                findings.append(Finding("length_drift", severity, onset, message, {"length_start": start, "length_end": end, "ratio": ratio}))
    steps, eos = metric_series(history, K.EOS_RATE)
    if len(eos) >= t.min_steps:
        start, end = _start_end(eos, t)
        if start > 0 and end < t.eos_collapse_frac * start:
            severity = "critical" if end < t.eos_critical_rate and start >= 0.3 else "warning"
            message = (
                f"The EOS rate collapsed from {start:.0%} to {end:.0%}: responses stop ending and run into the length "
                f"limit (often rambling or loops the reward model tolerates); raise β or penalise truncation."
            )
            onset = _onset_step(steps, eos, lambda v: v < t.eos_collapse_frac * start, _window(len(eos), t))
            findings.append(Finding("length_drift", severity, onset, message, {"eos_start": start, "eos_end": end}))
    return findings


def detect_repetition_rise(history, samples, t: DetectorThresholds, distributions=()) -> list[Finding]:
    findings = []
    steps, rep = metric_series(history, K.REP_NGRAM_RATE)
    if len(rep) >= t.min_steps:
        start, end = _start_end(rep, t)
        if end - start >= t.rep_rise_abs and end >= t.rep_rise_factor * start:
            severity = "critical" if end >= t.rep_critical else "warning"
            onset = _onset_step(steps, rep, lambda v: v - start >= t.rep_rise_abs, _window(len(rep), t))
            message = (
                f"Repeated 3-grams within responses rose from {start:.0%} to {end:.0%}: the policy is looping or "
                f"padding, which the reward model apparently tolerates; raise β, lower the LR, or penalise repetition."
            )
            findings.append(Finding("repetition_rise", severity, onset, message, {"rep_start": start, "rep_end": end}))
    steps, distinct = metric_series(history, K.DISTINCT_2)
    if len(distinct) >= t.min_steps:
        start, end = _start_end(distinct, t)
        if start > 0 and end / start <= t.distinct_fall_ratio:
            severity = "critical" if end / start <= t.distinct_critical_ratio else "warning"
            onset = _onset_step(steps, distinct / start, lambda v: v <= t.distinct_fall_ratio, _window(len(distinct), t))
            message = (
                f"Batch diversity fell: distinct-2 went {start:.2f} → {end:.2f} ({end / start:.0%} of the start), so "
                f"responses share ever more bigrams; raise β or the entropy of generation, and read the samples."
            )
            findings.append(Finding("repetition_rise", severity, onset, message, {"distinct_2_start": start, "distinct_2_end": end}))
    return findings


def detect_entropy_collapse(history, samples, t: DetectorThresholds, distributions=()) -> list[Finding]:
    steps, entropy = metric_series(history, K.ENTROPY)
    if len(entropy) < t.min_steps:
        return []
    start, end = _start_end(entropy, t)
    if start < t.entropy_min_start or end / start > t.entropy_ratio_warning:
        return []
    ratio = end / start
    severity = "critical" if ratio <= t.entropy_ratio_critical else "warning"
    onset = _onset_step(steps, entropy / start, lambda v: v <= t.entropy_ratio_warning, _window(len(entropy), t))
    message = (
        f"Policy entropy fell to {ratio:.0%} of its start ({_fmt(start)} → {_fmt(end)} nats/token): the policy is becoming "
        f"near-deterministic and will stop exploring; raise β, lower the LR, or add an entropy bonus."
    )
    return [Finding("entropy_collapse", severity, onset, message, {"entropy_start": start, "entropy_end": end, "ratio": ratio})]


def _collapse_by_step(samples: list[dict], t: DetectorThresholds) -> dict[int, float]:
    """mode_collapse_score of each eval step's responses (one per prompt)."""
    scores = {}
    for step, rows in _eval_groups(samples).items():
        by_prompt = {row.get("prompt_id", i): row.get("response") or "" for i, row in enumerate(rows)}
        if len(by_prompt) >= t.mode_collapse_min_prompts:
            scores[step] = mode_collapse_score(list(by_prompt.values()))
    return scores


def detect_mode_collapse(history, samples, t: DetectorThresholds, distributions=()) -> list[Finding]:
    scores = _collapse_by_step(samples, t)
    policy_steps = [s for s in scores if s > 0]
    if not policy_steps:
        return []
    last = policy_steps[-1]
    reference = scores.get(0, 0.0)
    current = scores[last]

    def collapsed(score: float) -> bool:
        return score >= t.mode_collapse_warning and score - reference >= t.mode_collapse_min_rise

    if not collapsed(current):
        return []
    onset = last
    for step in reversed(policy_steps):  # first eval step of the trailing collapsed stretch
        if not collapsed(scores[step]):
            break
        onset = step
    severity = "critical" if current >= t.mode_collapse_critical else "warning"
    message = (
        f"Mode collapse: the policy's answers to different eval prompts are near-identical (mean pairwise 3-gram "
        f"similarity {current:.2f} at step {last} vs {reference:.2f} for the reference); stop, and restart from an "
        f"earlier checkpoint with a higher β or lower LR."
    )
    evidence = {"score": current, "reference_score": reference, "by_step": {str(k): v for k, v in scores.items()}}
    return [Finding("mode_collapse", severity, onset, message, evidence)]


def detect_ppo_instability(history, samples, t: DetectorThresholds, distributions=()) -> list[Finding]:
    if len(history) < t.ppo_min_steps:
        return []
    recent = history[-t.ppo_window :]
    checks = [
        (K.CLIP_FRAC, lambda v: v > t.clip_frac_max, f"clip fraction > {t.clip_frac_max}"),
        (K.RATIO_VAR, lambda v: v > t.ratio_var_max, f"ratio variance > {t.ratio_var_max}"),
        (K.VALUE_EXPLAINED_VARIANCE, lambda v: v < t.explained_variance_min, f"value explained variance < {t.explained_variance_min}"),
    ]
    tripped, evidence = [], {"window": len(recent)}
    for key, bad, label in checks:
        _, values = metric_series(recent, key)
        if len(values) < t.ppo_min_steps:
            continue
        frac_bad = float(np.mean([bad(v) for v in values]))
        evidence[key] = {"mean": float(values.mean()), "fraction_of_steps": frac_bad}
        if frac_bad >= t.ppo_persist_frac:
            tripped.append(f"{label} in {frac_bad:.0%} of steps (mean {_fmt(float(values.mean()))})")
    if not tripped:
        return []
    _, approx_kl = metric_series(recent, K.APPROX_KL)
    if len(approx_kl):
        evidence["ppo/approx_kl_mean"] = float(approx_kl.mean())
    severity = "critical" if len(tripped) >= 2 else "warning"
    message = (
        f"PPO updates are unstable over the last {len(recent)} steps ({'; '.join(tripped)}): updates move the policy "
        f"too far per batch; lower the learning rate, the number of PPO epochs, or the clip range, and check the value head."
    )
    step = int(as_float(recent[0].get("step"))) if math.isfinite(as_float(recent[0].get("step"))) else _last_step(history)
    return [Finding("ppo_instability", severity, step, message, evidence)]


def detect_zero_spread(history, samples, t: DetectorThresholds, distributions=()) -> list[Finding]:
    """Group runs (num_generations > 1): the share of groups whose n rewards are all equal rises — all solved or
    all failed. Each such group has every advantage 0, so the batch's effective size shrinks toward nothing."""
    steps, frac = metric_series(history, K.GROUP_ZERO_SPREAD_FRAC)
    if len(frac) < t.min_steps:
        return []
    start, end = _start_end(frac, t)
    if end < t.zero_spread_warning or end - start < t.zero_spread_rise:
        return []
    severity = "critical" if end >= t.zero_spread_critical else "warning"
    onset = _onset_step(steps, frac, lambda v: v >= t.zero_spread_warning, _window(len(frac), t))
    message = (
        f"Groups without learning signal: the share of prompts whose samples all got the same reward rose "
        f"{start:.0%} → {end:.0%}, so their advantages are all 0 and the update learns from ever fewer prompts; "
        f"use harder (or easier) prompts, more generations per prompt or a higher temperature, or drop flat groups "
        f"and refill (dynamic sampling)."
    )
    evidence = {"start": start, "end": end, "key": K.GROUP_ZERO_SPREAD_FRAC}
    return [Finding("zero_spread", severity, onset, message, evidence)]


DETECTORS: dict[str, Callable[..., list[Finding]]] = {
    "kl_negative": detect_kl_negative,
    "kl_flat": detect_kl_flat,
    "kl_runaway": detect_kl_runaway,
    "reward_hacking": detect_reward_hacking,
    "length_drift": detect_length_drift,
    "repetition_rise": detect_repetition_rise,
    "entropy_collapse": detect_entropy_collapse,
    "mode_collapse": detect_mode_collapse,
    "ppo_instability": detect_ppo_instability,
    "zero_spread": detect_zero_spread,
    "new_phrase": detect_new_phrases,  # analysis.phrases
    "probe_change": detect_probe_change,  # analysis.probe_verdict
}


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first: critical before warning before info, then earliest step, then detector name."""
    return sorted(findings, key=lambda f: (SEVERITY_RANK.get(f.severity, 9), f.step, f.detector))


def run_detectors(history, samples, thresholds: DetectorThresholds | None = None, distributions=()) -> list[Finding]:
    """All detectors over a run's logs, worst finding first. `distributions` (distributions.jsonl
    rows) is optional: it sharpens the reward-vs-length check, which otherwise uses the eval samples."""
    t = thresholds or DetectorThresholds()
    history, samples, distributions = list(history or []), list(samples or []), list(distributions or [])
    findings = []
    for detect in DETECTORS.values():
        findings.extend(detect(history, samples, t, distributions))
    return sort_findings(findings)
