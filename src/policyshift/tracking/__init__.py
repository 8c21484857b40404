"""Tracking sinks. Every sink has the same methods — log_config, log_scalars, log_histograms,
log_samples, close (log_findings and log_artifact where the backend has a place for them) — so a
new backend is one small file. The JSONL sink always runs: the report reads its files. TensorBoard,
W&B and MLflow run as `config.tracking` asks; make_sinks returns one MultiSink that forwards each
call to all of them, and a backend that raises is reported once and disabled (training goes on)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from policyshift.tracking.base import MultiSink, NullSink, Sink, one_line
from policyshift.tracking.jsonl import JsonlSink
from policyshift.errors import TrackingError  # noqa: F401 (defined in errors.py; old import path)


_EXTRAS = {"wandb": ("wandb", "policyshift[wandb]"), "mlflow": ("mlflow", "policyshift[mlflow]")}


def _require(backend: str) -> None:
    module, extra = _EXTRAS[backend]
    if importlib.util.find_spec(module) is None:
        raise TrackingError(f"tracking.{backend} is on but {module} is not installed: pip install '{extra}' (or set tracking.{backend}=false)")


def _start(backend: str, factory):
    try:
        return factory()
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, before any training step
        hint = " (W&B: run `wandb login`, or set WANDB_MODE=offline)" if backend == "wandb" else ""
        raise TrackingError(f"tracking.{backend}: could not start the run: {one_line(exc)}{hint}") from exc


def make_sinks(run_dir, config, is_main_process: bool = True, resume_step: int | None = None):
    """The sink a run logs to: a MultiSink over JSONL (always) and the backends `config.tracking`
    turns on; a NullSink on a non-main process. `resume_step`: the checkpoint step a resumed run
    continues from (W&B/MLflow continue the same run, TensorBoard drops the later events); None
    for a fresh run. Raises TrackingError (before any training) when a backend that is on is not
    installed or cannot start."""
    if not is_main_process:
        return NullSink()
    run_dir = Path(run_dir)
    tracking = config.tracking
    for backend in ("wandb", "mlflow"):  # check every requested backend before starting any
        if getattr(tracking, backend):
            _require(backend)
    sinks: list = [JsonlSink(run_dir)]
    try:
        if tracking.tensorboard:
            from policyshift.tracking.tensorboard import TensorBoardSink

            sinks.append(TensorBoardSink(run_dir, resume_step=resume_step))
        if tracking.wandb:
            from policyshift.tracking.wandb import WandbSink

            sinks.append(_start("wandb", lambda: WandbSink(run_dir, tracking, config.to_dict(), resume_step=resume_step)))
        if tracking.mlflow:
            from policyshift.tracking.mlflow import MlflowSink

            sinks.append(_start("mlflow", lambda: MlflowSink(run_dir, tracking, resume_step=resume_step)))
    except BaseException:
        for sink in sinks:  # do not leave a started W&B/MLflow run behind
            try:
                sink.close()
            except Exception:  # noqa: BLE001
                pass
        raise
    return MultiSink(sinks)


__all__ = ["JsonlSink", "MultiSink", "NullSink", "Sink", "TrackingError", "make_sinks"]
