"""What a detector reports (`Finding`), the one severity order, and the order findings are shown in."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

SEVERITIES = ("critical", "warning", "info")  # worst first: the one order (sorting, --fail-on, analysis.stop_on)
SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}  # lower is worse


@dataclass(frozen=True)
class Finding:
    detector: str
    severity: str  # "info" | "warning" | "critical"
    step: int  # when the condition set in (or the step it was observed at)
    message: str  # one sentence: what happened, the evidence numbers, and what it suggests
    evidence: dict

    def to_dict(self) -> dict:
        return asdict(self)


def at_least(severity: str, level: str) -> bool:
    """`severity` is `level` or worse ("critical" is at least "warning")."""
    return SEVERITY_RANK.get(severity, len(SEVERITIES)) <= SEVERITY_RANK[level]


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first: critical before warning before info, then earliest step, then detector name."""
    return sorted(findings, key=lambda f: (SEVERITY_RANK.get(f.severity, 9), f.step, f.detector))
