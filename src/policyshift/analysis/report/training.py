"""The panels of a training run's logs: KL, reward, reward distribution, reward vs √KL, response shape,
findings and the sample browser (PANELS keys kl … samples)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from policyshift import keys as K
from policyshift.analysis.detectors import DetectorThresholds, advice_for
from policyshift.analysis.findings import Finding
from policyshift.analysis.gao import MIN_FIT_POINTS, fit_reward_vs_kl, gao_curve
from policyshift.analysis.ingest import COMPLETION_LOGS
from policyshift.analysis.report.kit import (MAX_SAMPLE_COLUMNS, STAGE_COLORS, TOKEN_SCALE, add_figure, axis, esc, fmt, jsonable, line_trace,
                                             no_data, panel_html, pick_columns, render_sample_columns, sample_column)
from policyshift.analysis.probe import FIXED_PREFIX
from policyshift.analysis.report.panels import number, ref, renders
from policyshift.analysis.runlog import RunData, as_float, config_get, metric_series

FILL_KL = "run `policyshift analyze` on the run's checkpoints with --reference (KL on fixed prompts), or import a log that has a KL to the reference (--logs)"
FILL_REWARD = "give `policyshift analyze` --reward or --reward-function (the fixed prompts are scored), or import training logs with a reward (--logs)"
FILL_DIST = ("per-sample training rewards: a policyshift run logs them every step; for another trainer import its logged completions "
             f"with --logs ({COMPLETION_LOGS})")



def _source(key: str, fixed: set[str]) -> str:
    return " · fixed prompts at checkpoints" if key in fixed else ""




def estimator_name(run: RunData) -> str:
    return str(config_get(run.config, "kl.estimator", "") or "configured estimator")


def _reference_notice(findings) -> str:
    """The no_reference_kl finding, shown where a reader looks for the KL: this panel. An imported run with no KL to
    the reference (or only old-vs-new KL) would otherwise show an empty panel, or a curve read as drift from the SFT model."""
    notices = [f for f in findings or () if f.detector == "no_reference_kl"]
    return "".join(f'<p class="notice">{esc(f.message)}</p>' for f in notices)


def panel_kl(run: RunData, figures: dict, fixed: set[str] = frozenset(), findings=()) -> str:
    notice = _reference_notice(findings)
    estimator = estimator_name(run)
    candidates = [(K.KL_TOKEN_MEAN, f"sampled {estimator} (token mean)")]
    if estimator != "k1":
        candidates.append((K.KL_K1_TOKEN_MEAN, "sampled k1 (token mean)"))
    if estimator != "k3":
        candidates.append((K.KL_K3_TOKEN_MEAN, "sampled k3 (token mean)"))
    candidates.append((K.KL_EXACT_TOKEN_MEAN, "exact full-vocab KL (token mean)"))
    traces = []
    for key, name in candidates:
        steps, values = metric_series(run.history, key)
        if len(values):
            traces.append(line_trace(steps, values, name + _source(key, fixed), mode="lines+markers" if len(values) < 10 else "lines"))
    if not traces:
        if config_get(run.config, "kl.score_reference") is False:  # β = 0 and the reference was told to skip the batches
            return panel_html(number("kl"), "KL to the reference policy", no_data(
                "the run set kl.score_reference false, so the reference scored no training batch and the per-step KL curves are "
                f"missing; the fixed-prompt samples ({ref('samples')}) still carry each evaluation's KL to the reference",
                "train with kl.score_reference true (the default), or run `policyshift analyze` on the run's checkpoints"))
        return panel_html(number("kl"), "KL to the reference policy", notice + no_data("no KL logged in metrics.jsonl", FILL_KL))
    steps, beta = metric_series(run.history, K.KL_BETA)
    layout = {"xaxis": axis("step"), "yaxis": axis("KL (nats / token)")}
    if len(beta):
        traces.append(line_trace(steps, beta, "β (KL coefficient)", yaxis="y2", line={"dash": "dot", "color": "#777"}))
        layout["yaxis2"] = axis("β", overlaying="y", side="right", showgrid=False)
    controller = config_get(run.config, "kl.controller")
    target = config_get(run.config, "kl.target")
    control = f"β controller: {esc(controller)}" + (f" (target {esc(target)})" if controller == "adaptive" and target is not None else "") if controller else ""
    caption = (
        "Mean per-token KL(π‖π_ref) over response tokens. The sampled estimate uses the configured estimator "
        "on the generated tokens; the exact curve sums over the whole vocabulary and has no sampling noise. "
        "A sampled k1 that sits below zero means generation and scoring disagree. " + control
    )
    return panel_html(number("kl"), "KL to the reference policy", notice + add_figure(figures, "fig-kl", traces, layout), caption)


def _eval_means(samples: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Mean of a sample field per eval step (step 0 = reference), skipping steps with no values."""
    by_step: dict[int, list[float]] = {}
    for row in samples:
        value, step = as_float(row.get(key)), as_float(row.get("step"))
        if math.isfinite(value) and math.isfinite(step):
            by_step.setdefault(int(step), []).append(value)
    steps = sorted(by_step)
    return steps, [float(np.mean(by_step[s])) for s in steps]


