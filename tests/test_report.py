"""The HTML report: built from synthetic run directories (a multi-step run, a 1-step run with no
samples, an empty directory), checked for its panels, self-containment and escaping."""

import json
import math
import re

import numpy as np
import pytest
import yaml

from policyshift.analysis.report import build_report, render_sample_columns, render_tokens, token_color
from policyshift.analysis.runlog import load_run, metric_series, read_jsonl

PANEL_IDS = [f"panel-{i}" for i in range(1, 8)]
CONFIG = {"kl": {"estimator": "k3", "beta": 0.05, "controller": "adaptive", "target": 6.0},
          "train": {"steps": 40}, "model": {"policy": "sshleifer/tiny-gpt2"}, "analysis": {"every": 10, "kl_budget": 10.0}}


def write_jsonl(path, rows, trailing=""):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + trailing)


def metrics_row(step, n_steps, rng):
    p = step / n_steps
    kl_token = 0.05 * p + rng.normal(0, 0.003)
    return {
        "step": step, "episodes": step * 32, "kl/beta": 0.05 + 0.01 * p, "kl/token_mean": abs(kl_token),
        "kl/seq_mean": 40 * kl_token, "kl/k1_token_mean": kl_token, "kl/k3_token_mean": abs(kl_token),
        "kl/exact_token_mean": 0.05 * p, "kl/exact_seq_mean": 2.0 * p, "reward/score_mean": 3 * math.sqrt(p) - p,
        "reward/score_std": 1.0, "reward/score_min": -2 + p, "reward/score_max": 3 + p, "reward/gold_mean": 2 * p - 2 * p * p,
        "response/length_mean": 40 + 10 * p, "response/eos_rate": 0.9, "response/rep_ngram_rate": 0.05,
        "response/distinct_2": 0.6, "policy/entropy": 2.0 - 0.5 * p, "ppo/approx_kl": 0.01, "ppo/clip_frac": 0.05,
        "ppo/ratio_var": 0.01, "value/explained_variance": 0.4, "loss/policy": -0.01, "loss/value": 0.2, "optim/lr": 1e-5,
        "time/step": 1.2, "perf/tokens_per_s": 500.0,
    }


def sample_row(step, prompt_id, rng):
    tokens = ["Hello", " <b>world</b>", " &amp;", "\n", " \"quoted\"", " </script>"] + [f" w{rng.integers(100)}" for _ in range(6)]
    ratios = [float(x) for x in rng.normal(0, 1, len(tokens))]
    return {
        "step": step, "model": "reference" if step == 0 else "policy", "prompt_id": prompt_id, "prompt": f"Prompt <{prompt_id}> & 'friends'",
        "response": "".join(tokens), "tokens": tokens, "token_log_ratio": ratios, "score": float(rng.normal()), "gold_score": float(rng.normal()),
        "seq_kl": float(sum(ratios)), "length": len(tokens), "eos": True, "ref_logprob_mean": -2.0 - step / 100, "rep_ngram_rate": 0.0,
    }


