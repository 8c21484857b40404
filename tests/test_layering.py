"""The package's import graph, read from the source (every import, those inside functions too): no cycle,
and no module imports a layer above its own. The layers, lowest first:

  base      errors, keys, runfiles, textstats, faults, progress, kv_cache, masked, manifest
  core      the algorithm and its machinery: config (it validates against the estimators' registry), kl,
            advantages, losses, sampling, data, chat, models,
            logprobs, lora, rollout, engines, runtime, distributed, checks, metrics, rewards,
            reward_render, checkpoint, rundir, tracking.*
  analysis  policyshift.analysis.* (reads run directories and models; never the trainer). Inside it:
            findings, runlog < detectors < report; ingest < discover < analyze; live is the trainer's callback.
  trainer   policyshift.trainer (drives core, calls analysis.live)
  apps      stages.*, demo.*, cli, __main__, the package's __init__

A module may import its own layer and the layers below. Imports are resolved to the module they name
(`from policyshift.analysis.ingest import lookup` is an edge to analysis.ingest, not to analysis)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "policyshift"
LAYERS = ["base", "core", "analysis", "trainer", "apps"]
BASE = {"errors", "keys", "runfiles", "textstats", "faults", "progress", "kv_cache", "masked", "manifest"}
APPS = {"stages", "demo", "cli", "__main__", ""}
# inside analysis: a module of the left group never imports one of the right group
ANALYSIS_ORDER = [
    ({"findings", "runlog", "probe", "phrases", "textstats", "gao", "suites", "instructions", "sycophancy"},
     {"detectors", "report", "multirun", "analyze", "live", "compare"}),
    ({"detectors"}, {"report", "multirun", "analyze", "live", "compare"}),
    ({"ingest"}, {"discover", "analyze", "report", "detectors", "live"}),
    ({"discover"}, {"analyze", "report", "live"}),
    ({"report", "multirun"}, {"analyze", "live", "compare"}),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules `name` imports, anywhere in it (module level, functions, TYPE_CHECKING blocks)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from a import b`: the module a.b when b is one, else a
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer(name: str) -> str:
    parts = name.split(".")[1:]
    top = parts[0] if parts else ""
    if top in BASE:
        return "base"
    if top == "analysis":
        return "analysis"
    if top == "trainer":
        return "trainer"
    if top in APPS:
        return "apps"
    return "core"


def test_no_import_cycle():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_upward_dependency():
    g = graph()
    bad = [(a, b) for a, targets in g.items() for b in targets if LAYERS.index(layer(b)) > LAYERS.index(layer(a))]
    for low, high in ANALYSIS_ORDER:
        for a, targets in g.items():
            sub = a.split(".")[2:3]
            if layer(a) == "analysis" and sub and sub[0] in low:
                bad += [(a, b) for b in targets if layer(b) == "analysis" and b.split(".")[2:3] and b.split(".")[2] in high]
    assert not bad, "upward imports (module → what it must not import): " + "; ".join(f"{a} → {b}" for a, b in sorted(set(bad)))


@pytest.mark.parametrize("source, expected", [
    ("from policyshift.analysis import ingest", {"policyshift.analysis.ingest"}),
    ("from policyshift.analysis.ingest import lookup", {"policyshift.analysis.ingest"}),
    ("def f():\n    import policyshift.trainer", {"policyshift.trainer"}),
    ("from policyshift import keys as K", {"policyshift.keys"}),
])
def test_the_scan_counts_every_import(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    known = {"policyshift", "policyshift.keys", "policyshift.trainer", "policyshift.analysis", "policyshift.analysis.ingest"}
    assert imports("policyshift.analysis.x", path, known) == expected
