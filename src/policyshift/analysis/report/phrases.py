"""The learned-phrases panel: what the policy learned to say on the fixed prompts (analysis.phrases' ranking)
against the reference. Left out of a run without reference and policy samples."""

from __future__ import annotations

from policyshift.analysis.phrases import learned_phrases
from policyshift.analysis.report.kit import esc, panel_html
from policyshift.analysis.report.panels import number, ref, renders
from policyshift.analysis.runlog import RunData


def _phrase_rows(phrases) -> str:
    return "".join(
        f"<tr><td><code>{esc(p.text)}</code></td><td class='num'>{p.z:+.2f}</td><td class='num'>{p.count_reference} → {p.count_policy}</td>"
        f"<td class='num'>{p.share_reference:.0%} → {p.share_policy:.0%}</td><td>{esc(p.example[:160])}{_browser_link(p.example_prompt_id)}</td></tr>"
        for p in phrases)


def _browser_link(prompt_id) -> str:
    return "" if prompt_id is None else f' <a href="#sample-prompt-{esc(prompt_id)}">(prompt {esc(prompt_id)} in the sample browser)</a>'


def panel_phrases(run: RunData) -> str:
    summary = learned_phrases(run.samples)
    if summary is None:
        return ""
    head = ("<table><thead><tr><th>phrase</th><th>z</th><th>count ref → policy</th><th>share of responses</th><th>example</th></tr></thead><tbody>")
    rose = head + _phrase_rows(summary["rose"]) + "</tbody></table>"
    fell = head + _phrase_rows(summary["fell"]) + "</tbody></table>"
    tokens = "".join(f"<tr><td><code>{esc(t)}</code></td><td class='num'>{m:+.3f}</td><td class='num'>{n}</td></tr>" for t, m, n in summary["tokens"])
    body = (f"<p>Step {summary['step']} ({summary['n_policy']} responses) against the reference ({summary['n_reference']} responses) on the "
            f"fixed prompts.</p><h3>Said more</h3>{rose}<h3>Said less</h3>{fell}"
            f"<h3>Tokens the policy favours most (mean log π/π_ref, at least 3 occurrences)</h3><table><thead><tr><th>token</th>"
            f"<th>mean log π/π_ref</th><th>occurrences</th></tr></thead><tbody>{tokens}</tbody></table>")
    caption = ("Word 1–3-grams ranked by the weighted log-odds z-score with an informative Dirichlet prior (Monroe et al. 2008, "
               "“Fightin’ Words”): z > 0 the policy says it more than the reference. The prior keeps phrases seen once or twice from "
               "outranking ones that moved across many responses. The examples are whole responses; "
               f"the sample browser ({ref('samples')}) "
               "shows each prompt's responses side by side.")
    return panel_html(number("phrases"), "What the policy learned to say", body, caption)


renders("phrases")(lambda page: panel_phrases(page.run))
