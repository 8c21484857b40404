"""The probe-suites panel: each probe suite's score over the evaluations against the reference's, with the
verdict the probe_change detector makes. Left out of a run without probe scores."""

from __future__ import annotations

import numpy as np

from policyshift import keys as K
from policyshift.analysis.detectors.probe_change import Z_95, directions, suite_names, verdict
from policyshift.analysis.report.kit import add_figure, axis, esc, line_trace, panel_html
from policyshift.analysis.report.panels import number, renders
from policyshift.analysis.runlog import RunData, metric_series


def panel_probes(run: RunData, figures: dict) -> str:
    names = suite_names(run.history)
    if not names:
        return ""
    direction = directions(run.config)
    cells, rows = [], []
    for i, name in enumerate(names):
        steps, values = metric_series(run.history, K.probe_key(name))
        se_by_step = dict(zip(*metric_series(run.history, K.probe_se_key(name))))
        se = np.array([se_by_step.get(s, 0.0) for s in steps])
        higher = direction.get(name, True)
        traces = [line_trace(steps, values + Z_95 * se, "+95%", line={"width": 0}, showlegend=False, hoverinfo="skip"),
                  line_trace(steps, values - Z_95 * se, "95% band", line={"width": 0}, fill="tonexty", fillcolor="rgba(31,119,180,0.18)", hoverinfo="skip"),
                  line_trace(steps, values, name, mode="lines+markers", line={"color": "#1f77b4", "width": 2})]
        has_reference = len(steps) and steps[0] == 0
        if has_reference:
            traces.append(line_trace([steps[0], steps[-1]], [values[0], values[0]], "reference (step 0)", line={"dash": "dot", "color": "#777"}))
        cells.append(f'<div class="cell"><h3>{esc(name)} ({"higher" if higher else "lower"} is better)</h3>' + add_figure(
            figures, f"fig-probe-{i}", traces, {"xaxis": axis("step"), "yaxis": axis("score"), "margin": {"l": 50, "r": 15, "t": 10, "b": 40}},
            height=240) + "</div>")
        if has_reference and len(steps) > 1:
            call = verdict(values[0], se_by_step.get(0.0, 0.0), values[-1], se_by_step.get(steps[-1], 0.0), higher)
            css = {"improved": "sev sev-ok", "regressed": "sev sev-critical"}.get(call, "")
            rows.append(f"<tr><td>{esc(name)}</td><td>{'higher' if higher else 'lower'}</td><td class='num'>{values[0]:.4f} ± {se_by_step.get(0.0, 0.0):.4f}</td>"
                        f"<td class='num'>{values[-1]:.4f} ± {se_by_step.get(steps[-1], 0.0):.4f} (step {int(steps[-1])})</td>"
                        f"<td class='num'>{values[-1] - values[0]:+.4f}</td><td><span class='{css}'>{call}</span></td></tr>")
    table = ("<table><thead><tr><th>suite</th><th>better</th><th>reference (mean ± s.e.)</th><th>last evaluation</th><th>change</th>"
             "<th>verdict</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>") if rows else ""
    caption = ("Each probe suite's mean score on its own fixed prompts: the reference at step 0 (dotted line) and the policy at each evaluation, "
               "with a 95% band (±1.96 standard errors over the prompts). The verdict compares the last evaluation with the reference: a "
               "difference beyond 1.96·√(s.e.² + s.e._ref²) is called improved or regressed by the suite's direction (a z test of two "
               "independent means over prompts, so small suites call only large changes; the probe_change finding makes the same call).")
    return panel_html(number("probes"), "Probe suites", table + f'<div class="multiples">{"".join(cells)}</div>', caption)


renders("probes")(lambda page: panel_probes(page.run, page.figures))
