"""Tracking sinks. Every sink has the same five methods — log_scalars, log_histograms,
log_samples, log_config, close — so a new backend is one small file. The JSONL sink always runs:
the report reads its files."""

from policyshift.tracking.jsonl import JsonlSink

__all__ = ["JsonlSink"]
