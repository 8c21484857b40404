"""Analysis while training: fixed-prompt samples at step 0 (the reference) and every
`analysis.every` steps, and the detectors run on the growing history (console warnings,
optional clean stop).

The trainer hands `LiveAnalysis` a read-only `TrainingView` of what the analysis needs (models, sampling
settings, the rows logged so far, the sink), never itself. The analysis writes only through the sink and
returns what it measured: the trainer adds a step's probe scores to its own row of the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

from policyshift.analysis.detectors import DetectorThresholds, run_detectors
from policyshift.analysis.findings import at_least
from policyshift.analysis.probe import sample_fixed_prompts
from policyshift.analysis.suites import evaluate_suites, load_suites
from policyshift.models import PolicyAndCritic


@dataclass(frozen=True)
class TrainingView:
    """What the live analysis reads of a training run. Callables are read when called (the sampling
    settings and the precision context may depend on the step; the rows grow)."""

    config: dict  # the run's resolved config (detector thresholds, analysis.stop_on, analysis.probes)
    models: Any  # PolicyAndCritic being trained: sampled as the policy
    reference: Any  # π_ref
    tokenizer: Any
    prompts: list[str]  # the fixed prompts
    fields: dict[str, list]  # their other columns, for reward functions that take them
    rollout: Callable[[], Any]  # the sampling settings (RolloutConfig) as sampling must see them
    max_prompt_length: int  # the fitted prompt budget of the fixed prompts
    suite_prompt_length: int  # data.max_prompt_length: the probe suites fit their own prompts to it
    max_new_tokens: int
    seed: int  # the fixed-prompt sampling seed (probe.fixed_prompt_seed of train.seed)
    reward: Any
    gold_reward: Any
    precision: Callable[[], ContextManager]  # autocast + whole weights around sampling
    history: Callable[[], Sequence[dict]]  # the training rows so far (step ≥ 1)
    distributions: Callable[[], Sequence[dict]]
    sink: Callable[[], Any]  # where samples, probe scores and findings are logged (built after the analysis: its suites are checked first)
    probes: Sequence = ()  # analysis.probes: the probe suites (config.ProbeSuiteConfig)
    stop_on: str = "none"  # analysis.stop_on
    logged_samples: Sequence[dict] = ()  # a resumed run's, up to its checkpoint
    logged_findings: Sequence[dict] = ()
    reference_probes: dict = field(default_factory=dict)  # a resumed run's step-0 probe scores


class LiveAnalysis:
    def __init__(self, view: TrainingView, console):
        """`console`: the run's (quiet on every process but the main one: all run the analysis, one speaks)."""
        self.view = view
        self.console = console
        self.thresholds = DetectorThresholds.from_config(view.config)
        # a resumed run picks up what it logged up to its checkpoint (empty for a new run)
        self.samples: list[dict] = list(view.logged_samples)
        self._evaluated_steps: set[int] = {r["step"] for r in self.samples}
        self.reported: set[tuple[str, str]] = {(f["detector"], f["severity"]) for f in view.logged_findings}
        # the reference's probe scores (step 0) stay out of the training history; the probe_change detector reads them
        self.reference_probes: dict = dict(view.reference_probes)
        self.stop_on = view.stop_on
        self.suites = load_suites(list(view.probes or []), view.tokenizer, view.reference, view.suite_prompt_length, view.max_new_tokens)

    def evaluated(self, step: int) -> bool:
        return step in self._evaluated_steps

    def evaluate(self, step: int, reference: bool = False) -> dict:
        """Score the probe suites and sample the fixed prompts at `step` (the reference at step 0). Returns the
        probe scores of a policy step, which belong to that step's row of the history."""
        v = self.view
        models = PolicyAndCritic(policy=v.reference, critic=v.models.critic, value_head=v.models.value_head) if reference else v.models
        metrics = self.evaluate_probes(step, models)
        if v.prompts:
            with v.precision():
                rows = sample_fixed_prompts(models, v.reference, v.tokenizer, v.prompts, v.rollout(), v.max_prompt_length,
                                            reward=v.reward, gold_reward=v.gold_reward, seed=v.seed, fields=v.fields)
            for row in rows:
                row["model"] = "reference" if reference else "policy"
            v.sink().log_samples(rows, step)
            self.samples.extend({"step": step, **r} for r in rows)
            self._evaluated_steps.add(step)
        return {} if step == 0 else metrics

    def evaluate_probes(self, step: int, models) -> dict:
        """Score each probe suite; its metrics (probe/<name>) go to the sinks and, returned, into the step's row."""
        v = self.view
        if not any(not s.disabled for s in self.suites):
            return {}
        warn = lambda line: self.console.print(f"warning: {line}", highlight=False, markup=False, soft_wrap=True)  # noqa: E731
        with v.precision():
            metrics = evaluate_suites(self.suites, models, v.reference, v.tokenizer, v.rollout(), v.seed, warn)
        if metrics:
            v.sink().log_scalars(metrics, step)
            if step == 0:
                self.reference_probes = {"step": 0, **metrics}
        return metrics

    def check(self, step: int) -> str | None:
        """The detectors on the history so far: new findings printed and logged. Returns a reason to stop (a
        finding at or above analysis.stop_on), else None."""
        v = self.view
        # the history has no step 0: the probe_change detector reads the reference's probe scores from `reference`
        findings = run_detectors(v.history(), self.samples, self.thresholds, distributions=v.distributions(),
                                 reference=self.reference_probes or None)
        new = [f for f in findings if (f.detector, f.severity) not in self.reported and f.severity != "info"]
        for f in new:
            self.reported.add((f.detector, f.severity))
            colour = "red" if f.severity == "critical" else "yellow"
            self.console.print(f"[{colour}]{f.severity}[/] [bold]{f.detector}[/] (step {f.step}): {f.message}", highlight=False, soft_wrap=True)  # one line each
        if new:
            v.sink().log_findings([f.log_row() for f in new], step)
        if self.stop_on != "none":
            worst = [f for f in findings if at_least(f.severity, self.stop_on)]
            if worst:
                return f"{worst[0].detector}: {worst[0].message}"
        return None
