"""Report panels of the behaviour probes: each probe suite's score over the evaluations against the
reference's (panel 10), and what the policy learned to say on the fixed prompts (panel 11). Each is
left out of a run that has nothing for it."""

from __future__ import annotations

import numpy as np

from policyshift import keys as K
from policyshift.analysis.phrases import learned_phrases
from policyshift.analysis.report import _axis, _esc, _figure, _line, _panel
from policyshift.analysis.detectors.probe_change import Z_95, directions, suite_names, verdict
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
        traces = [_line(steps, values + Z_95 * se, "+95%", line={"width": 0}, showlegend=False, hoverinfo="skip"),
                  _line(steps, values - Z_95 * se, "95% band", line={"width": 0}, fill="tonexty", fillcolor="rgba(31,119,180,0.18)", hoverinfo="skip"),
                  _line(steps, values, name, mode="lines+markers", line={"color": "#1f77b4", "width": 2})]
        has_reference = len(steps) and steps[0] == 0
        if has_reference:
            traces.append(_line([steps[0], steps[-1]], [values[0], values[0]], "reference (step 0)", line={"dash": "dot", "color": "#777"}))
        cells.append(f'<div class="cell"><h3>{_esc(name)} ({"higher" if higher else "lower"} is better)</h3>' + _figure(
            figures, f"fig-probe-{i}", traces, {"xaxis": _axis("step"), "yaxis": _axis("score"), "margin": {"l": 50, "r": 15, "t": 10, "b": 40}},
            height=240) + "</div>")
        if has_reference and len(steps) > 1:
            call = verdict(values[0], se_by_step.get(0.0, 0.0), values[-1], se_by_step.get(steps[-1], 0.0), higher)
            css = {"improved": "sev sev-ok", "regressed": "sev sev-critical"}.get(call, "")
            rows.append(f"<tr><td>{_esc(name)}</td><td>{'higher' if higher else 'lower'}</td><td class='num'>{values[0]:.4f} ± {se_by_step.get(0.0, 0.0):.4f}</td>"
                        f"<td class='num'>{values[-1]:.4f} ± {se_by_step.get(steps[-1], 0.0):.4f} (step {int(steps[-1])})</td>"
                        f"<td class='num'>{values[-1] - values[0]:+.4f}</td><td><span class='{css}'>{call}</span></td></tr>")
    table = ("<table><thead><tr><th>suite</th><th>better</th><th>reference (mean ± s.e.)</th><th>last evaluation</th><th>change</th>"
             "<th>verdict</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>") if rows else ""
    caption = ("Each probe suite's mean score on its own fixed prompts: the reference at step 0 (dotted line) and the policy at each evaluation, "
               "with a 95% band (±1.96 standard errors over the prompts). The verdict compares the last evaluation with the reference: a "
               "difference beyond 1.96·√(s.e.² + s.e._ref²) is called improved or regressed by the suite's direction (a z test of two "
               "independent means over prompts, so small suites call only large changes; the probe_change finding makes the same call).")
    return _panel(10, "Probe suites", table + f'<div class="multiples">{"".join(cells)}</div>', caption)


def _phrase_rows(phrases) -> str:
    return "".join(
        f"<tr><td><code>{_esc(p.text)}</code></td><td class='num'>{p.z:+.2f}</td><td class='num'>{p.count_reference} → {p.count_policy}</td>"
        f"<td class='num'>{p.share_reference:.0%} → {p.share_policy:.0%}</td><td>{_esc(p.example[:160])}{_browser_link(p.example_prompt_id)}</td></tr>"
        for p in phrases)


def _browser_link(prompt_id) -> str:
    return "" if prompt_id is None else f' <a href="#sample-prompt-{_esc(prompt_id)}">(prompt {_esc(prompt_id)} in the sample browser)</a>'


def panel_phrases(run: RunData) -> str:
    summary = learned_phrases(run.samples)
    if summary is None:
        return ""
    head = ("<table><thead><tr><th>phrase</th><th>z</th><th>count ref → policy</th><th>share of responses</th><th>example</th></tr></thead><tbody>")
    rose = head + _phrase_rows(summary["rose"]) + "</tbody></table>"
    fell = head + _phrase_rows(summary["fell"]) + "</tbody></table>"
    tokens = "".join(f"<tr><td><code>{_esc(t)}</code></td><td class='num'>{m:+.3f}</td><td class='num'>{n}</td></tr>" for t, m, n in summary["tokens"])
    body = (f"<p>Step {summary['step']} ({summary['n_policy']} responses) against the reference ({summary['n_reference']} responses) on the "
            f"fixed prompts.</p><h3>Said more</h3>{rose}<h3>Said less</h3>{fell}"
            f"<h3>Tokens the policy favours most (mean log π/π_ref, at least 3 occurrences)</h3><table><thead><tr><th>token</th>"
            f"<th>mean log π/π_ref</th><th>occurrences</th></tr></thead><tbody>{tokens}</tbody></table>")
    caption = ("Word 1–3-grams ranked by the weighted log-odds z-score with an informative Dirichlet prior (Monroe et al. 2008, "
               "“Fightin’ Words”): z > 0 the policy says it more than the reference. The prior keeps phrases seen once or twice from "
               "outranking ones that moved across many responses. The examples are whole responses; the sample browser (panel 7) "
               "shows each prompt's responses side by side.")
    return _panel(11, "What the policy learned to say", body, caption)


def probe_panels(run: RunData, figures: dict) -> list[str]:
    return [panel_probes(run, figures), panel_phrases(run)]
