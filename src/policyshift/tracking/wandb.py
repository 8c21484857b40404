"""Weights & Biases (`pip install 'policyshift[wandb]'`). wandb.init(project, entity, name,
dir=RUN_DIR, config); WANDB_MODE=offline / disabled and the other WANDB_* variables are wandb's own
and are left alone. Per PPO step: the scalars, and wandb.Histogram of scores / seq_kl / lengths
(/ gold_scores) under dist/. Per eval step: a NEW wandb.Table under its own key
`samples/step_000015` (one row per fixed prompt, a `step` column first) — a key is never
re-logged, so every eval step survives (not only the last one, TRL #2045/#2589). The run id is
kept in RUN_DIR/tracking.json so a resumed training run continues the same W&B run."""

from __future__ import annotations

from pathlib import Path

from policyshift.tracking.base import as_number, clean_json, finite_values, read_ids, sample_columns, write_id
from policyshift.runfiles import REPORT_FILE


def table_key(prefix: str, step: int) -> str:
    return f"{prefix}/step_{step:06d}"  # zero-padded: the W&B panel list sorts in step order


class WandbSink:
    name = "wandb"

    def __init__(self, run_dir: str | Path, tracking, config: dict | None = None, resume_step: int | None = None):
        import wandb

        self.wandb = wandb
        self.run_dir = Path(run_dir)
        run_id = read_ids(self.run_dir).get("wandb_run_id") if resume_step is not None else None
        kwargs = dict(
            project=tracking.wandb_project,
            entity=tracking.wandb_entity,
            name=tracking.run_name or self.run_dir.resolve().name,
            dir=str(self.run_dir),
            config=config or {},
        )
        if run_id:
            kwargs.update(id=run_id, resume="allow")
        self.run = wandb.init(**kwargs)
        if getattr(self.run, "id", None):
            write_id(self.run_dir, "wandb_run_id", self.run.id)

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_scalars(self, metrics: dict, step: int) -> None:
        data = {k: x for k, v in metrics.items() if (x := as_number(v)) is not None}
        if data:
            self.run.log(data, step=step)

    def log_histograms(self, values: dict, step: int) -> None:
        data = {}
        for key, vals in values.items():
            finite = finite_values(vals)
            if finite:
                data[f"dist/{key}"] = self.wandb.Histogram(finite)
        if data:
            self.run.log(data, step=step)

    def log_samples(self, rows: list[dict], step: int) -> None:
        if not rows:
            return
        columns = sample_columns(rows)
        table = self.wandb.Table(columns=["step", *columns],
                                 data=[[step, *(clean_json(r.get(c)) for c in columns)] for r in rows])
        self.run.log({table_key("samples", step): table}, step=step)

    def log_findings(self, findings: list[dict], step: int) -> None:
        if not findings:
            return
        columns = ["step", "detector", "severity", "message"]
        table = self.wandb.Table(columns=["logged_at_step", *columns], data=[[step, *(f.get(c) for c in columns)] for f in findings])
        self.run.log({table_key("findings", step): table}, step=step)

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_file():
            self.run.save(str(path.resolve()), base_path=str(path.resolve().parent), policy="now")

    def close(self) -> None:
        try:
            report = self.run_dir / REPORT_FILE
            if report.is_file():
                self.log_artifact(report)
        finally:
            self.run.finish()
