"""The run report: one self-contained HTML file showing how the policy shifted from its reference.

`build_report(run_dir)` reads the run with `runlog.load_run`, recomputes the findings from the logs
(so the report is current even while the trainer is still running) and writes RUN_DIR/report.html.
Figures are plotly figure dicts rendered by plotly.js, which is embedded once in the page: the file
opens offline, with no CDN. Every panel degrades to a "no data yet" note instead of failing, so a
1-step run renders too.

`render_tokens`, `render_sample_columns` and `standalone_page` are public: `policyshift compare`
reuses them to put two checkpoints side by side.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import math
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from policyshift import keys as K
from policyshift.analysis.detectors import DetectorThresholds, Finding, run_detectors
from policyshift.analysis.ingest import COMPLETION_LOGS, RAW_PREFIXES
from policyshift.analysis.gao import MIN_FIT_POINTS, fit_reward_vs_kl, gao_curve
from policyshift.analysis.probe import FIXED_PREFIX
from policyshift.analysis.runlog import RunData, as_float, config_get, load_run, metric_series

REPORT_FILE = "report.html"
TOKEN_SCALE = 2.0  # |log π/π_ref| (nats) at which a token's colour saturates (a 7.4× probability ratio)
MAX_SAMPLE_COLUMNS = 12  # reference + this many − 1 eval steps per prompt; more would be unreadable

# Diverging scale (ColorBrewer RdBu ends, softened so dark text stays readable on them).
_NEGATIVE_RGB = (67, 147, 195)  # blue: the policy makes this token less likely than the reference did
_POSITIVE_RGB = (214, 96, 77)  # red: more likely
_STAGE_COLORS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]  # viridis: early → late
_BASE_LAYOUT = {
    "margin": {"l": 60, "r": 60, "t": 30, "b": 45},
    "legend": {"orientation": "h", "y": -0.2},
    "hovermode": "x unified",
    "font": {"size": 12},
}


# ------------------------------------------------------------------ HTML + JSON plumbing


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    x = as_float(value)
    return f"{x:.{digits}g}" if math.isfinite(x) else "—"


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only; NaN/inf become null (plotly draws a gap, JSON stays strict)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _script_json(obj: Any) -> str:
    """JSON safe to place inside <script>: no '<', '>' or '&' can end the script element early."""
    text = json.dumps(_jsonable(obj), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return resources.files("policyshift.analysis").joinpath(name).read_text(encoding="utf-8")


def _plotly_js() -> str | None:
    """The plotly.js bundle shipped inside the plotly Python package (read as a file: importing
    plotly itself is slow and not needed), or None when plotly is not installed."""
    try:
        return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def standalone_page(title: str, body_html: str, figures: dict[str, dict] | None = None) -> str:
    """A complete offline HTML page: the report's CSS, `body_html`, and `figures` ({element id:
    plotly figure dict}) rendered into the elements with those ids by the embedded plotly.js."""
    figures = figures or {}
    plotly_js = _plotly_js() if figures else None
    figure_scripts = "\n".join(
        f'<script type="application/json" class="ps-figure" data-target="{_esc(fig_id)}">{_script_json(fig)}</script>'
        for fig_id, fig in figures.items()
    )
    if figures and plotly_js is None:
        body_html = '<p class="no-data">plotly is not installed (pip install plotly): figures are not drawn.</p>' + body_html
        figure_scripts = ""
    plotly_tag = f"<script>{plotly_js}</script>" if plotly_js else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_asset('report.css')}</style>"
        f"<script>{_asset('report.js')}</script></head>\n<body>\n{body_html}\n{figure_scripts}\n{plotly_tag}\n"
        "<script>window.policyshiftReport.renderAll();</script>\n</body></html>\n"
    )


def _panel(number: int, title: str, body: str, caption: str = "") -> str:
    caption_html = f'<p class="caption">{caption}</p>' if caption else ""
    return f'<section class="panel" id="panel-{number}"><h2>{number}. {_esc(title)}</h2>{body}{caption_html}</section>'


def _no_data(what: str, fill: str = "") -> str:
    """`fill`: what input would fill the panel (a run analyzed from another trainer's checkpoints lacks
    what its trainer never logged; say which flag or file brings it)."""
    hint = f" To fill it: {_esc(fill)}." if fill else ""
    return f'<p class="no-data">No data yet: {_esc(what)}.{hint}</p>'


FILL_KL = "run `policyshift analyze` on the run's checkpoints with --reference (KL on fixed prompts), or import a log that has a KL to the reference (--logs)"
FILL_REWARD = "give `policyshift analyze` --reward or --reward-function (the fixed prompts are scored), or import training logs with a reward (--logs)"
FILL_DIST = ("per-sample training rewards: a policyshift run logs them every step; for another trainer import its logged completions "
             f"with --logs ({COMPLETION_LOGS})")


def detector_inputs(history: list[dict]) -> tuple[list[dict], set[str]]:
    """The history the panels and detectors read, and the keys taken from the fixed prompts.

    A metric a training log provides (a policyshift run's batches, an imported log whose key has the
    same meaning) is read as logged; a metric only the checkpoints' fixed-prompt evaluation provides
    (`fixed/KEY` in metrics.jsonl, written by `policyshift analyze`) is read under KEY. So a run that
    has nothing but checkpoints gets every panel and detector, and the report names each curve's source."""
    logged = {k for row in history for k in row if not k.startswith(FIXED_PREFIX)}
    fixed = {k[len(FIXED_PREFIX):] for row in history for k in row if k.startswith(FIXED_PREFIX)}
    fallback = fixed - logged
    if not fallback:
        return history, set()
    return [{**row, **{k: row[FIXED_PREFIX + k] for k in fallback if FIXED_PREFIX + k in row}} for row in history], fallback


