"""The run report: one self-contained HTML file showing how the policy shifted from its reference.

`build_report(run_dir)` reads the run with `runlog.load_run`, recomputes the findings from the logs
(so the report is current even while the trainer is still running) and writes RUN_DIR/report.html.
Figures are plotly figure dicts rendered by plotly.js, which is embedded once in the page: the file
opens offline, with no CDN. Every panel degrades to a "no data yet" note instead of failing, so a
1-step run renders too.

The package: `kit` (the public plotting kit: escaping, figures, the panel frame, token colouring, the
page), `panels` (PANELS: the panels in page order, their numbers and nav), and one module per group of
panels, each registering its renderers (`training`: panels of a run's logs, `imports`, `probes`, `phrases`).
`render_tokens`, `render_sample_columns` and `standalone_page` are re-exported here for `policyshift compare`.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import pkgutil
from pathlib import Path

from policyshift.analysis.detectors import DetectorThresholds
from policyshift.analysis.findings import Finding
from policyshift.analysis.report.kit import (MAX_SAMPLE_COLUMNS, TOKEN_SCALE, esc, render_sample_columns, render_tokens,  # noqa: F401
                                             standalone_page, token_color)
from policyshift.analysis.report.inputs import FIXED_ONLY_THRESHOLDS, detector_inputs, run_findings  # noqa: F401
from policyshift.analysis.report.panels import PANELS, RENDERERS, Page
from policyshift.analysis.report.training import (FILL_DIST, FILL_KL, FILL_REWARD, estimator_name, panel_distributions, panel_findings,  # noqa: F401
                                                  panel_gao, panel_kl, panel_reward, panel_samples, panel_shape)
from policyshift.analysis.runlog import RunData, config_get, load_run
from policyshift.runfiles import REPORT_FILE, write_atomic

# every panel module of this package registers its renderers on import (panels.RENDERERS)
_PANEL_MODULES = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__) if m.name not in ("kit", "panels", "inputs")]


def _header(run: RunData, findings: list[Finding], thresholds: DetectorThresholds, rendered: list[tuple[int, str]], fixed: set = frozenset()) -> str:
    total = config_get(run.config, "train.steps")
    beta = config_get(run.config, "kl.beta")
    meta = [f"step {run.last_step}" + (f" / {esc(total)}" if total is not None else ""), f"KL estimator {esc(estimator_name(run))}"]
    if beta is not None:
        meta.append(f"β₀ {esc(beta)} ({esc(config_get(run.config, 'kl.controller', 'fixed'))})")
    if config_get(run.config, "model.policy"):
        meta.append(f"policy {esc(config_get(run.config, 'model.policy'))}")
    meta.append(f"report built {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    health = _verdict_lines(run, findings, rendered, fixed)
    if run.last_step < thresholds.min_steps:
        health = f'<div class="health health-info">Too early to judge: {run.last_step} steps logged (detectors need {thresholds.min_steps}).</div>' + health
    nav = "".join(f'<a href="#panel-{i}">{name}</a>' for i, name in rendered)  # only the panels on the page
    return f"<header><h1>policyshift · {esc(run.name)}</h1><div class=\"meta\">{''.join(f'<span>{m}</span>' for m in meta)}</div>{health}<nav>{nav}</nav></header>"


_VERDICT_CLASS = {"red": "critical", "amber": "warning", "green": "ok", "grey": "grey"}


def _verdict_lines(run: RunData, findings: list[Finding], rendered: list[tuple[int, str]], fixed: set = frozenset()) -> str:
    """"Is my run healthy?": one line per question (analysis.verdicts), its colour, its evidence and the panel showing it."""
    from policyshift.analysis.report.panels import number
    from policyshift.analysis.verdicts import verdicts

    shown = {n for n, _ in rendered}
    lines = []
    for v in verdicts(findings, run.history, run.samples, run.last_step, fixed):
        target = next((n for n in (number(v.question.panel), number("findings")) if n in shown), None)
        link = f' · <a href="#panel-{target}">panel {target}</a>' if target else ""
        lines.append(f'<div class="health health-{_VERDICT_CLASS[v.colour]}" data-question="{esc(v.question.key)}">'
                     f'<span class="verdict">{esc(v.colour.upper())}</span> {esc(v.question.title)}: {esc(v.evidence)}{link}</div>')
    return f'<div class="verdicts">{"".join(lines)}</div>'


def _read_notes(run: RunData) -> str:
    """What was skipped while reading the run (a torn last line of a run still being written), one line each."""
    if not run.notes:
        return ""
    return f'<div class="read-notes">{"".join(f"<div>read: {esc(n)}</div>" for n in run.notes)}</div>'


def render_report(run: RunData) -> str:
    """The report page for an already-loaded run: every panel of PANELS that has something to show, in order."""
    findings, thresholds, run, fixed = run_findings(run)
    page = Page(run, {}, fixed, findings, thresholds)
    # the probe panels render first (as before the registry): their figures come first in the page's figure list
    order = sorted(PANELS, key=lambda p: p.key not in ("probes", "phrases"))
    html = {p.key: RENDERERS[p.key](page) for p in order}
    rendered = [(number, p) for number, p in enumerate(PANELS, 1) if html[p.key]]
    body = "\n".join([_header(run, findings, thresholds, [(n, p.nav) for n, p in rendered], fixed), _read_notes(run), *(html[p.key] for _, p in rendered)])
    return standalone_page(f"policyshift · {run.name}", body, page.figures)


def build_report(run_dir: str | Path, out_path: str | Path | None = None, notes: list[str] | None = None) -> Path:
    """Write the report of `run_dir` (default RUN_DIR/report.html) and return its path. `notes` (when given)
    receives one line per thing skipped while reading the run (a half-written last line).

    Written to a temporary file and renamed into place, so a browser refreshing the report while
    the trainer rebuilds it never sees half a page.
    """
    run = load_run(run_dir)
    if notes is not None:
        notes.extend(run.notes)
    if config_get(run.config, "analysis.runs") and out_path is None:  # `analyze --label`: the runs side by side
        from policyshift.analysis.multirun import write_comparison

        return write_comparison(run.run_dir)
    out = Path(out_path) if out_path is not None else run.run_dir / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, render_report(run))
    return out
