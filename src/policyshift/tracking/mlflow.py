"""MLflow (`pip install 'policyshift[mlflow]'`), through an MlflowClient bound to one tracking URI
(no global active run is touched). The URI is tracking.mlflow_tracking_uri, else
$MLFLOW_TRACKING_URI, else a store inside the run directory: sqlite:///RUN_DIR/mlflow.db with the
artifacts in RUN_DIR/mlartifacts (MLflow 3 refuses new ./mlruns file stores by default).

Params: the resolved config flattened to dotted keys (`ppo.lr`), values stringified and cut to
MLflow's length limit; the config itself as the artifact config.yaml. Metrics: every scalar per
PPO step (names keep their slashes, `kl/token_mean`). Artifacts: samples/step-N.json (the
fixed-prompt rows of eval step N), findings/step-N.json, and report.html at close when the run
directory has one (or whatever log_artifact(path) is given). MLflow has no histogram type: the
per-sample distributions stay in distributions.jsonl. The run id is kept in RUN_DIR/tracking.json
so that a resumed training run continues the same MLflow run."""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

from policyshift.tracking.base import as_number, clean_json, flatten, read_ids, write_id
from policyshift.runfiles import REPORT_FILE


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def _param_value(value, limit: int) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MlflowSink:
    name = "mlflow"

    def __init__(self, run_dir: str | Path, tracking, resume_step: int | None = None):
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(run_dir)
        explicit = tracking.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.client = MlflowClient(tracking_uri=explicit or default_tracking_uri(self.run_dir))
        exp = self.client.get_experiment_by_name(tracking.mlflow_experiment)
        if exp is not None:
            self.experiment_id = exp.experiment_id
        else:
            location = None if explicit else (self.run_dir / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(tracking.mlflow_experiment, artifact_location=location)
        self.run_id = self._resumable_run() if resume_step is not None else None
        if self.run_id:
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=tracking.run_name or self.run_dir.resolve().name,
                                         tags={"mlflow.source.name": "policyshift", "policyshift.run_dir": str(self.run_dir.resolve())})
            self.run_id = run.info.run_id
        write_id(self.run_dir, "mlflow_run_id", self.run_id)
        self._closed = False
        atexit.register(self._at_exit)

    def _resumable_run(self) -> str | None:
        run_id = read_ids(self.run_dir).get("mlflow_run_id")
        if not run_id:
            return None
        try:
            return self.client.get_run(run_id).info.run_id
        except Exception:  # noqa: BLE001 - not in this store: start a new run
            return None

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:  # pragma: no cover - older MLflow
            limit = 500
        existing = self.client.get_run(self.run_id).data.params  # a resumed run: params cannot change
        params = [Param(k, _param_value(v, limit)) for k, v in flatten(config).items() if k not in existing]
        for i in range(0, len(params), 100):  # MLflow's per-batch limit on params
            self.client.log_batch(self.run_id, params=params[i: i + 100])
        self.client.log_dict(self.run_id, clean_json(config), "config.yaml")

    def log_scalars(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, x, now, step) for k, v in metrics.items() if (x := as_number(v)) is not None]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i: i + 1000])

    def log_histograms(self, values: dict, step: int) -> None:
        pass  # no histogram type in MLflow; distributions.jsonl has them

    def log_samples(self, rows: list[dict], step: int) -> None:
        if rows:
            self.client.log_dict(self.run_id, clean_json([{"step": step, **r} for r in rows]), f"samples/step-{step}.json")

    def log_findings(self, findings: list[dict], step: int) -> None:
        if findings:
            self.client.log_dict(self.run_id, clean_json([{"logged_at_step": step, **f} for f in findings]), f"findings/step-{step}.json")

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path)
        if path.exists():
            self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        try:
            report = self.run_dir / REPORT_FILE
            if report.is_file():
                self.log_artifact(report)
        finally:
            self.client.set_terminated(self.run_id, "FINISHED")

    def _at_exit(self) -> None:  # the process ends without close(): an exception or a kill
        if not self._closed:
            self._closed = True
            try:
                self.client.set_terminated(self.run_id, "FAILED")
            except Exception:  # noqa: BLE001
                pass