# A fixed-prompt history has one point per checkpoint (plus the reference at step 0), each a paired
# comparison on the same prompts and seed, not a noisy training batch: judge from 4 points, start = reference.
FIXED_ONLY_THRESHOLDS = {"min_steps": 4, "min_window": 1}


def run_findings(run: RunData) -> tuple[list[Finding], DetectorThresholds, RunData, set[str]]:
    """Findings of a loaded run as the report shows them (and `--fail-on` gates on): the detectors on
    `detector_inputs(run.history)`. Returns (findings, thresholds, the run with that history, fixed keys)."""
    history, fixed = detector_inputs(run.history)
    training_keys = {k for row in run.history for k in row if k != "step" and not k.startswith((FIXED_PREFIX, *RAW_PREFIXES))}
    overrides = FIXED_ONLY_THRESHOLDS if fixed and not training_keys else {}
    thresholds = DetectorThresholds.from_config(run.config, **overrides)
    view = dataclasses.replace(run, history=history)
    return run_detectors(history, run.samples, thresholds, run.distributions), thresholds, view, fixed


def _source(key: str, fixed: set[str]) -> str:
    return " · fixed prompts at checkpoints" if key in fixed else ""


def _figure(figures: dict, fig_id: str, data: list[dict], layout: dict, height: int = 360) -> str:
    figures[fig_id] = {"data": data, "layout": {**_BASE_LAYOUT, "height": height, **layout}}
    return f'<div class="figure" id="{_esc(fig_id)}" style="height:{height}px"></div>'


def _line(x, y, name: str, **extra) -> dict:
    return {"type": "scatter", "mode": "lines", "x": list(np.asarray(x, dtype=float)), "y": list(np.asarray(y, dtype=float)), "name": name, **extra}


def _axis(title: str, **extra) -> dict:
    return {"title": {"text": title}, "zeroline": False, **extra}


# ------------------------------------------------------------------ token rendering (reused by compare)


def token_color(log_ratio: float, scale: float = TOKEN_SCALE) -> str:
    """Background colour for a token: white at 0, blue when log π/π_ref < 0, red when > 0."""
    x = as_float(log_ratio)
    if not math.isfinite(x):
        return "#eeeeee"
    strength = min(abs(x) / scale, 1.0)
    target = _POSITIVE_RGB if x > 0 else _NEGATIVE_RGB
    r, g, b = (round(255 + (c - 255) * strength) for c in target)
    return f"#{r:02x}{g:02x}{b:02x}"