def make_run(run_dir, n_steps=40, n_prompts=3, every=10, with_samples=True, torn_tail=True):
    rng = np.random.default_rng(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    history = [metrics_row(step, n_steps, rng) for step in range(1, n_steps + 1)]
    if n_steps > 3:
        history[3]["reward/score_mean"] = None  # NaN logged as null
    write_jsonl(run_dir / "metrics.jsonl", history, trailing='{"step": 41, "kl/tok' if torn_tail else "")
    eval_steps = [0] + list(range(every, n_steps + 1, every))
    samples = [sample_row(s, pid, rng) for s in eval_steps for pid in range(n_prompts)] if with_samples else []
    write_jsonl(run_dir / "samples.jsonl", samples)
    distributions = [
        {"step": row["step"], "scores": rng.normal(row["reward/score_mean"] or 0, 1, 32).tolist(), "seq_kl": rng.normal(2, 1, 32).tolist(),
         "lengths": rng.integers(20, 60, 32).tolist(), "gold_scores": None}
        for row in history
    ]
    write_jsonl(run_dir / "distributions.jsonl", distributions)
    return run_dir


def panel_html(page, panel_id):
    match = re.search(rf'<section class="panel" id="{panel_id}">(.*?)</section>', page, re.S)
    assert match, f"{panel_id} missing"
    return match.group(1)


def assert_self_contained(page):
    for panel_id in PANEL_IDS:
        assert f'id="{panel_id}"' in page
    assert not re.search(r"<script[^>]+src\s*=", page), "scripts must be inline"
    assert not re.search(r"<link[^>]+href\s*=\s*[\"']?https?://", page)
    assert page.count("Plotly.newPlot") >= 1
    assert page.count("* plotly.js v") <= 1  # plotly.js embedded at most once


def test_load_run_tolerates_torn_tail_and_nulls(tmp_path):
    run = load_run(make_run(tmp_path / "run"))
    assert run.last_step == 40 and len(run.history) == 40
    steps, values = metric_series(run.history, "reward/score_mean")
    assert len(values) == 39 and 4 not in steps
    assert run.config["kl"]["estimator"] == "k3"
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_multi_step_report(tmp_path):
    run_dir = make_run(tmp_path / "my-run")
    out = build_report(run_dir)
    assert out == run_dir / "report.html"
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "my-run" in page and "k3" in page
    assert "sampled k3 (token mean)" in page and "exact full-vocab KL (token mean)" in page
    for i in (1, 2, 3, 4):
        assert 'class="figure"' in panel_html(page, f"panel-{i}")
    assert "p95" in panel_html(page, "panel-3")
    assert "proxy reward: fit on" in panel_html(page, "panel-4") and "gold reward: fit on" in panel_html(page, "panel-4")
    assert "fig-shape-ppl" in panel_html(page, "panel-5")
    assert "<tr" in panel_html(page, "panel-6")
    samples = panel_html(page, "panel-7")
    assert samples.count('class="sample-col"') == 3 * 5  # reference + 4 eval steps, for 3 prompts
    # everything from the logs is escaped: no raw markup from tokens or prompts gets through
    assert "<b>world</b>" not in page and "&lt;b&gt;world&lt;/b&gt;" in samples
    assert "Prompt &lt;0&gt; &amp; &#x27;friends&#x27;" in samples
    assert page.count("</script>") == page.count("<script")  # a token's "</script>" did not end a script
    assert not list(tmp_path.glob("my-run/.report-*"))  # the temporary file was renamed into place


def test_single_step_run_with_empty_samples(tmp_path):
    run_dir = make_run(tmp_path / "early", n_steps=1, with_samples=False, torn_tail=False)
    page = build_report(run_dir, tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "No data yet" in panel_html(page, "panel-7")
    assert "Too early to judge" in page
    assert "no fit" in panel_html(page, "panel-4")


def test_empty_run_dir_renders_no_data_notes(tmp_path):
    page = build_report(tmp_path).read_text(encoding="utf-8")
    for panel_id in PANEL_IDS:
        assert f'id="{panel_id}"' in page
    for i in (1, 2, 3, 4, 5, 7):
        assert "No data yet" in panel_html(page, f"panel-{i}")


def test_findings_panel_lists_detector_output(tmp_path):
    run_dir = make_run(tmp_path / "collapse")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    for row in rows:
        row["policy/entropy"] = 2.0 * (1 - 0.97 * row["step"] / 40)
    write_jsonl(run_dir / "metrics.jsonl", rows)
    page = build_report(run_dir).read_text(encoding="utf-8")
    findings = panel_html(page, "panel-6")
    assert "entropy_collapse" in findings and "critical" in findings
    assert 'class="health health-critical"' in page
    from policyshift.analysis.report.panels import number

    # the top answers one question per line: collapse red (with its evidence and panel), the rest measured and quiet
    verdicts = dict(re.findall(r'data-question="(\w+)"><span class="verdict">(\w+)</span>', page))
    assert verdicts["collapse"] == "RED" and verdicts["drift"] == "GREEN" and verdicts["length"] == "GREEN"
    line = re.search(r'data-question="collapse">(.*?)</div>', page).group(1)
    assert "entropy_collapse @ step" in line and f'href="#panel-{number("shape")}"' in line


def test_verdicts_by_hand():
    """One verdict per question: red/amber from the worst finding of its detectors, green when measured and quiet,
    grey when nothing of it was measured; a detector the table does not list lands by the words in its name."""
    from policyshift.analysis.findings import Finding, sort_findings
    from policyshift.analysis.verdicts import QUESTIONS, verdicts

    history = [{"step": s, "kl/seq_mean": 0.1 * s, "reward/score_mean": 0.0, "response/length_mean": 10.0} for s in range(1, 11)]
    findings = [Finding("length_drift", "warning", 4, "length grew 2x", {}), Finding("truncation_reward", "critical", 6, "cut and scored", {}),
                Finding("kl_at_start", "info", 1, "dropout", {})]
    got = {v.question.key: v for v in verdicts(sort_findings(findings), history, [], 10)}
    assert list(got) == [q.key for q in QUESTIONS]
    assert got["length"].colour == "red" and got["length"].evidence == "truncation_reward @ step 6: cut and scored (+1 more)"
    assert got["drift"].colour == "green" and got["signal"].colour == "green"  # kl/seq_mean, reward/score_mean measured
    assert got["mismatch"].colour == "green" and "kl_at_start @ step 1" in got["mismatch"].evidence  # an info note, not an alarm
    assert got["collapse"].colour == "grey" and got["hacking"].colour == "grey"  # no entropy, no samples, no gold
    # a checkpoints-only run: reward and k1 at the checkpoints come from the fixed prompts, which cannot say whether the
    # training groups had spread or the engine sampled the trained weights
    fixed_only = [{"step": s, "reward/score_mean": 0.1 * s, "kl/k1_token_mean": 0.01 * s} for s in (0, 10, 20)]
    got = {v.question.key: v for v in verdicts([], fixed_only, [], 20, fixed={"reward/score_mean", "kl/k1_token_mean"})}
    assert got["signal"].colour == "grey" and got["mismatch"].colour == "grey" and "--logs" in got["signal"].evidence
    assert got["drift"].colour == "green"


def test_render_tokens_colours_and_titles():
    html = render_tokens(["a", "<b>", "c"], [-3.0, 0.0, 0.5])
    assert html.count('<span class="tok"') == 3
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert 'title="log π/π_ref = -3.000"' in html and 'title="log π/π_ref = +0.500"' in html
    assert token_color(0.0) == "#ffffff"
    blue, red = token_color(-5.0), token_color(5.0)
    assert int(blue[5:7], 16) > int(blue[1:3], 16)  # more blue than red
    assert int(red[1:3], 16) > int(red[5:7], 16)
    assert "n/a" in render_tokens(["x", "y"], [0.1])  # a missing ratio renders, greyed


def test_render_sample_columns():
    columns = [
        {"label": "ckpt A", "tokens": ["x"], "log_ratios": [0.2], "score": 1.5, "gold_score": None, "seq_kl": 0.2},
        {"label": "ckpt <B>", "tokens": [], "log_ratios": [], "score": 2.0, "gold_score": 0.7, "seq_kl": 3.1, "response": "plain <text>"},
    ]
    html = render_sample_columns("the <prompt>", columns)
    assert html.count('class="sample-col"') == 2
    assert "the &lt;prompt&gt;" in html and "ckpt &lt;B&gt;" in html and "plain &lt;text&gt;" in html
    assert "gold 0.7" in html and "score 1.5" in html and "seq KL 3.1" in html
    assert html.count("gold ") == 1  # no gold score shown for the column without one


@pytest.mark.parametrize("bad_line", ['{"step": 2, "kl/token_mean": ', "not json", "[1, 2]", ""])
def test_read_jsonl_skips_unparseable_lines(tmp_path, bad_line):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "x": NaN}\n' + bad_line)
    rows = read_jsonl(path)
    assert len(rows) == 1 and math.isnan(rows[0]["x"])


# ---------------------------------------------------------------- PANELS: numbers, nav, references from one list


def test_panel_numbers_nav_and_references_come_from_panels(tmp_path):
    import re

    from policyshift.analysis.report import render_report
    from policyshift.analysis.report.panels import PANELS, RENDERERS, number, ref
    from policyshift.analysis.runlog import RunData

    assert [p.key for p in PANELS] == list(dict.fromkeys(p.key for p in PANELS))  # each key once
    assert set(RENDERERS) == {p.key for p in PANELS}  # every panel renders, no renderer without a place
    assert (number("kl"), number("samples"), number("phrases")) == (1, 7, 11) and ref("samples") == "panel 7"
    # a run whose config says logs were imported but whose import mapped nothing: the imported-logs panel is
    # empty, so it is neither on the page nor in the nav (no dead link); the completions panel says how to fill it
    run = RunData(tmp_path, config={"analysis": {"imported": [{"kind": "trl scalars", "mapped": {}, "shown": [], "unknown": []}]}},
                  history=[{"step": 1, "reward/score_mean": 0.1}])
    page = render_report(run)
    sections = re.findall(r'<section class="panel" id="panel-(\d+)"><h2>(\d+)\. ', page)
    assert all(a == b for a, b in sections)
    links = re.findall(r'<a href="#panel-(\d+)">', page.split("<nav>")[1].split("</nav>")[0])  # the nav (the verdict lines above it link panels too)
    assert links == [a for a, _ in sections]  # the nav lists exactly the panels on the page, in order
    assert "8" not in links and "9" in links


def test_docs_panel_headings_follow_panels():
    """docs/guides/report.md's "The panels" section numbers its panels as PANELS does (one heading per panel, in order)."""
    import re
    from pathlib import Path

    from policyshift.analysis.report.panels import PANELS

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "report.md").read_text(encoding="utf-8")
    section = guide.split("\n## The panels\n", 1)[1].split("\n## ", 1)[0]
    assert [int(n) for n in re.findall(r"^### (\d+)\. ", section, flags=re.M)] == list(range(1, len(PANELS) + 1))


