"""Old import path (0.1): the probe verdict is the probe_change detector's (analysis/detectors/probe_change.py)."""

from policyshift.analysis.detectors.probe_change import Z_95, detect_probe_change, directions, last_against_reference, suite_names, verdict  # noqa: F401
