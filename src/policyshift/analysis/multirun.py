"""Several analyzed runs side by side (`policyshift analyze A B --label a --label b`): OUT/<label>/ is
each run's own directory and report; OUT/report.html overlays their fixed-prompt KL and reward, the
reward-vs-√KL points, lists every run's findings and shows the reference beside each run's latest
checkpoint for every fixed prompt. All runs share the reference, prompts and seed, so the columns differ
only by the policies."""

from __future__ import annotations

import math
from pathlib import Path


from policyshift import keys as K
from policyshift.analysis.probe import FIXED_PREFIX
from policyshift.analysis.report.inputs import run_findings
from policyshift.analysis.report.kit import add_figure, axis, esc, line_trace, no_data, panel_html, render_sample_columns, sample_column, standalone_page
from policyshift.analysis.runlog import config_get, load_run, metric_series
from policyshift.runfiles import REPORT_FILE, write_atomic

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


def _overlay(runs: dict, figures: dict, fig_id: str, key: str, y_title: str) -> str:
    traces = []
    for i, (label, run) in enumerate(runs.items()):
        steps, values = metric_series(run.history, FIXED_PREFIX + key)
        if len(values):
            traces.append(line_trace(steps, values, label, mode="lines+markers", line={"color": _COLORS[i % len(_COLORS)]}))
    if not traces:
        return no_data(f"no {FIXED_PREFIX}{key} in any run")
    return add_figure(figures, fig_id, traces, {"xaxis": axis("step"), "yaxis": axis(y_title)})


def render_comparison(out: Path, name: str) -> str:
    labels = config_get(load_run(out).config, "analysis.runs") or []
    runs = {label: load_run(out / label) for label in labels}
    figures: dict[str, dict] = {}
    links = " · ".join(f'<a href="{esc(label)}/{REPORT_FILE}">{esc(label)}</a>' for label in labels)
    header = (f"<header><h1>policyshift · {esc(name)}</h1><div class=\"meta\"><span>{len(runs)} runs, one reference "
              f"<code>{esc(config_get(load_run(out).config, 'analysis.reference', ''))}</code>, the same fixed prompts and seed</span>"
              f"<span>each run's own report: {links}</span></div></header>")
    kl = panel_html(1, "KL to the reference (fixed prompts)", _overlay(runs, figures, "fig-kl", K.KL_EXACT_SEQ_MEAN, "exact KL (nats / sequence)"),
                "Exact full-vocabulary KL(π‖π_ref) summed over each response, mean over the fixed prompts, at each checkpoint.")
    reward = panel_html(2, "Reward (fixed prompts)", _overlay(runs, figures, "fig-reward", K.SCORE_MEAN, "reward (mean)")
                    + _overlay(runs, figures, "fig-gold", K.GOLD_MEAN, "gold reward (mean)"),
                    "Proxy reward (and gold when given) of the fixed prompts' samples at each checkpoint.")
    traces = []
    for i, (label, run) in enumerate(runs.items()):
        kl_by_step = dict(zip(*metric_series(run.history, FIXED_PREFIX + K.KL_EXACT_SEQ_MEAN)))
        pairs = [(kl_by_step[s], r) for s, r in zip(*metric_series(run.history, FIXED_PREFIX + K.SCORE_MEAN)) if s in kl_by_step]
        if pairs:
            d = [math.sqrt(max(k, 0.0)) for k, _ in pairs]
            traces.append({"type": "scatter", "mode": "lines+markers", "x": d, "y": [r for _, r in pairs], "name": label,
                           "marker": {"color": _COLORS[i % len(_COLORS)]}})
    gao = panel_html(3, "Reward vs √KL", add_figure(figures, "fig-gao", traces, {"xaxis": axis("d = √(sequence KL)"), "yaxis": axis("reward"),
                                                                          "hovermode": "closest"}) if traces else no_data("needs a reward"),
                 "Each run's checkpoints in d = √KL: at equal KL, the run higher up bought more reward with its divergence.")
    rows = []
    for label, run in runs.items():
        findings = run_findings(run)[0]
        rows += [f"<tr class='finding sev-row-{esc(f.severity)}'><td>{esc(label)}</td><td class='sev sev-{esc(f.severity)}'>{esc(f.severity)}</td>"
                 f"<td>{esc(f.detector)}</td><td class='num'>{f.step}</td><td>{esc(f.message)}</td></tr>" for f in findings]
        if not findings:
            rows.append(f"<tr class='no-findings'><td>{esc(label)}</td><td colspan='4'>no finding</td></tr>")
    findings = panel_html(4, "Findings", "<table><thead><tr><th>run</th><th>severity</th><th>detector</th><th>step</th><th>finding</th></tr></thead>"
                      f"<tbody>{''.join(rows)}</tbody></table>")
    blocks = []
    first = next(iter(runs.values()), None)
    reference = [r for r in (first.samples if first else []) if r.get("model") == "reference"]
    for i, ref_row in enumerate(sorted(reference, key=lambda r: r.get("prompt_id", 0))):
        columns = [sample_column(ref_row)]
        for label, run in runs.items():
            mine = [r for r in run.samples if r.get("model") != "reference" and r.get("prompt_id") == ref_row.get("prompt_id")]
            if mine:
                last = max(mine, key=lambda r: r.get("step", 0))
                columns.append({**sample_column(last), "label": f"{label} step {last.get('step')}"})
        blocks.append(f'<details class="prompt-block"{" open" if i < 3 else ""}><summary>prompt {esc(ref_row.get("prompt_id"))}</summary>'
                      + render_sample_columns(str(ref_row.get("prompt", "")), columns) + "</details>")
    samples = panel_html(5, "Samples: the reference and each run's latest checkpoint", "".join(blocks) or no_data("no samples"),
                     "Tokens coloured by log π/π_ref (red = more likely than under the reference).")
    return standalone_page(f"policyshift · {name}", "\n".join([header, kl, reward, gao, findings, samples]), figures)


def write_comparison(out: Path, name: str | None = None) -> Path:
    """OUT/report.html for the labelled runs in OUT (written to a temporary file, then renamed)."""
    out = Path(out)
    page = render_comparison(out, name or out.name)
    return write_atomic(out / REPORT_FILE, page)
