"""Detectors of RLHF pathologies over a run's logs: reward hacking, KL runaway, collapse, PPO blow-ups.

The registry: every module of this package except `common` is a detector family that defines
  ORDER        its place in the registry (the order of `DETECTORS` and of the thresholds' fields),
  Thresholds   a dataclass of the thresholds it owns (field names unique across families; the shared
               ones — min_steps, windows, significance — are common.Thresholds),
  DETECTORS    {name: detect(history, samples, t, distributions=(), reference=None) -> list[Finding]},
  from_config  (optional) config -> {field: value}: the values a run's config sets (analysis.kl_budget).
  ADVICE       {name: findings.Advice}: what each of its detectors detects, what healthy and broken look
               like, what to do. The detectors reference page and the report's findings panel read it (the one
               copy); tests/test_docs.py fails for a detector without it.
`DetectorThresholds` composes every family's thresholds into one object, so each detector reads
`t.<field>` and the report shows one "thresholds used" table; `run_detectors` runs every detector.
The trainer's live analysis and the offline report call the same `run_detectors`.

To add a detector: write `analysis/detectors/<family>.py` with ORDER, Thresholds, DETECTORS and ADVICE (and
from_config if a config key sets a threshold), plus its test (a history or samples that must fire it and
a healthy one that must not). Nothing else changes.

Inputs: `history` is the metrics.jsonl rows ordered by step, `samples` the fixed-prompt evaluation rows,
`distributions` the per-step score/KL/length lists, `reference` the reference's step-0 row when the
history holds only training steps (a live run). Trend detectors compare a window at the *end* of the
run with a window at its *start* (or fit slopes), never single steps, and stay silent until the run has
`min_steps` logged steps: a per-step batch is noisy, and a 1–3 step run has no trend to diagnose.
Rewards are compared in units of the batch reward std at the start, so thresholds do not depend on the
reward model's scale.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from types import ModuleType
from typing import Callable

from policyshift.analysis.detectors import common
from policyshift.analysis.findings import SEVERITY_RANK, Advice, Finding, sort_findings  # noqa: F401 (old import path)


def _families() -> list[ModuleType]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "common" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for attr in ("ORDER", "Thresholds", "DETECTORS"):
            if not hasattr(module, attr):
                raise TypeError(f"{module.__name__}: a detector family defines ORDER, Thresholds and DETECTORS (no {attr})")
        found.append(module)
    return sorted(found, key=lambda m: m.ORDER)


FAMILIES: list[ModuleType] = _families()
DETECTORS: dict[str, Callable[..., list[Finding]]] = {name: fn for family in FAMILIES for name, fn in family.DETECTORS.items()}
# Read here, not required by _families: a detector without advice still runs (the docs test names it).
ADVICE: dict[str, Advice] = {name: advice for family in FAMILIES for name, advice in getattr(family, "ADVICE", {}).items() if name in DETECTORS}


def advice_for(finding_detector: str) -> Advice | None:
    """The advice behind a finding: by its detector's name, or by a name the detector reports under (Advice.findings)."""
    if finding_detector in ADVICE:
        return ADVICE[finding_detector]
    return next((a for a in ADVICE.values() if finding_detector in a.findings), None)


def _compose() -> type:
    specs, owner = [], {}
    for module in (common, *FAMILIES):
        for f in dataclasses.fields(module.Thresholds):
            if f.name in owner:
                raise TypeError(f"threshold {f.name} defined by {owner[f.name]} and {module.__name__}")
            owner[f.name] = module.__name__
            specs.append((f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory)))

    def from_config(cls, config: dict | None, **overrides) -> "DetectorThresholds":
        """Defaults, with what the run's config sets (each family's from_config: analysis.kl_budget, the probe
        suites' directions), then `overrides`."""
        values = {}
        for module in FAMILIES:
            if hasattr(module, "from_config"):
                values.update(module.from_config(config or {}))
        values.update(overrides)
        return cls(**values)

    doc = "Every threshold the detectors use, one field per family threshold. Rewards are in units of the start's batch reward std (σ)."
    return dataclasses.make_dataclass("DetectorThresholds", specs, namespace={"from_config": classmethod(from_config), "__doc__": doc,
                                                                              "__module__": __name__})


DetectorThresholds = _compose()


def run_detectors(history, samples, thresholds=None, distributions=(), reference: dict | None = None) -> list[Finding]:
    """All detectors over a run's logs, worst finding first. `distributions` (distributions.jsonl rows) is
    optional: it sharpens the reward-vs-length check, which otherwise uses the eval samples. `reference`:
    the reference's step-0 row (probe scores) when `history` starts at step 1 (the trainer's live history)."""
    from policyshift.analysis.runlog import History

    t = thresholds or DetectorThresholds()
    history = history if isinstance(history, History) else list(history or [])  # a live run's History: its columns kept
    samples, distributions = list(samples or []), list(distributions or [])
    findings = []
    for detect in DETECTORS.values():
        findings.extend(detect(history, samples, t, distributions, reference=reference))
    return sort_findings(findings)
