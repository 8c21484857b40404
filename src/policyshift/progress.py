"""Console progress: a rich bar with step, reward, KL, β and time per step."""

from __future__ import annotations

from rich.console import Console

from policyshift import keys as K
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class StepProgress:
    def __init__(self, total: int, start: int = 0, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]PPO"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("ppo", total=total, completed=start, stats="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:  # an error is on its way out: leave its one line alone on the console
            self.progress.live.transient = True
        return self.progress.__exit__(*exc)

    def update(self, step: int, m: dict) -> None:
        # no KL when the reference did not score the batch (kl.score_reference false)
        kl = f"KL {m[K.KL_SEQ_MEAN]:.3f}  " if K.KL_SEQ_MEAN in m else ""
        stats = f"reward {m[K.SCORE_MEAN]:+.3f}  {kl}β {m[K.KL_BETA]:.4f}  {m[K.TIME_STEP]:.2f}s/step"
        self.progress.update(self.task, completed=step, stats=stats)
        if not self.console.is_terminal:  # logs and CI get one line per step instead of a redrawn bar
            self.console.print(f"step {step}: {stats}", highlight=False)
