"""What a detector reports (`Finding`), the one severity order, and the order findings are shown in."""

from __future__ import annotations

import re
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

    def __post_init__(self):
        # a number that was never logged formats as "nan"/"inf" ("+nanσ"): every finding's text says n/a instead,
        # whichever detector wrote it (the evidence keeps the NaN; it is written as null)
        object.__setattr__(self, "message", missing_numbers(self.message))

    def to_dict(self) -> dict:
        return asdict(self)

    def log_row(self) -> dict:
        """The row a sink's log_findings writes (findings.jsonl adds `logged_at_step`): the trainer's live
        analysis and `policyshift analyze` both write this, so one reader serves both."""
        return {key: _plain(getattr(self, key)) for key in LOG_KEYS}


def _plain(value):
    """JSON-ready: numpy scalars (a detector's evidence often holds them) as Python numbers, at any depth."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)) else value


LOG_KEYS = ("detector", "severity", "step", "message", "evidence")  # a findings.jsonl row, after logged_at_step


# Python's float formatting of NaN/inf under any format spec: nan, +nan, -inf, inf%, nanσ (a word boundary does not
# hold before σ or ×, so the letters are matched as a token not followed by another letter of a word)
_MISSING = re.compile(r"[+-]?(?<![A-Za-z])(?:nan|inf)(?![A-Za-z])")


def missing_numbers(text: str) -> str:
    """`text` with every formatted non-finite number as "n/a"."""
    return _MISSING.sub("n/a", text)


def at_least(severity: str, level: str) -> bool:
    """`severity` is `level` or worse ("critical" is at least "warning")."""
    return SEVERITY_RANK.get(severity, len(SEVERITIES)) <= SEVERITY_RANK[level]


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first: critical before warning before info, then earliest step, then detector name."""
    return sorted(findings, key=lambda f: (SEVERITY_RANK.get(f.severity, 9), f.step, f.detector))


@dataclass(frozen=True)
class Advice:
    """What a detector tells its reader, declared beside it (each detector family's ADVICE, {detector name: Advice}):
    the detectors reference page (docs/gen_reference.py) and the report's findings panel both read it, so the
    advice is written once, next to the code that fires."""

    detects: str  # what goes wrong in a run when it fires
    healthy: str  # what a healthy run shows on the same signal
    broken: str  # what fires it, and what makes it critical
    action: str  # what to do
    findings: tuple[str, ...] = ()  # the names its findings carry, when not the detector's own (degenerate_groups)
