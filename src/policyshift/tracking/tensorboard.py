"""TensorBoard: RUN_DIR/tb/. Scalars per PPO step, histograms of the per-sample scores / sequence
KL / lengths (/ gold scores) per step under dist/, the fixed-prompt samples of each eval step as a
markdown table (text tab, tag `samples`), detector findings as text (tag `findings`), the resolved
config as text at step 0. `tensorboard --logdir RUN_DIR/tb`."""

from __future__ import annotations

from pathlib import Path

import yaml

from policyshift.tracking.base import as_number, finite_values, sample_columns

TB_SUBDIR = "tb"


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    text = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "")
    return text.replace("\n", " ↵ ").replace("`", "\\`")


def samples_markdown(rows: list[dict], step: int) -> str:
    columns = sample_columns(rows)
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "---|" * len(columns)
    body = ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    title = f"**step {step}** — {len(rows)} fixed-prompt samples"
    return "\n".join([title, "", header, rule, *body])


class TensorBoardSink:
    name = "tensorboard"

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / TB_SUBDIR
        if resume_step is None and self.log_dir.is_dir():
            # A fresh run in a directory it may overwrite: old event files would mix two runs in one chart.
            for old in self.log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        # On resume, purge_step drops the events an earlier process wrote after the checkpoint.
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge, flush_secs=10)

    def log_config(self, config: dict) -> None:
        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def log_scalars(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            x = as_number(value)
            if x is not None:
                self.writer.add_scalar(key, x, step)

    def log_histograms(self, values: dict, step: int) -> None:
        import numpy as np

        for key, vals in values.items():
            finite = finite_values(vals)
            if finite:  # add_histogram refuses empty or non-finite input
                self.writer.add_histogram(f"dist/{key}", np.asarray(finite, dtype=np.float64), step)

    def log_samples(self, rows: list[dict], step: int) -> None:
        if rows:
            self.writer.add_text("samples", samples_markdown(rows, step), step)
            self.writer.flush()

    def log_findings(self, findings: list[dict], step: int) -> None:
        if findings:
            lines = [f"- **{_cell(f.get('severity'))}** `{_cell(f.get('detector'))}` (step {f.get('step')}): {_cell(f.get('message'))}"
                     for f in findings]
            self.writer.add_text("findings", "\n".join(lines), step)
            self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
