"""The panels of a run made by `policyshift analyze --logs`: how each imported key was read (the importer's
key table) and the trainer's own logged completions. Left out of any other run."""

from __future__ import annotations

import math

from policyshift.analysis.ingest import COMPLETION_LOGS, lookup
from policyshift.analysis.report.kit import add_figure, axis, esc, fmt, line_trace, no_data, panel_html, pick_columns, render_tokens
from policyshift.analysis.report.panels import number, renders
from policyshift.analysis.runlog import RunData, as_float, config_get, metric_series

MAX_IMPORTED_FIGURES = 16  # small multiples of imported keys shown as logged; the rest are listed
MAX_COMPLETION_STEPS, MAX_COMPLETIONS_PER_STEP = 6, 8


def panel_imported(run: RunData, figures: dict) -> str:
    """What was imported from another trainer's logs: the mapping of each key (fed to a policyshift key,
    or shown as logged), unknown keys listed, and the shown-as-logged series as small multiples."""
    sources = config_get(run.config, "analysis.imported") or []
    rows, shown_series, unknown_all = [], [], []
    for source in sources:
        prefix = source.get("kind", "").split(" ")[0]
        for key, target in sorted((source.get("mapped") or {}).items()):
            rows.append(f"<tr><td>{esc(prefix)}</td><td><code>{esc(key)}</code></td><td><code>{esc(target)}</code> (panels, detectors)</td>"
                        f"<td>{esc(_meaning(prefix, key))}</td></tr>")
        for key in source.get("shown") or []:
            rows.append(f"<tr><td>{esc(prefix)}</td><td><code>{esc(key)}</code></td><td>shown as logged</td><td>{esc(_meaning(prefix, key))}</td></tr>")
            shown_series.append(f"{prefix}/{key}")
        unknown_all += [f"{prefix}/{key}" for key in source.get("unknown") or []]
    if not rows and not unknown_all:
        return ""
    cells = []
    for i, key in enumerate((shown_series + unknown_all)[:MAX_IMPORTED_FIGURES]):
        steps, values = metric_series(run.history, key)
        if len(values):
            cells.append(f'<div class="cell"><h3>{esc(key)}</h3>' + add_figure(
                figures, f"fig-imported-{i}", [line_trace(steps, values, key, mode="lines+markers" if len(values) < 10 else "lines")],
                {"xaxis": axis("step"), "showlegend": False, "margin": {"l": 50, "r": 15, "t": 10, "b": 40}}, height=200) + "</div>")
    rest = (shown_series + unknown_all)[MAX_IMPORTED_FIGURES:]
    table = ("<table><thead><tr><th>source</th><th>key</th><th>read as</th><th>meaning</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    unknown = (f"<p>Keys not in the mapping table, kept as logged ({len(unknown_all)}): " + ", ".join(f"<code>{esc(k)}</code>" for k in unknown_all) + "</p>") if unknown_all else ""
    more = f"<p>Not drawn (kept in metrics.jsonl): {', '.join(f'<code>{esc(k)}</code>' for k in rest)}</p>" if rest else ""
    caption = ("A logged key feeds a policyshift panel and detector only when it measures the same quantity (unit, estimator, reward); "
               "the rest is drawn as logged. The README's mapping table gives the source of each meaning.")
    return panel_html(number("imported"), "Imported training logs", table + unknown + f'<div class="multiples">{"".join(cells)}</div>' + more, caption)


def _completion_cell(row: dict) -> str:
    if row.get("tokens"):
        return f'<div class="tokens">{render_tokens(row["tokens"], row.get("token_log_ratio"))}</div>'
    return f"<pre>{esc(row.get('completion', ''))}</pre>"


def _meaning(source: str, key: str) -> str:
    m = lookup(source, key)
    return m.meaning if m else "not in the mapping table"


def panel_completions(run: RunData) -> str:
    if not run.completions:
        if not config_get(run.config, "analysis.imported"):
            return ""
        return panel_html(number("completions"), "Training completions", no_data("no logged completions", f"import them with --logs ({COMPLETION_LOGS})"))
    by_step: dict[int, list[dict]] = {}
    for row in run.completions:
        by_step.setdefault(int(as_float(row.get("step"))) if math.isfinite(as_float(row.get("step"))) else -1, []).append(row)
    steps = pick_columns(sorted(by_step), MAX_COMPLETION_STEPS)
    blocks = []
    for i, step in enumerate(steps):
        rows = by_step[step]
        shown = rows[:MAX_COMPLETIONS_PER_STEP]
        body = "".join(f"<tr><td><pre>{esc(r.get('prompt', ''))}</pre></td><td>{_completion_cell(r)}</td>"
                       f"<td class='num'>{fmt(r.get('score'))}</td><td class='num'>{fmt(r.get('advantage'))}</td></tr>" for r in shown)
        blocks.append(f'<details class="prompt-block"{" open" if i == len(steps) - 1 else ""}><summary>step {step}: {len(rows)} completions'
                      f'{f" (first {len(shown)} shown)" if len(rows) > len(shown) else ""}</summary><table><thead><tr><th>prompt</th><th>completion</th>'
                      f"<th>score</th><th>advantage</th></tr></thead><tbody>{body}</tbody></table></details>")
    coloured = any(r.get("tokens") for r in run.completions)
    caption = ("Completions the trainer logged during training (their rewards fill the distribution panel). The logs hold no "
               "log-probabilities, so tokens are not coloured" + (
                   ", except at the steps of a checkpoint (analyze --score-completions): there each token is coloured by "
                   "log π_checkpoint/π_ref, re-tokenized with the reference's tokenizer" if coloured else
                   "; analyze --score-completions colours those logged at a checkpoint's step") + ".")
    return panel_html(number("completions"), "Training completions", "".join(blocks), caption)


renders("imported")(lambda page: panel_imported(page.run, page.figures))
renders("completions")(lambda page: panel_completions(page.run))
