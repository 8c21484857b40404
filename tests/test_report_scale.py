"""The report of a long run (#28): curves thinned for display (a spike and a gap survive, the page says so, the
run's files keep every point) and the smaller plotly.js bundle inlined when every trace is a type it draws."""

import json
import re

import numpy as np

from policyshift.analysis.report import build_report, standalone_page
from policyshift.analysis.report.kit import MAX_POINTS, thin_indices, thin_trace


def test_thinned_lines_keep_spikes_gaps_and_ends():
    y = np.sin(np.arange(20_000) / 300.0)
    y[12_345] = 40.0  # one spike: every-k-th sampling would miss it
    y[7_000:7_200] = np.nan  # a gap (a metric not logged for a while)
    keep = thin_indices(y, lines=True)
    assert len(keep) <= MAX_POINTS and keep[0] == 0 and keep[-1] == len(y) - 1 and np.all(np.diff(keep) > 0)
    assert 12_345 in keep and np.isnan(y[keep]).any()
    markers = thin_indices(y, lines=False)
    assert len(markers) <= MAX_POINTS and markers[-1] == len(y) - 1
    trace = thin_trace({"type": "scatter", "mode": "markers", "x": list(range(5000)), "y": list(range(5000)), "text": [str(i) for i in range(5000)],
                        "marker": {"color": list(range(5000)), "size": 8}})
    assert len(trace["x"]) == len(trace["text"]) == len(trace["marker"]["color"]) <= MAX_POINTS and trace["marker"]["size"] == 8
    assert trace["text"] == [str(x) for x in trace["x"]]  # the per-point lists cut to the same points
    short = {"type": "scatter", "x": [1, 2], "y": [3, 4]}
    assert thin_trace(short) is short


def figures_of(page: str) -> dict:
    return {m.group(1): json.loads(m.group(2)) for m in re.finditer(r'class="ps-figure" data-target="([^"]*)">(.*?)</script>', page, re.S)}


def test_long_run_report_is_bounded_and_says_so(tmp_path):
    run = tmp_path / "long"
    run.mkdir()
    n = 6000
    rng = np.random.default_rng(0)
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, n + 1):
            f.write(json.dumps({"step": step, "reward/score_mean": float(rng.normal()), "reward/score_std": 1.0, "kl/token_mean": 0.001 * step,
                                "kl/seq_mean": 0.01 * step, "response/length_mean": 10.0, "policy/entropy": 1.0}) + "\n")
    page = build_report(run).read_text()
    figures = figures_of(page)
    lengths = [len(t["x"]) for fig in figures.values() for t in fig["data"] if isinstance(t.get("x"), list)]
    assert lengths and max(lengths) <= MAX_POINTS
    assert f"at most {MAX_POINTS} of {n} points per curve" in page
    assert len((run / "metrics.jsonl").read_text().splitlines()) == n  # the run's files are untouched
    assert "plotly.js (cartesian - minified)" in page  # scatter and histogram only: the 1.5 MB bundle
    assert len(page) < 3e6


def test_a_trace_type_outside_the_cartesian_bundle_gets_the_full_plotly():
    page = standalone_page("t", "<div id='f'></div>", {"f": {"data": [{"type": "sankey", "node": {"label": ["a", "b"]}}], "layout": {}}})
    assert "plotly.js (cartesian" not in page and "plotly.js v" in page