def panel_reward(run: RunData, figures: dict, fixed: set[str] = frozenset()) -> str:
    steps, mean = metric_series(run.history, K.SCORE_MEAN)
    if not len(mean):
        return panel_html(number("reward"), "Reward", no_data("no reward logged in metrics.jsonl", FILL_REWARD))
    traces = []
    std_rows = {int(s): v for s, v in zip(*metric_series(run.history, K.SCORE_STD))}
    if std_rows:
        std = np.array([std_rows.get(int(s), math.nan) for s in steps])
        traces.append(line_trace(steps, mean + std, "+1 std", line={"width": 0}, showlegend=False, hoverinfo="skip"))
        traces.append(line_trace(steps, mean - std, "±1 std (batch)", line={"width": 0}, fill="tonexty", fillcolor="rgba(31,119,180,0.18)", hoverinfo="skip"))
    for key, name in [(K.SCORE_MIN, "min"), (K.SCORE_MAX, "max")]:
        s, v = metric_series(run.history, key)
        if len(v):
            traces.append(line_trace(s, v, name, line={"dash": "dot", "width": 1, "color": "rgba(31,119,180,0.45)"}))
    traces.append(line_trace(steps, mean, "proxy reward (mean)" + _source(K.SCORE_MEAN, fixed), mode="lines+markers" if len(mean) < 3 else "lines", line={"color": "#1f77b4", "width": 2}))
    s, v = metric_series(run.history, K.GOLD_MEAN)
    if len(v):
        traces.append(line_trace(s, v, "gold reward (mean)" + _source(K.GOLD_MEAN, fixed), line={"color": "#e377c2", "width": 2}))
    for key, name, color in [("gold_score", "gold reward (eval prompts)", "#e377c2"), ("score", "proxy reward (eval prompts)", "#1f77b4")]:
        eval_steps, eval_means = _eval_means(run.samples, key)
        if eval_steps:
            traces.append(line_trace(eval_steps, eval_means, name, mode="markers", marker={"symbol": "diamond", "size": 8, "color": color}))
    layout = {"xaxis": axis("step"), "yaxis": axis("reward")}
    caption = (
        "Proxy reward (the reward model the policy is trained on) per training batch, with the batch ±1 std band and min/max "
        "(for a run analyzed from its checkpoints without training logs: the fixed prompts at each checkpoint). "
        "Diamonds are the fixed eval prompts (step 0 = reference policy). When a gold reward is logged, a gap opening "
        "between proxy and gold is the signature of reward hacking."
    )
    return panel_html(number("reward"), "Reward", add_figure(figures, "fig-reward", traces, layout), caption)