def render_tokens(tokens: Iterable[Any], log_ratios: Iterable[Any] | None, scale: float = TOKEN_SCALE) -> str:
    """One <span> per token, coloured by its log π/π_ref, with the value in the title attribute.

    Missing log ratios (a shorter list, None, NaN) render grey with "n/a" rather than failing.
    Newlines show as ↵ followed by the break, so the layout of the response is preserved.
    """
    tokens = [str(tok) for tok in tokens]
    ratios = list(log_ratios or [])
    spans = []
    for i, tok in enumerate(tokens):
        value = as_float(ratios[i]) if i < len(ratios) else math.nan
        label = f"log π/π_ref = {value:+.3f}" if math.isfinite(value) else "log π/π_ref = n/a"
        text = _esc(tok).replace("\n", "↵\n")
        spans.append(f'<span class="tok" style="background:{token_color(value, scale)}" title="{_esc(label)}">{text}</span>')
    return "".join(spans)


def render_sample_columns(prompt: str, columns: list[dict], scale: float = TOKEN_SCALE) -> str:
    """A prompt above its responses side by side.

    Each column is a dict with: "label" (e.g. "reference (step 0)"), "tokens" (list of decoded
    tokens), "log_ratios" (log π/π_ref per token), "score", "gold_score" (may be None), "seq_kl";
    optionally "response" (plain text shown when "tokens" is empty) and "length".
    """
    cells = []
    for column in columns:
        head = [f'<span class="label">{_esc(column.get("label", ""))}</span>', f"<span>score {_fmt(column.get('score'))}</span>"]
        if math.isfinite(as_float(column.get("gold_score"))):
            head.append(f"<span>gold {_fmt(column.get('gold_score'))}</span>")
        head.append(f"<span>seq KL {_fmt(column.get('seq_kl'))} nats</span>")
        if column.get("length") is not None:
            head.append(f"<span>{_esc(column['length'])} tokens</span>")
        tokens = column.get("tokens") or []
        body = render_tokens(tokens, column.get("log_ratios"), scale) if tokens else _esc(column.get("response", ""))
        cells.append(f'<div class="sample-col"><div class="col-head">{"".join(head)}</div><div class="tokens">{body}</div></div>')
    return (
        f'<div class="sample"><div class="sample-prompt"><pre>{_esc(prompt)}</pre></div>'
        f'<div class="sample-columns">{"".join(cells)}</div></div>'
    )


# ------------------------------------------------------------------ panels


def _estimator(run: RunData) -> str:
    return str(config_get(run.config, "kl.estimator", "") or "configured estimator")


