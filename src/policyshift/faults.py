"""Fault injection for the reliability tests: POLICYSHIFT_FAULT="point:step" makes the run die
(SIGKILL) or fail (disk full) at a named point, so kill-and-resume can be tested at exact places
that timing could not hit reliably; "point:step@rank" only in that process of a distributed run
(RANK, as `accelerate launch` sets it). Unset in normal use: one dictionary lookup per point."""

from __future__ import annotations

import errno
import os
import signal


def fault_point(point: str, step: int) -> None:
    spec = os.environ.get("POLICYSHIFT_FAULT")
    if not spec:
        return
    name, _, at = spec.partition(":")
    at, _, rank = at.partition("@")
    if at != str(step) or (rank and rank != os.environ.get("RANK", "0")):
        return
    if name == point and point.startswith("disk_full"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if name == point:
        os.kill(os.getpid(), signal.SIGKILL)


def fault_active(point: str, step: int) -> bool:
    """A fault that changes a value instead of killing: POLICYSHIFT_FAULT="point:step" names this point and step."""
    spec = os.environ.get("POLICYSHIFT_FAULT")
    return bool(spec) and spec == f"{point}:{step}"