def _stage_rows(distributions: list[dict]) -> list[tuple[str, dict]]:
    """The rows at the start, 25/50/75% and end of the run (deduplicated for short runs)."""
    n = len(distributions)
    picked: dict[int, str] = {}
    for frac, name in [(0.0, "start"), (0.25, "25%"), (0.5, "50%"), (0.75, "75%"), (1.0, "end")]:
        picked.setdefault(round(frac * (n - 1)), name)
    return [(f"{name} (step {distributions[i].get('step')})", distributions[i]) for i, name in sorted(picked.items())]


def _finite(values: Any) -> np.ndarray:
    arr = np.array([as_float(v) for v in values or []], dtype=float)
    return arr[np.isfinite(arr)]


def panel_distributions(run: RunData, figures: dict) -> str:
    stages = [(label, _finite(row.get("scores"))) for label, row in _stage_rows(run.distributions)] if run.distributions else []
    stages = [(label, scores) for label, scores in stages if scores.size]
    if not stages:
        return panel_html(number("distribution"), "Reward distribution over training", no_data("no distributions.jsonl rows with scores", FILL_DIST))
    colors = STAGE_COLORS if len(stages) == len(STAGE_COLORS) else STAGE_COLORS[:: max(1, len(STAGE_COLORS) // len(stages))]
    # Shared bins: per-trace automatic bins make overlaid densities incomparable.
    lo = min(float(scores.min()) for _, scores in stages)
    hi = max(float(scores.max()) for _, scores in stages)
    bins = {"start": lo, "end": hi + 1e-9, "size": (hi - lo) / 30 if hi > lo else 1.0}
    traces = [
        {"type": "histogram", "x": list(scores), "name": label, "opacity": 0.45, "histnorm": "probability density",
         "xbins": bins, "autobinx": False, "marker": {"color": colors[i % len(colors)]}}
        for i, (label, scores) in enumerate(stages)
    ]
    layout = {"barmode": "overlay", "xaxis": axis("proxy reward per training sample"), "yaxis": axis("density"), "hovermode": "closest"}
    start_p95 = float(np.percentile(stages[0][1], 95))
    rows = []
    for label, scores in stages:
        p5, p50, p95 = np.percentile(scores, [5, 50, 95])
        above = float(np.mean(scores > start_p95))
        cells = [fmt(scores.mean()), fmt(p5), fmt(p50), fmt(p95), fmt(scores.max()), f"{above:.0%}"]
        rows.append(f"<tr><td>{esc(label)}</td><td class='num'>{scores.size}</td>" + "".join(f"<td class='num'>{c}</td>" for c in cells) + "</tr>")
    table = (
        "<table><thead><tr><th>stage</th><th>n</th><th>mean</th><th>p5</th><th>p50</th><th>p95</th><th>max</th>"
        "<th>&gt; start p95</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    caption = (
        "Per-sample proxy rewards of the training batches at several stages. Healthy training shifts the whole "
        "distribution; a growing far tail (many samples above the start's p95, max racing ahead of p50) is where "
        "reward-model exploits usually appear first — read those samples."
    )
    groups, group_caption = group_cells(run, figures)
    return panel_html(number("distribution"), "Reward distribution over training", add_figure(figures, "fig-dist", traces, layout) + table + groups, caption + group_caption)


def group_cells(run: RunData, figures: dict) -> tuple[str, str]:
    """Beside the distribution: the learning signal of a group run (rollout.num_generations > 1) and the
    advantages the loss weighed (any estimator). Empty when the run logged none of them."""
    series = [
        (K.GROUP_REWARD_STD_MEAN, "Reward std within a group (mean over groups)", ""),
        (K.GROUP_ZERO_SPREAD_FRAC, "Groups with zero reward spread (no signal)", ""),
        (f"{K.ADVANTAGE}/std", "Advantage std / max |A| (over tokens)", f"{K.ADVANTAGE}/max_abs"),
    ]
    cells = []
    for i, (key, title, second) in enumerate(series):
        steps, values = metric_series(run.history, key)
        if not len(values):
            continue
        traces = [line_trace(steps, values, key, mode="lines+markers" if len(values) < 10 else "lines")]
        if second:
            s2, v2 = metric_series(run.history, second)
            traces.append(line_trace(s2, v2, second, line={"dash": "dot"}))
        cells.append(f'<div class="cell"><h3>{esc(title)}</h3>' + add_figure(
            figures, f"fig-group-{i}", traces, {"xaxis": axis("step"), "showlegend": False, "margin": {"l": 50, "r": 15, "t": 10, "b": 40}},
            height=200) + "</div>")
    if not cells:
        return "", ""
    caption = (
        " Below: with n samples per prompt, each group's rewards are the baseline of its own samples — a group whose "
        "rewards are all equal has every advantage 0 and teaches nothing, so a rising zero-spread share means the "
        "batch learns from ever fewer prompts (the zero_spread detector watches it)."
    )
    return f'<div class="multiples">{"".join(cells)}</div>', caption


def _gao_traces(d: np.ndarray, rewards: np.ndarray, seq_kl: np.ndarray, name: str, color: str, symbol: str, steps: np.ndarray, colorbar: bool):
    """Scatter of one reward series vs d, its Gao fit curve and peak; returns (traces, fit, caption text)."""
    fit, baseline = fit_reward_vs_kl(seq_kl, rewards)
    marker = {"color": list(steps), "colorscale": "Viridis", "size": 8, "symbol": symbol, "line": {"color": color, "width": 1.5}}
    if colorbar:
        marker["colorbar"] = {"title": {"text": "step"}, "thickness": 12}
    traces = [{"type": "scatter", "mode": "markers", "x": list(d), "y": list(rewards), "name": f"{name} per step",
               "text": [f"step {int(s)}" for s in steps], "marker": marker}]
    if math.isfinite(fit.alpha) and math.isfinite(fit.beta) and fit.n_points >= MIN_FIT_POINTS:  # else: a curve through noise
        d_max = float(d.max())
        reach = min(fit.peak_d * 1.2, 3 * d_max) if fit.meaningful and fit.peak_d else d_max
        grid = np.linspace(0.0, max(d_max, reach) * 1.05, 120)
        traces.append(line_trace(grid, baseline + gao_curve(grid, fit.alpha, fit.beta), f"{name}: Gao fit d(α − β log d)", line={"color": color}))
        if fit.meaningful and fit.peak_d is not None and fit.peak_d <= grid[-1]:
            traces.append({"type": "scatter", "mode": "markers", "x": [fit.peak_d], "y": [baseline + fit.peak_gain],
                           "name": f"{name} peak d* = {fit.peak_d:.3g}", "marker": {"symbol": "star", "size": 16, "color": color}})
        text = f"{name}: fit on {fit.n_points} steps, α = {fmt(fit.alpha)}, β = {fmt(fit.beta)}, R² = {fmt(fit.r2, 2)}; {esc(fit.note)}"
        text += "." if fit.meaningful else " — not meaningful yet; treat the curve as a sketch."
    else:
        text = f"{name}: no fit ({esc(fit.note)})."
    return traces, fit, text


def panel_gao(run: RunData, figures: dict, fixed: set[str] = frozenset()) -> str:
    title = "Reward vs √KL (over-optimization curve)"
    kl_key = K.KL_SEQ_MEAN if len(metric_series(run.history, K.KL_SEQ_MEAN)[1]) else K.KL_EXACT_SEQ_MEAN
    kl_by_step = dict(zip(*metric_series(run.history, kl_key)))
    traces, texts = [], []
    # reward and KL of one point must come from the same samples: a KL measured on the fixed prompts
    # pairs with the fixed prompts' reward, never with a training batch's logged at the same step
    reward_prefix = FIXED_PREFIX if kl_key in fixed else ""
    for key, name, color, symbol in [(reward_prefix + K.SCORE_MEAN, "proxy reward", "#d62728", "circle"),
                                     (reward_prefix + K.GOLD_MEAN, "gold reward", "#e377c2", "diamond")]:
        r_steps, reward = metric_series(run.history, key)
        pairs = [(s, kl_by_step[s], r) for s, r in zip(r_steps, reward) if s in kl_by_step]
        if not pairs:
            continue
        steps, seq_kl, rewards = (np.array(col, dtype=float) for col in zip(*pairs))
        d = np.sqrt(np.clip(seq_kl, 0.0, None))
        new_traces, _, text = _gao_traces(d, rewards, seq_kl, name, color, symbol, steps, colorbar=not traces)
        traces += new_traces
        texts.append(text)
    if not traces:
        return panel_html(number("gao"), title, no_data("needs kl/seq_mean and reward/score_mean", FILL_REWARD))
    layout = {"xaxis": axis("d = √(sequence KL)  [√nats]"), "yaxis": axis("reward (batch mean)"), "hovermode": "closest"}
    caption = (
        " ".join(texts) + " Gao, Schulman &amp; Hilton (2022) find that gold reward follows R(d) = d(α − β log d) in "
        "d = √KL: it peaks at d* = exp(α/β − 1) and falls after. The proxy reward keeps rising long after the gold reward "
        "turns over, so a peak in the proxy fit is late evidence; with a gold reward, a run past the gold peak is buying "
        "reward-model exploits with its KL."
    )
    return panel_html(number("gao"), title, add_figure(figures, "fig-gao", traces, layout), caption)


def panel_shape(run: RunData, figures: dict, fixed: set[str] = frozenset()) -> str:
    metrics = [
        (K.LENGTH_MEAN, "Response length (tokens)"),
        (K.EOS_RATE, "EOS rate (responses that end)"),
        (K.ENTROPY, "Policy entropy (nats / token)"),
        (K.REP_NGRAM_RATE, "Repeated 3-gram rate (within response)"),
        (K.DISTINCT_2, "distinct-2 (across the batch)"),
    ]
    cells, any_data = [], False
    for i, (key, title) in enumerate(metrics):
        steps, values = metric_series(run.history, key)
        body = no_data(key) if not len(values) else add_figure(
            figures, f"fig-shape-{i}", [line_trace(steps, values, title, mode="lines+markers" if len(values) < 10 else "lines")],
            {"xaxis": axis("step" + _source(key, fixed)), "showlegend": False, "margin": {"l": 50, "r": 15, "t": 10, "b": 40}}, height=220)
        any_data |= bool(len(values))
        cells.append(f'<div class="cell"><h3>{esc(title)}</h3>{body}</div>')
    eval_steps, ref_logprob = _eval_means(run.samples, "ref_logprob_mean")
    if eval_steps:
        any_data = True
        perplexity = np.exp(-np.array(ref_logprob))
        body = add_figure(figures, "fig-shape-ppl", [line_trace(eval_steps, perplexity, "reference perplexity", mode="lines+markers")],
                       {"xaxis": axis("eval step (0 = reference)"), "showlegend": False, "margin": {"l": 50, "r": 15, "t": 10, "b": 40}}, height=220)
    else:
        body = no_data("ref_logprob_mean in samples.jsonl")
    cells.append(f'<div class="cell"><h3>Reference perplexity of eval outputs</h3>{body}</div>')
    if not any_data:
        return panel_html(number("shape"), "Response shape", no_data("no length/entropy/repetition metrics logged", FILL_KL))
    caption = (
        "Small multiples of what the responses look like. Healthy RLHF moves these slowly: length within ~1.5× of the "
        "start, entropy falling gently (not to a small fraction), repetition flat, distinct-2 roughly flat. Reference "
        "perplexity exp(−mean log π_ref) of the eval responses rises with KL; a steep rise means outputs the SFT model "
        "finds unnatural."
    )
    return panel_html(number("shape"), "Response shape", f'<div class="multiples">{"".join(cells)}</div>', caption)


def panel_findings(findings: list[Finding], run: RunData, thresholds: DetectorThresholds) -> str:
    rows = []
    for f in findings:
        evidence = esc(json.dumps(jsonable(f.evidence), indent=1, ensure_ascii=False))
        advice = advice_for(f.detector)  # the detector's own ADVICE: the text the detectors reference page shows
        todo = (f"<details class='advice'><summary>what to do</summary><p>{esc(advice.action)}</p>"
                f"<p><b>What it detects:</b> {esc(advice.detects)} <b>Healthy:</b> {esc(advice.healthy)}</p></details>") if advice else ""
        rows.append(
            f"<tr class='finding sev-row-{esc(f.severity)}'><td class='sev sev-{esc(f.severity)}'>{esc(f.severity)}</td>"
            f"<td>{esc(f.detector)}</td><td class='num'>{f.step}</td><td>{esc(f.message)}{todo}"
            f"<details><summary>evidence</summary><pre class='evidence'>{evidence}</pre></details></td></tr>"
        )
    if not rows:
        judged = run.last_step >= thresholds.min_steps
        text = "No detector fired: nothing looks wrong so far." if judged else f"No findings: {run.last_step} steps logged; the trend detectors need {thresholds.min_steps}."
        rows.append(f"<tr class='no-findings'><td colspan='4'>{esc(text)}</td></tr>")
    table = "<table><thead><tr><th>severity</th><th>detector</th><th>step</th><th>finding</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    settings = esc(json.dumps(jsonable(vars(thresholds)), indent=1))
    body = table + f"<details><summary>thresholds used</summary><pre class='evidence'>{settings}</pre></details>"
    caption = ("Recomputed from the logs each time the report is built, worst first. \"what to do\" is the detector's own advice; "
               "docs/reference/detectors.md lists every detector with its thresholds and advice.")
    return panel_html(number("findings"), "Findings", body, caption)


def panel_samples(run: RunData) -> str:
    by_prompt: dict[Any, list[dict]] = {}
    for row in run.samples:
        by_prompt.setdefault(row.get("prompt_id"), []).append(row)
    if not by_prompt:
        return panel_html(number("samples"), "Sample browser", no_data("no evaluation samples in samples.jsonl", "run `policyshift analyze` with --prompts on the run's checkpoints"))
    blocks = []
    for i, (prompt_id, rows) in enumerate(sorted(by_prompt.items(), key=lambda item: str(item[0]).zfill(12))):
        references = [r for r in rows if r.get("model") == "reference"]
        policy = [r for r in rows if r.get("model") != "reference"]
        shown = references[:1] + pick_columns(policy, MAX_SAMPLE_COLUMNS - len(references[:1]))
        omitted = len(policy) - (len(shown) - len(references[:1]))
        prompt = str(rows[0].get("prompt", ""))
        preview = prompt if len(prompt) <= 100 else prompt[:100] + "…"
        note = f" ({omitted} eval steps not shown)" if omitted > 0 else ""
        blocks.append(
            f'<details class="prompt-block" id="sample-prompt-{esc(prompt_id)}"{" open" if i < 3 else ""}><summary>prompt {esc(prompt_id)}: {esc(preview)}{esc(note)}</summary>'
            + render_sample_columns(prompt, [sample_column(r) for r in shown]) + "</details>"
        )
    legend = (
        f'<p>Token colour = log π/π_ref: <span class="scale-legend"></span> '
        f"blue −{TOKEN_SCALE:g} · white 0 · red +{TOKEN_SCALE:g} nats (hover a token for its value).</p>"
    )
    caption = (
        "Responses to the fixed eval prompts: the reference policy at step 0 and the policy at each eval step. Red tokens "
        "are ones the policy now favours over the reference, blue ones it avoids; seq KL is the sum over the response."
    )
    return panel_html(number("samples"), "Sample browser", legend + "".join(blocks), caption)


# ------------------------------------------------------------------ header + build


renders("kl")(lambda page: panel_kl(page.run, page.figures, page.fixed, page.findings))
renders("reward")(lambda page: panel_reward(page.run, page.figures, page.fixed))
renders("distribution")(lambda page: panel_distributions(page.run, page.figures))
renders("gao")(lambda page: panel_gao(page.run, page.figures, page.fixed))
renders("shape")(lambda page: panel_shape(page.run, page.figures, page.fixed))
renders("findings")(lambda page: panel_findings(page.findings, page.run, page.thresholds))
renders("samples")(lambda page: panel_samples(page.run))