def _imported_run(tmp_path, fixture):
    """A run directory holding what `analyze --logs` writes from a fixture made by a trainer's code (tests/fixtures/)."""
    from pathlib import Path

    from policyshift.analysis.ingest import import_logs

    imported = import_logs([str(Path(__file__).parent / "fixtures" / fixture)])
    run_dir = tmp_path / fixture.replace("/", "_")
    run_dir.mkdir()
    write_jsonl(run_dir / "metrics.jsonl", [dict(values, step=step) for step, values in sorted(imported.history.items())])
    return run_dir


@pytest.mark.parametrize("fixture, says", [
    ("trl/grpo_default", ["this run logged no KL to the reference", "β = 0"]),
    ("verl/grpo_token_mean", ["verl/actor/kl_loss", "verl/actor/ppo_kl is old-vs-new"]),
    ("prime_rl/healthy", ["this run logged no KL to the reference"]),
    ("trl/grpo_batch_seq", None),  # β = 0.04: its k3 KL to the reference is fed and plotted, no notice
])
def test_kl_panel_says_when_the_run_has_no_kl_to_the_reference(tmp_path, fixture, says):
    page = build_report(_imported_run(tmp_path, fixture)).read_text(encoding="utf-8")
    kl = panel_html(page, "panel-1")
    if says is None:
        assert 'class="notice"' not in kl and "fig-kl" in kl
        return
    notice = re.search(r'<p class="notice">(.*?)</p>', kl, re.S)
    assert notice, kl
    for phrase in says:
        assert phrase in notice.group(1)
