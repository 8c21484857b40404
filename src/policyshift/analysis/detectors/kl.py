"""KL to the reference: negative (samples not from the scored policy), flat (not learning), runaway (over the sequence
budget or accelerating while reward stagnates, or over the per-token budget), non-zero before the first update (the two log-probs computed differently: dropout)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policyshift import keys as K
from policyshift.analysis.detectors.common import fmt, window_len, start_end, first_series, onset_step, fit_slope, reward_scale, proxy_reward_gain
from policyshift.analysis.findings import SEVERITY_RANK, Advice, Finding
from policyshift.analysis.probe import FIXED_PREFIX
from policyshift.analysis.runlog import as_float, config_get, metric_series
from policyshift.config import AnalysisConfig

ORDER = 10

# What each detector here tells its reader (the detectors reference page and the report's findings panel read it).
ADVICE = {
    "kl_negative": Advice(
        detects=("The sampled KL to the reference going negative: k1 = log π/π_ref sampled from π estimates a KL that cannot be negative, so the samples did not come "
                 "from the policy whose log-probs were scored."),
        healthy="Mean k1 at or above 0, rising slowly from 0.",
        broken="Mean k1 over the last steps significantly below zero (t < −3); critical when it is so far below that the KL penalty now rewards drifting.",
        action=("Generation and scoring disagree: sample with temperature 1 and no top-k/top-p (or score the same warped distribution); check that policy and "
                "reference log-probs are aligned to the same tokens and masked the same way."),
    ),
    "kl_flat": Advice(
        detects="A run that is not learning: the policy stays at its reference (KL ≈ 0) and the reward does not rise.",
        healthy="KL rises slowly from 0 while the reward rises.",
        broken="After the first steps, KL at the end near 0 nats/token and reward gained under 0.1σ (warning).",
        action="Lower β, raise the learning rate, check that gradients reach the policy (frozen parameters, an LR schedule at 0).",
    ),
    "kl_runaway": Advice(
        detects=("The policy drifting from its reference faster than the run can afford: sequence KL past `analysis.kl_budget`, or accelerating while the "
                 "reward stalls, or KL per token past `kl_token_budget` (short responses stay under a sequence budget however far each token moved)."),
        healthy="Sequence KL rises slowly and stays within the budget while the reward rises; per-token KL under 0.5 nats (in the logs and on the checkpoints' fixed prompts).",
        broken=("End KL over budget with stagnant reward, or accelerating (warning); above 3× the budget (critical); over budget while the reward still rises is info. "
                "Per-token KL at the end ≥ `kl_token_budget` (0.5 nats/token) in the training log or at the last checkpoint, whatever the reward did (warning; "
                "critical at 3×)."),
        action="Raise β (or set the adaptive KL target lower), lower the LR or the PPO epochs; if already far past the budget, stop and keep an earlier checkpoint.",
    ),
    "kl_at_start": Advice(
        detects=("KL to the reference above ≈ 0 before the first update, when the policy still is its reference: the two log-probs are computed "
                 "differently (dropout left on in the policy's forward — TRL's default — or another precision or engine)."),
        healthy="Per-token KL at the first logged step ≈ 0 (below `kl_at_start_max`).",
        broken=("First-step KL above `kl_at_start_max` (info); a warning when the update also clips a median share ≥ `noisy_clip_share` per step, so "
                "the importance ratios are noise."),
        action=("Set disable_dropout=True (TRL) or the model's dropout to 0, and compute the policy's and reference's log-probs the same way; read "
                "the logged KL as inflated until then."),
    ),
}


@dataclass
class Thresholds:
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
    kl_budget: float = AnalysisConfig.kl_budget  # sequence KL (nats) the run may spend (10); config analysis.kl_budget overrides
    kl_budget_critical_factor: float = 3.0  # end KL above budget × this is critical
    kl_accel_ratio: float = 3.0  # 2nd-half KL slope / 1st-half slope counting as "accelerating"
    kl_accel_min_rise_frac: float = 0.25  # ... and the 2nd half must add ≥ this × budget nats
    reward_stagnant_effect: float = 0.1  # σ gained over the 2nd half below this is "stagnating"
    # per token, the unit that does not depend on response length: a 3-token response 1.4 nats/token from its reference
    # has a sequence KL of ~4 nats, under a 10-nat budget, yet each token is e^1.4 ≈ 4× likelier under the policy
    kl_token_budget: float = 0.5  # nats/token at the end (training log's end window, or the last checkpoint's fixed prompts) → warning
    kl_token_critical_factor: float = 3.0  # ... at this × kl_token_budget → critical

    # -- kl_at_start: before the first update the policy *is* its reference, so a per-token KL logged at step ≤ 1 is
    # 0 up to rounding; more means the two log-probs were computed differently (dropout left on in the policy's
    # forward — TRL's default — or another precision/engine) and every logged KL and importance ratio carries that noise --
    kl_at_start_max: float = 0.01  # nats/token at the first logged step (≤ 1) above which the log-probs disagree
    kl_at_start_min_steps: int = 5  # judged once the run has this many KL points (the median over them is evidence too)
    noisy_clip_share: float = 0.2  # median share clipped per step at or above which the ratios are noise (→ warning)


def from_config(config: dict) -> dict:
    """The run's `analysis.kl_budget`, when its config sets one (> 0)."""
    budget = as_float(config_get(config, "analysis.kl_budget"))
    return {"kl_budget": budget} if math.isfinite(budget) and budget > 0 else {}


