"""The report's panels in page order: `PANELS` gives each panel its number (its position), its anchor
(panel-N), its link in the page's nav and every "panel N" a caption or message cites (`ref`). A panel's
module registers how it renders with `@renders(key)`; a renderer returns "" when the run has nothing for
it, and then the panel is neither on the page nor in the nav.

To add a panel: one `Panel(key, nav)` in PANELS where it belongs on the page, and its renderer
(`@renders(key)` on a function of `Page`) in a module of this package; the numbers after it follow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Panel:
    key: str
    nav: str  # its link in the page header


PANELS: tuple[Panel, ...] = (
    Panel("kl", "KL"),
    Panel("reward", "Reward"),
    Panel("distribution", "Distribution"),
    Panel("gao", "Reward vs √KL"),
    Panel("shape", "Shape"),
    Panel("findings", "Findings"),
    Panel("samples", "Samples"),
    Panel("imported", "Imported logs"),  # analyze --logs only
    Panel("completions", "Completions"),  # analyze --logs only
    Panel("probes", "Probes"),  # runs with probe suites
    Panel("phrases", "Learned phrases"),  # runs with reference and policy samples
)
_NUMBERS = {p.key: i for i, p in enumerate(PANELS, 1)}


def number(key: str) -> int:
    return _NUMBERS[key]


def ref(key: str) -> str:
    """How text cites a panel: "panel 7"."""
    return f"panel {_NUMBERS[key]}"


@dataclass
class Page:
    """What a renderer reads: the run (its history as the detectors read it), the page's figure dicts
    (a renderer adds its own), the keys read from the fixed prompts, the findings and their thresholds."""

    run: Any
    figures: dict = field(default_factory=dict)
    fixed: set = field(default_factory=set)
    findings: list = field(default_factory=list)
    thresholds: Any = None


RENDERERS: dict[str, Callable[[Page], str]] = {}


def renders(key: str):
    def register(fn: Callable[[Page], str]) -> Callable[[Page], str]:
        if key not in _NUMBERS:
            raise KeyError(f"panel {key!r} is not in PANELS")
        RENDERERS[key] = fn
        return fn

    return register
