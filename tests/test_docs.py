"""The documentation's generated reference (docs/gen_reference.py, read through policyshift.docmeta) is complete:
every config field, metric key and CLI option has a description, every detector and importer has its section,
and the descriptions' pointers to old README sections resolve. Building the site itself (`mkdocs build --strict`)
is a step of .ci/run."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Optional

import pytest

from policyshift import docmeta, keys

ROOT = Path(__file__).resolve().parents[1]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing renders nothing (only mkdocs' run or `python gen_reference.py OUT`)
    return module


def test_every_config_field_has_a_description():
    fields = docmeta.config_fields()
    assert len(fields) > 80 and {"model", "rollout", "kl", "algorithm", "ppo", "analysis.probes[]", "tracking"} <= {f.section for f in fields}
    missing = [f"{f.section}.{f.name}" for f in fields if not f.description]
    assert not missing, f"config fields without a comment in config.py: {missing}"
    for name, cls in docmeta.stage_configs().items():
        missing = [f.name for f in docmeta.dataclass_fields(cls) if not f.description]
        assert not missing, f"`policyshift {name}` fields without a comment: {missing}"


def test_a_field_without_a_comment_is_caught():
    @dataclasses.dataclass
    class Example:
        # the block above a field is its description
        described: int = 1
        trailing: Optional[str] = None  # so is a comment beside it
        bare: float = 0.5

    docs = {d.name: d for d in docmeta.dataclass_fields(Example)}
    assert docs["described"].description == "the block above a field is its description"
    assert docs["trailing"].description == "so is a comment beside it" and docs["trailing"].type == "str | null"
    assert docs["bare"].description == "" and docs["bare"].default == 0.5


def test_every_metric_key_has_a_unit_and_a_meaning():
    documented = {k.constant: k for k in docmeta.metric_keys()}
    constants = {name for name, value in vars(keys).items() if name.isupper() and isinstance(value, str)}
    assert constants == set(documented), f"keys.py constants the parser missed: {constants ^ set(documented)}"
    missing = [k.key for k in documented.values() if not (k.unit and k.meaning)]
    assert not missing, f"metric keys without '# [unit] meaning' in keys.py: {missing}"
    assert documented["KL_SEQ_MEAN"].unit == "nats/sequence" and "kl_budget" in documented["KL_SEQ_MEAN"].healthy


def test_every_cli_command_and_option_has_help():
    description, commands = docmeta.cli_commands()
    assert "PPO-RLHF" not in description and "GRPO" in description
    names = {c.name for c in commands}
    assert {"train", "report", "analyze", "verify", "compare", "sft", "reward-model", "demo"} <= names
    missing = [c.name for c in commands if not c.help] + [f"{c.name} {o.flags}" for c in commands for o in c.options if not o.help]
    assert not missing, f"commands or options without help= in cli.py: {missing}"


def test_every_detector_and_importer_is_on_its_page():
    gen = _gen()
    page = gen.detectors_page()
    for d in docmeta.detectors():
        assert f"## `{d.name}`" in page
    for t in docmeta.detector_thresholds():
        assert f"`{t.name}`" in page
    page = gen.importers_page()
    importers = docmeta.importers()
    assert {"trl", "verl", "openrlhf"} <= {i.name for i in importers}
    for imp in importers:
        for m in imp.keys:
            assert f"| `{m.key}` |" in page and m.meaning, (imp.name, m.key)


def test_every_detector_declares_its_advice_and_the_page_and_report_show_it():
    from policyshift.analysis import detectors
    from policyshift.analysis.findings import Advice, Finding
    from policyshift.analysis.report.training import panel_findings

    docs = docmeta.detectors()
    assert {d.name for d in docs} == set(detectors.DETECTORS)
    missing = [d.name for d in docs if not isinstance(d.advice, Advice)]
    assert not missing, f"detectors without an ADVICE entry in their family module (analysis/detectors/<family>.py): {missing}"
    stale = [f"{family.__name__}: {name}" for family in detectors.FAMILIES for name in getattr(family, "ADVICE", {}) if name not in family.DETECTORS]
    assert not stale, f"ADVICE entries naming no detector of their family: {stale}"
    empty = [f"{d.name}.{f.name}" for d in docs for f in dataclasses.fields(Advice) if f.name != "findings" and not getattr(d.advice, f.name).strip()]
    assert not empty, f"advice fields left empty: {empty}"
    gen = _gen()
    page = gen.detectors_page()
    for d in docs:
        section = page.split(f"## `{d.name}`", 1)[1].split("\n## ", 1)[0]
        assert gen.cell(d.advice.action, "reference/detectors.md") in section and "**What to do:**" in section, d.name
    # a finding reported under another name than its detector's (degenerate_groups) finds its advice too
    assert detectors.advice_for("all_wrong_groups") is detectors.ADVICE["degenerate_groups"]
    assert detectors.advice_for("no_such_detector") is None
    # the report's findings panel shows the same text, from the same field
    html = panel_findings([Finding("kl_runaway", "critical", 7, "KL over budget", {})], None, detectors.DetectorThresholds())
    assert "what to do" in html and gen.html.escape(detectors.ADVICE["kl_runaway"].action, quote=False) in html


def test_pages_render_and_old_readme_pointers_resolve(tmp_path):
    gen = _gen()
    for path, render in gen.PAGES.items():
        text = render()
        assert text.startswith(gen.GENERATED) and "README" not in text.replace("README.md", ""), path
    with pytest.raises(KeyError, match="no such section"):
        gen.cell('see README "no such section"')
    # a docs path in a description becomes a relative link; one that names no page fails the build
    assert gen.cell("see docs/guides/algorithms.md#loss-shapes.", "reference/config.md") == (
        "see [docs/guides/algorithms.md#loss-shapes](../guides/algorithms.md#loss-shapes).")
    assert gen.cell("docs/reference/metrics.md", "reference/detectors.md") == (  # a generated page counts as a page
        "[docs/reference/metrics.md](../reference/metrics.md)")
    with pytest.raises(KeyError, match="not a docs page"):
        gen.cell("see docs/guides/no-such-page.md")
    for page in gen.SECTIONS.values():
        assert (ROOT / "docs" / page.split("#")[0]).is_file() or page.startswith("reference/"), page