def detect_kl_negative(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    # k1 = log π/π_ref sampled from π is unbiased for a non-negative KL: a significantly negative
    # mean means the samples did not come from the π whose log-probs were scored.
    steps, k1, key = first_series(history, [K.KL_K1_TOKEN_MEAN, K.KL_TOKEN_MEAN])
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
        f"The sampled KL ({key}) averaged {fmt(mean)} nats/token over the last {len(recent)} steps "
        f"(t = {fmt(t_stat)}), but a true KL is never negative: responses are probably not sampled "
        f"from the scored policy (top-k/top-p or temperature ≠ 1 at generation, or misaligned log-probs)."
    )
    evidence = {"metric": key, "mean": mean, "t_stat": t_stat, "window": len(recent)}
    _, exact = metric_series(history, K.KL_EXACT_TOKEN_MEAN)
    if len(exact):
        evidence["exact_token_mean"] = float(exact[-t.kl_negative_window :].mean())
    return [Finding("kl_negative", severity, int(steps[-len(recent)]), message, evidence)]


def detect_kl_flat(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    steps, kl, key = first_series(history, [K.KL_EXACT_TOKEN_MEAN, K.KL_K1_TOKEN_MEAN, K.KL_TOKEN_MEAN])
    gain, start, end = proxy_reward_gain(history, t)
    if len(kl) < t.kl_flat_min_steps or len(steps) < t.kl_flat_min_steps or not math.isfinite(gain):
        return []
    _, kl_end = start_end(kl, t)
    if not (abs(kl_end) < t.kl_flat_max and gain < t.reward_flat_effect):
        return []
    message = (
        f"After {len(kl)} steps the KL to the reference is still {fmt(kl_end)} nats/token ({key}) and "
        f"reward moved {gain:+.2f}σ ({fmt(start)} → {fmt(end)}): the policy is not learning "
        f"(β too high, learning rate too low, or no gradient reaching the policy)."
    )
    evidence = {"metric": key, "kl_end": kl_end, "reward_gain_sigma": gain, "reward_start": start, "reward_end": end}
    return [Finding("kl_flat", "warning", int(steps[-1]), message, evidence)]


# Per-token KL keys, best first: the exact KL has no sampling noise over the action; k1 is what the labels of
# benchmarks/diagnosis measure; the configured estimator (token_mean) and k3 (TRL GRPO's `kl`) after them.
KL_TOKEN_KEYS = (K.KL_EXACT_TOKEN_MEAN, K.KL_K1_TOKEN_MEAN, K.KL_TOKEN_MEAN, K.KL_K3_TOKEN_MEAN)


def detect_kl_runaway(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    # The worse of the two rules: a sequence budget (what a length-aware run spends) and a per-token one
    # (what a short-response run cannot hide under a sequence budget).
    found = _kl_sequence_runaway(history, t) + _kl_token_runaway(history, t)
    return sorted(found, key=lambda f: SEVERITY_RANK[f.severity])[:1]  # lower rank is worse


def _kl_token_runaway(history, t) -> list[Finding]:
    """Per-token KL at the end ≥ kl_token_budget, in the training log (its end window) or on the checkpoints'
    fixed prompts (the last checkpoint: a paired measurement on the same prompts, not a noisy batch)."""
    candidates = []
    steps, kl, key = first_series(history, KL_TOKEN_KEYS)
    if len(kl) >= t.min_steps:
        w = window_len(len(kl), t)
        candidates.append((start_end(kl, t)[1], key, steps, kl, w, "training log, end window"))
    f_steps, f_kl, f_key = first_series(history, [FIXED_PREFIX + k for k in KL_TOKEN_KEYS])
    if len(f_kl) >= 2:  # the reference (step 0) and at least one checkpoint
        candidates.append((float(f_kl[-1]), f_key, f_steps, f_kl, 1, f"fixed prompts, checkpoint {int(f_steps[-1])}"))
    over = [c for c in candidates if c[0] >= t.kl_token_budget]
    if not over:
        return []
    end, key, steps, kl, w, where = max(over, key=lambda c: c[0])
    severity = "critical" if end >= t.kl_token_budget * t.kl_token_critical_factor else "warning"
    onset = onset_step(steps, kl, lambda v: v >= t.kl_token_budget, w)
    message = (
        f"KL to the reference reached {fmt(end)} nats per token ({key}, {where}), {end / t.kl_token_budget:.1f}× the "
        f"{fmt(t.kl_token_budget)}-nat/token budget: each sampled token is on average e^{fmt(end)} ≈ {math.exp(end):.3g}× likelier under "
        f"the policy than under the reference, however short the responses keep the sequence KL. Raise β or lower the learning "
        f"rate, or keep an earlier checkpoint."
    )
    evidence = {"metric": key, "kl_token_end": end, "kl_token_budget": t.kl_token_budget, "source": where}
    return [Finding("kl_runaway", severity, onset, message, evidence)]


def _kl_sequence_runaway(history, t) -> list[Finding]:
    steps, kl, key = first_series(history, [K.KL_SEQ_MEAN, K.KL_EXACT_SEQ_MEAN])
    if len(kl) < t.min_steps:
        return []
    w = window_len(len(kl), t)
    _, kl_end = start_end(kl, t)
    _, reward = metric_series(history, K.SCORE_MEAN)
    half = len(kl) // 2
    scale = reward_scale(history, t)
    # Reward gained over the second half, from a line fit: robust to one noisy end window.
    recent_gain = math.nan
    if len(reward) >= t.min_steps:
        r_steps = np.arange(len(reward), dtype=float)[len(reward) // 2 :]
        recent_gain = fit_slope(r_steps, reward[len(reward) // 2 :]) * max(np.ptp(r_steps), 1.0) / scale
    stagnant = not (recent_gain >= t.reward_stagnant_effect)  # NaN (no reward logged) counts as stagnant
    reward_note = "reward stagnating" if stagnant else "reward still rising"
    if math.isfinite(recent_gain):
        reward_note += f", {recent_gain:+.2f}σ over the second half"
    else:
        reward_note = "no reward logged"  # not "stagnating": nothing says what the reward did
    evidence = {"metric": key, "kl_end": kl_end, "kl_budget": t.kl_budget, "reward_gain_2nd_half_sigma": recent_gain}

    if kl_end > t.kl_budget:
        if kl_end > t.kl_budget * t.kl_budget_critical_factor:
            severity = "critical"
        else:
            severity = "warning" if stagnant else "info"
        onset = onset_step(steps, kl, lambda v: v > t.kl_budget, w)
        message = (
            f"Sequence KL reached {fmt(kl_end)} nats, {kl_end / t.kl_budget:.1f}× the {fmt(t.kl_budget)}-nat budget "
            f"({reward_note}): raise β or lower the learning rate, "
            f"or stop and keep an earlier checkpoint."
        )
        return [Finding("kl_runaway", severity, onset, message, evidence)]

    first_slope = fit_slope(steps[:half], kl[:half])
    second_slope = fit_slope(steps[half:], kl[half:])
    second_rise = second_slope * float(np.ptp(steps[half:]))
    accelerating = second_slope > t.kl_accel_ratio * max(first_slope, 1e-12) and second_rise > t.kl_accel_min_rise_frac * t.kl_budget
    if not (accelerating and stagnant):
        return []
    evidence.update({"slope_first_half": first_slope, "slope_second_half": second_slope, "rise_second_half": second_rise})
    stagnation = f"reward stagnates ({recent_gain:+.2f}σ)" if math.isfinite(recent_gain) else "no reward is logged"
    message = (
        f"Sequence KL is accelerating (slope {fmt(first_slope)} → {fmt(second_slope)} nats/step, +{fmt(second_rise)} nats "
        f"in the second half, now {fmt(kl_end)}) while {stagnation}: the policy is drifting "
        f"without gaining reward; raise β or lower the learning rate."
    )
    return [Finding("kl_runaway", "warning", int(steps[half]), message, evidence)]


# Shares of the update clipped per step, either unit: tokens (ppo/clip_frac), sequences (GSPO), and TRL RLOO's sequence
# share, which the TRL importer shows under its raw name (no policyshift key has its unit). For "is the update
# clipping on noise" a share of tokens and a share of sequences tell the same thing.
CLIP_SHARE_KEYS = (K.CLIP_FRAC, K.SEQ_CLIP_FRAC, "trl/clip_ratio/region_mean")


def detect_kl_at_start(history, samples, t, distributions=(), reference=None) -> list[Finding]:
    steps, kl, key = first_series(history, [K.KL_K1_TOKEN_MEAN, K.KL_K3_TOKEN_MEAN, K.KL_TOKEN_MEAN, K.KL_EXACT_TOKEN_MEAN])
    if len(kl) < t.kl_at_start_min_steps or steps[0] > 1 or steps[0] < 1:  # step 0 is the reference itself (analyze); after step 1 the policy moved
        return []
    first = float(kl[0])
    if not first > t.kl_at_start_max:
        return []
    evidence = {"metric": key, "step": int(steps[0]), "kl_first_step": first, "kl_median": float(np.median(kl)), "steps": len(kl)}
    clip_steps, clip, clip_key = first_series(history, CLIP_SHARE_KEYS)
    noisy = len(clip) >= 2 and float(np.median(clip)) >= t.noisy_clip_share
    symptom = ""
    if len(clip):
        evidence.update({"clip_metric": clip_key, "clip_median": float(np.median(clip)), "clip_min": float(clip.min()), "clip_max": float(clip.max())})
        symptom = (f"; the update clipped a median {np.median(clip):.0%} per step ({clip_key}, {clip.min():.0%}–{clip.max():.0%} over "
                   f"{len(clip)} steps), so the importance ratios are noise rather than policy change" if noisy else "")
    message = (
        f"KL to the reference was already {fmt(first)} nats/token at step {int(steps[0])} ({key}), when the policy still equals its "
        f"reference (it should be ≈ 0): the policy's and the reference's log-probs are computed differently — most often dropout left "
        f"on in the training forward pass (TRL's default), else another precision or engine{symptom}. Logged KL is inflated by that "
        f"noise (median {fmt(float(np.median(kl)))} over the run); set disable_dropout=True (TRL) or the model's dropout to 0, "
        f"and compute both log-probs the same way."
    )
    return [Finding("kl_at_start", "warning" if noisy else "info", int(steps[0]), message, evidence)]


DETECTORS = {"kl_negative": detect_kl_negative, "kl_flat": detect_kl_flat, "kl_runaway": detect_kl_runaway, "kl_at_start": detect_kl_at_start}