def panel_kl(run: RunData, figures: dict, fixed: set[str] = frozenset()) -> str:
    estimator = _estimator(run)
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
            traces.append(_line(steps, values, name + _source(key, fixed), mode="lines+markers" if len(values) < 10 else "lines"))
    if not traces:
        if config_get(run.config, "kl.score_reference") is False:  # β = 0 and the reference was told to skip the batches
            return _panel(1, "KL to the reference policy", _no_data(
                "the run set kl.score_reference false, so the reference scored no training batch and the per-step KL curves are "
                "missing; the fixed-prompt samples (panel 7) still carry each evaluation's KL to the reference",
                "train with kl.score_reference true (the default), or run `policyshift analyze` on the run's checkpoints"))
        return _panel(1, "KL to the reference policy", _no_data("no KL logged in metrics.jsonl", FILL_KL))
    steps, beta = metric_series(run.history, K.KL_BETA)
    layout = {"xaxis": _axis("step"), "yaxis": _axis("KL (nats / token)")}
    if len(beta):
        traces.append(_line(steps, beta, "β (KL coefficient)", yaxis="y2", line={"dash": "dot", "color": "#777"}))
        layout["yaxis2"] = _axis("β", overlaying="y", side="right", showgrid=False)
    controller = config_get(run.config, "kl.controller")
    target = config_get(run.config, "kl.target")
    control = f"β controller: {_esc(controller)}" + (f" (target {_esc(target)})" if controller == "adaptive" and target is not None else "") if controller else ""
    caption = (
        "Mean per-token KL(π‖π_ref) over response tokens. The sampled estimate uses the configured estimator "
        "on the generated tokens; the exact curve sums over the whole vocabulary and has no sampling noise. "
        "A sampled k1 that sits below zero means generation and scoring disagree. " + control
    )
    return _panel(1, "KL to the reference policy", _figure(figures, "fig-kl", traces, layout), caption)


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
        return _panel(2, "Reward", _no_data("no reward logged in metrics.jsonl", FILL_REWARD))
    traces = []
    std_rows = {int(s): v for s, v in zip(*metric_series(run.history, K.SCORE_STD))}
    if std_rows:
        std = np.array([std_rows.get(int(s), math.nan) for s in steps])
        traces.append(_line(steps, mean + std, "+1 std", line={"width": 0}, showlegend=False, hoverinfo="skip"))
        traces.append(_line(steps, mean - std, "±1 std (batch)", line={"width": 0}, fill="tonexty", fillcolor="rgba(31,119,180,0.18)", hoverinfo="skip"))
    for key, name in [(K.SCORE_MIN, "min"), (K.SCORE_MAX, "max")]:
        s, v = metric_series(run.history, key)
        if len(v):
            traces.append(_line(s, v, name, line={"dash": "dot", "width": 1, "color": "rgba(31,119,180,0.45)"}))
    traces.append(_line(steps, mean, "proxy reward (mean)" + _source(K.SCORE_MEAN, fixed), mode="lines+markers" if len(mean) < 3 else "lines", line={"color": "#1f77b4", "width": 2}))
    s, v = metric_series(run.history, K.GOLD_MEAN)
    if len(v):
        traces.append(_line(s, v, "gold reward (mean)" + _source(K.GOLD_MEAN, fixed), line={"color": "#e377c2", "width": 2}))
    for key, name, color in [("gold_score", "gold reward (eval prompts)", "#e377c2"), ("score", "proxy reward (eval prompts)", "#1f77b4")]:
        eval_steps, eval_means = _eval_means(run.samples, key)
        if eval_steps:
            traces.append(_line(eval_steps, eval_means, name, mode="markers", marker={"symbol": "diamond", "size": 8, "color": color}))
    layout = {"xaxis": _axis("step"), "yaxis": _axis("reward")}
    caption = (
        "Proxy reward (the reward model the policy is trained on) per training batch, with the batch ±1 std band and min/max "
        "(for a run analyzed from its checkpoints without training logs: the fixed prompts at each checkpoint). "
        "Diamonds are the fixed eval prompts (step 0 = reference policy). When a gold reward is logged, a gap opening "
        "between proxy and gold is the signature of reward hacking."
    )
    return _panel(2, "Reward", _figure(figures, "fig-reward", traces, layout), caption)


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
        return _panel(3, "Reward distribution over training", _no_data("no distributions.jsonl rows with scores", FILL_DIST))
    colors = _STAGE_COLORS if len(stages) == len(_STAGE_COLORS) else _STAGE_COLORS[:: max(1, len(_STAGE_COLORS) // len(stages))]
    # Shared bins: per-trace automatic bins make overlaid densities incomparable.
    lo = min(float(scores.min()) for _, scores in stages)
    hi = max(float(scores.max()) for _, scores in stages)
    bins = {"start": lo, "end": hi + 1e-9, "size": (hi - lo) / 30 if hi > lo else 1.0}
    traces = [
        {"type": "histogram", "x": list(scores), "name": label, "opacity": 0.45, "histnorm": "probability density",
         "xbins": bins, "autobinx": False, "marker": {"color": colors[i % len(colors)]}}
        for i, (label, scores) in enumerate(stages)
    ]
    layout = {"barmode": "overlay", "xaxis": _axis("proxy reward per training sample"), "yaxis": _axis("density"), "hovermode": "closest"}
    start_p95 = float(np.percentile(stages[0][1], 95))
    rows = []
    for label, scores in stages:
        p5, p50, p95 = np.percentile(scores, [5, 50, 95])
        above = float(np.mean(scores > start_p95))
        cells = [_fmt(scores.mean()), _fmt(p5), _fmt(p50), _fmt(p95), _fmt(scores.max()), f"{above:.0%}"]
        rows.append(f"<tr><td>{_esc(label)}</td><td class='num'>{scores.size}</td>" + "".join(f"<td class='num'>{c}</td>" for c in cells) + "</tr>")
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
    return _panel(3, "Reward distribution over training", _figure(figures, "fig-dist", traces, layout) + table + groups, caption + group_caption)


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
        traces = [_line(steps, values, key, mode="lines+markers" if len(values) < 10 else "lines")]
        if second:
            s2, v2 = metric_series(run.history, second)
            traces.append(_line(s2, v2, second, line={"dash": "dot"}))
        cells.append(f'<div class="cell"><h3>{_esc(title)}</h3>' + _figure(
            figures, f"fig-group-{i}", traces, {"xaxis": _axis("step"), "showlegend": False, "margin": {"l": 50, "r": 15, "t": 10, "b": 40}},
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
        traces.append(_line(grid, baseline + gao_curve(grid, fit.alpha, fit.beta), f"{name}: Gao fit d(α − β log d)", line={"color": color}))
        if fit.meaningful and fit.peak_d is not None and fit.peak_d <= grid[-1]:
            traces.append({"type": "scatter", "mode": "markers", "x": [fit.peak_d], "y": [baseline + fit.peak_gain],
                           "name": f"{name} peak d* = {fit.peak_d:.3g}", "marker": {"symbol": "star", "size": 16, "color": color}})
        text = f"{name}: fit on {fit.n_points} steps, α = {_fmt(fit.alpha)}, β = {_fmt(fit.beta)}, R² = {_fmt(fit.r2, 2)}; {_esc(fit.note)}"
        text += "." if fit.meaningful else " — not meaningful yet; treat the curve as a sketch."
    else:
        text = f"{name}: no fit ({_esc(fit.note)})."
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
        return _panel(4, title, _no_data("needs kl/seq_mean and reward/score_mean", FILL_REWARD))
    layout = {"xaxis": _axis("d = √(sequence KL)  [√nats]"), "yaxis": _axis("reward (batch mean)"), "hovermode": "closest"}
    caption = (
        " ".join(texts) + " Gao, Schulman &amp; Hilton (2022) find that gold reward follows R(d) = d(α − β log d) in "
        "d = √KL: it peaks at d* = exp(α/β − 1) and falls after. The proxy reward keeps rising long after the gold reward "
        "turns over, so a peak in the proxy fit is late evidence; with a gold reward, a run past the gold peak is buying "
        "reward-model exploits with its KL."
    )
    return _panel(4, title, _figure(figures, "fig-gao", traces, layout), caption)


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
        body = _no_data(key) if not len(values) else _figure(
            figures, f"fig-shape-{i}", [_line(steps, values, title, mode="lines+markers" if len(values) < 10 else "lines")],
            {"xaxis": _axis("step" + _source(key, fixed)), "showlegend": False, "margin": {"l": 50, "r": 15, "t": 10, "b": 40}}, height=220)
        any_data |= bool(len(values))
        cells.append(f'<div class="cell"><h3>{_esc(title)}</h3>{body}</div>')
    eval_steps, ref_logprob = _eval_means(run.samples, "ref_logprob_mean")
    if eval_steps:
        any_data = True
        perplexity = np.exp(-np.array(ref_logprob))
        body = _figure(figures, "fig-shape-ppl", [_line(eval_steps, perplexity, "reference perplexity", mode="lines+markers")],
                       {"xaxis": _axis("eval step (0 = reference)"), "showlegend": False, "margin": {"l": 50, "r": 15, "t": 10, "b": 40}}, height=220)
    else:
        body = _no_data("ref_logprob_mean in samples.jsonl")
    cells.append(f'<div class="cell"><h3>Reference perplexity of eval outputs</h3>{body}</div>')
    if not any_data:
        return _panel(5, "Response shape", _no_data("no length/entropy/repetition metrics logged", FILL_KL))
    caption = (
        "Small multiples of what the responses look like. Healthy RLHF moves these slowly: length within ~1.5× of the "
        "start, entropy falling gently (not to a small fraction), repetition flat, distinct-2 roughly flat. Reference "
        "perplexity exp(−mean log π_ref) of the eval responses rises with KL; a steep rise means outputs the SFT model "
        "finds unnatural."
    )
    return _panel(5, "Response shape", f'<div class="multiples">{"".join(cells)}</div>', caption)


def panel_findings(findings: list[Finding], run: RunData, thresholds: DetectorThresholds) -> str:
    rows = []
    for f in findings:
        evidence = _esc(json.dumps(_jsonable(f.evidence), indent=1, ensure_ascii=False))
        rows.append(
            f"<tr class='finding sev-row-{_esc(f.severity)}'><td class='sev sev-{_esc(f.severity)}'>{_esc(f.severity)}</td>"
            f"<td>{_esc(f.detector)}</td><td class='num'>{f.step}</td><td>{_esc(f.message)}"
            f"<details><summary>evidence</summary><pre class='evidence'>{evidence}</pre></details></td></tr>"
        )
    if not rows:
        judged = run.last_step >= thresholds.min_steps
        text = "No detector fired: nothing looks wrong so far." if judged else f"No findings: {run.last_step} steps logged; the trend detectors need {thresholds.min_steps}."
        rows.append(f"<tr class='no-findings'><td colspan='4'>{_esc(text)}</td></tr>")
    table = "<table><thead><tr><th>severity</th><th>detector</th><th>step</th><th>finding</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    settings = _esc(json.dumps(_jsonable(vars(thresholds)), indent=1))
    body = table + f"<details><summary>thresholds used</summary><pre class='evidence'>{settings}</pre></details>"
    caption = "Recomputed from the logs each time the report is built, worst first. The README's \"Reading the analysis\" section gives each rule and what to do."
    return _panel(6, "Findings", body, caption)


def _pick_columns(rows: list[dict], limit: int) -> list[dict]:
    """Up to `limit` evenly spaced eval rows, always keeping the first and the latest."""
    if len(rows) <= limit:
        return rows
    picks = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in picks]


def _column(row: dict) -> dict:
    is_reference = row.get("model") == "reference"
    return {
        "label": f"reference (step {row.get('step')})" if is_reference else f"policy step {row.get('step')}",
        "tokens": row.get("tokens") or [],
        "log_ratios": row.get("token_log_ratio") or [],
        "score": row.get("score"),
        "gold_score": row.get("gold_score"),
        "seq_kl": row.get("seq_kl"),
        "response": row.get("response", ""),
        "length": row.get("length"),
    }


def panel_samples(run: RunData) -> str:
    by_prompt: dict[Any, list[dict]] = {}
    for row in run.samples:
        by_prompt.setdefault(row.get("prompt_id"), []).append(row)
    if not by_prompt:
        return _panel(7, "Sample browser", _no_data("no evaluation samples in samples.jsonl", "run `policyshift analyze` with --prompts on the run's checkpoints"))
    blocks = []
    for i, (prompt_id, rows) in enumerate(sorted(by_prompt.items(), key=lambda item: str(item[0]).zfill(12))):
        references = [r for r in rows if r.get("model") == "reference"]
        policy = [r for r in rows if r.get("model") != "reference"]
        shown = references[:1] + _pick_columns(policy, MAX_SAMPLE_COLUMNS - len(references[:1]))
        omitted = len(policy) - (len(shown) - len(references[:1]))
        prompt = str(rows[0].get("prompt", ""))
        preview = prompt if len(prompt) <= 100 else prompt[:100] + "…"
        note = f" ({omitted} eval steps not shown)" if omitted > 0 else ""
        blocks.append(
            f'<details class="prompt-block" id="sample-prompt-{_esc(prompt_id)}"{" open" if i < 3 else ""}><summary>prompt {_esc(prompt_id)}: {_esc(preview)}{_esc(note)}</summary>'
            + render_sample_columns(prompt, [_column(r) for r in shown]) + "</details>"
        )
    legend = (
        f'<p>Token colour = log π/π_ref: <span class="scale-legend"></span> '
        f"blue −{TOKEN_SCALE:g} · white 0 · red +{TOKEN_SCALE:g} nats (hover a token for its value).</p>"
    )
    caption = (
        "Responses to the fixed eval prompts: the reference policy at step 0 and the policy at each eval step. Red tokens "
        "are ones the policy now favours over the reference, blue ones it avoids; seq KL is the sum over the response."
    )
    return _panel(7, "Sample browser", legend + "".join(blocks), caption)


# ------------------------------------------------------------------ header + build


def _header(run: RunData, findings: list[Finding], thresholds: DetectorThresholds, extra_nav: list[tuple[int, str]] = ()) -> str:
    total = config_get(run.config, "train.steps")
    beta = config_get(run.config, "kl.beta")
    meta = [f"step {run.last_step}" + (f" / {_esc(total)}" if total is not None else ""), f"KL estimator {_esc(_estimator(run))}"]
    if beta is not None:
        meta.append(f"β₀ {_esc(beta)} ({_esc(config_get(run.config, 'kl.controller', 'fixed'))})")
    if config_get(run.config, "model.policy"):
        meta.append(f"policy {_esc(config_get(run.config, 'model.policy'))}")
    meta.append(f"report built {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    if findings:
        worst = findings[0]
        others = f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""
        health = f'<div class="health health-{_esc(worst.severity)}">{_esc(worst.severity.upper())} · {_esc(worst.detector)} @ step {worst.step}: {_esc(worst.message)}{others}</div>'
    elif run.last_step >= thresholds.min_steps:
        health = f'<div class="health health-ok">Healthy so far: no detector fired over {run.last_step} steps.</div>'
    else:
        health = f'<div class="health health-info">Too early to judge: {run.last_step} steps logged (detectors need {thresholds.min_steps}).</div>'
    names = list(enumerate(["KL", "Reward", "Distribution", "Reward vs √KL", "Shape", "Findings", "Samples"], 1))
    if config_get(run.config, "analysis.imported"):  # panels 8 and 9 exist only for imported logs
        names += [(8, "Imported logs"), (9, "Completions")]
    names += extra_nav  # panels 10-11 (report_probes), when the run has probe scores / reference and policy samples
    nav = "".join(f'<a href="#panel-{i}">{name}</a>' for i, name in names)
    return f"<header><h1>policyshift · {_esc(run.name)}</h1><div class=\"meta\">{''.join(f'<span>{m}</span>' for m in meta)}</div>{health}<nav>{nav}</nav></header>"


def render_report(run: RunData) -> str:
    """The report page for an already-loaded run."""
    from policyshift.analysis.report_imports import imported_panels  # panels 8-9 use this module's helpers

    from policyshift.analysis.report_probes import probe_panels  # panels 10-11

    findings, thresholds, run, fixed = run_findings(run)
    figures: dict[str, dict] = {}
    probes = probe_panels(run, figures)
    extra_nav = [(n, name) for n, name, html in zip((10, 11), ("Probes", "Learned phrases"), probes) if html]
    body = "\n".join([
        _header(run, findings, thresholds, extra_nav),
        panel_kl(run, figures, fixed),
        panel_reward(run, figures, fixed),
        panel_distributions(run, figures),
        panel_gao(run, figures, fixed),
        panel_shape(run, figures, fixed),
        panel_findings(findings, run, thresholds),
        panel_samples(run),
        *imported_panels(run, figures),
        *probes,
    ])
    return standalone_page(f"policyshift · {run.name}", body, figures)


def build_report(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the report of `run_dir` (default RUN_DIR/report.html) and return its path.

    Written to a temporary file and renamed into place, so a browser refreshing the report while
    the trainer rebuilds it never sees half a page.
    """
    run = load_run(run_dir)
    if config_get(run.config, "analysis.runs") and out_path is None:  # `analyze --label`: the runs side by side
        from policyshift.analysis.multirun import write_comparison

        return write_comparison(run.run_dir)
    out = Path(out_path) if out_path is not None else run.run_dir / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(run)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(page)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared/served
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
