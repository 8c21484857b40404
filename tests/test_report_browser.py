"""The report in a real browser: headless Chromium loads it offline (all DNS blocked), every figure
renders, and the page records no errors. report.js sets <body data-rendered="ok"|"error"> once the
plots are drawn and <body data-errors="[...]"> with every window error, rejected promise and
console.error, which is what these tests read from the dumped DOM."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from policyshift.analysis.report import build_report, standalone_page
from test_report import make_run

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install chromium)")


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM after load and after the page's scripts ran (virtual time lets the promises settle)."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: the page must be self-contained
        "--virtual-time-budget=15000", "--dump-dom", page.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def body_state(dom: str) -> tuple[str | None, list]:
    body = re.search(r"</head>\s*<body([^>]*)>", dom).group(1)
    rendered = re.search(r'data-rendered="([^"]*)"', body)
    errors = re.search(r'data-errors="([^"]*)"', body)
    errors_list = json.loads(errors.group(1).replace("&quot;", '"').replace("&amp;", "&")) if errors else []
    return (rendered.group(1) if rendered else None), errors_list


def panel(dom: str, number: int) -> str:
    match = re.search(rf'<section class="panel" id="panel-{number}">(.*?)</section>', dom, re.S)
    assert match, f"panel-{number} missing from the rendered page"
    return match.group(1)


def test_report_renders_every_panel_without_errors(tmp_path):
    report = build_report(make_run(tmp_path / "run"))
    dom = dump_dom(report, tmp_path / "profile")
    rendered, errors = body_state(dom)
    assert errors == []
    assert rendered == "ok"
    for number in (1, 2, 3, 4, 5):
        assert "main-svg" in panel(dom, number), f"panel-{number} has no rendered plot"
    assert panel(dom, 5).count('class="main-svg"') >= 6 * 2  # six small multiples (plotly draws 2+ svgs each)
    assert panel(dom, 3).count("<tr") >= 2 and panel(dom, 6).count("<tr") >= 2
    assert panel(dom, 7).count('class="tok"') > 0


def test_single_step_report_renders(tmp_path):
    report = build_report(make_run(tmp_path / "early", n_steps=1, with_samples=False, torn_tail=False))
    dom = dump_dom(report, tmp_path / "profile")
    assert body_state(dom) == ("ok", [])
    assert "main-svg" in panel(dom, 1)
    assert "No data yet" in panel(dom, 7)


def test_errors_on_the_page_are_caught(tmp_path):
    # the harness itself: a script error must surface as data-rendered="error", not a silent pass
    page = tmp_path / "broken.html"
    body = '<div id="f"></div><script>definitelyNotDefined();</script>'
    page.write_text(standalone_page("broken", body, {"f": {"data": [{"type": "scatter", "x": [1], "y": [1]}], "layout": {}}}))
    rendered, errors = body_state(dump_dom(page, tmp_path / "profile"))
    assert rendered == "error"
    assert any("definitelyNotDefined" in e for e in errors)
