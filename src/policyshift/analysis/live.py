"""Analysis while training: fixed-prompt samples at step 0 (the reference) and every
`analysis.every` steps, and the detectors run on the growing history (console warnings,
optional clean stop)."""

from __future__ import annotations

from policyshift.analysis.detectors import DetectorThresholds, run_detectors
from policyshift.analysis.findings import at_least
from policyshift.analysis.probe import sample_fixed_prompts
from policyshift.models import PolicyAndCritic


class LiveAnalysis:
    def __init__(self, trainer, console):
        """`console`: the run's (quiet on every process but the main one: all run the analysis, one speaks)."""
        self.trainer = trainer
        self.console = console
        self.thresholds = DetectorThresholds.from_config(trainer.cfg.to_dict())
        # a resumed run picks up what it logged up to its checkpoint (empty for a new run)
        self.samples: list[dict] = list(trainer.logged_samples)
        self._evaluated_steps: set[int] = {r["step"] for r in self.samples}
        self.reported: set[tuple[str, str]] = {(f["detector"], f["severity"]) for f in trainer.logged_findings}
        from policyshift.analysis.runlog import merge_steps
        from policyshift.analysis.suites import load_suites

        # A resumed run read metrics.jsonl back, where probe scores are a second row of their step (step 0's the
        # only one): one row per training step, as in the history of a run that was never interrupted.
        merged = merge_steps(trainer.history)
        trainer.history[:] = [row for row in merged if row["step"] >= 1]
        # the reference's probe scores (step 0) stay out of the training history; the probe_change detector reads them
        self.reference_probes: dict = next((row for row in merged if row["step"] == 0), {})

        cfg = trainer.cfg
        self.suites = load_suites(cfg.analysis.probes or [], trainer.tokenizer, trainer.ref_policy, cfg.data.max_prompt_length, cfg.rollout.max_new_tokens)

    def evaluated(self, step: int) -> bool:
        return step in self._evaluated_steps

    def evaluate(self, step: int, reference: bool = False) -> None:
        t = self.trainer
        models = PolicyAndCritic(policy=t.ref_policy, critic=t.models.critic, value_head=t.models.value_head) if reference else t.models
        self.evaluate_probes(step, models)
        if not t.fixed_prompts:
            return
        with t.accelerator.autocast(), t.whole_weights():
            rows = sample_fixed_prompts(
                models, t.ref_policy, t.tokenizer, t.fixed_prompts, t.rollout_config, t.max_prompt_length,
                reward=t.reward, gold_reward=t.gold_reward, seed=t.cfg.train.seed + 7,
                fields={k: [row.fields.get(k) for row in t.fixed_rows] for k in t.field_names},
            )
        for row in rows:
            row["model"] = "reference" if reference else "policy"
        t.sink.log_samples(rows, step)
        self.samples.extend({"step": step, **r} for r in rows)
        self._evaluated_steps.add(step)

    def evaluate_probes(self, step: int, models) -> None:
        """Score each probe suite; its metrics (probe/<name>) join the step's row in metrics.jsonl and the sinks."""
        from policyshift.analysis.suites import evaluate_suites

        t = self.trainer
        if not any(not s.disabled for s in self.suites):
            return
        warn = lambda line: self.console.print(f"warning: {line}", highlight=False, markup=False, soft_wrap=True)  # noqa: E731
        with t.accelerator.autocast(), t.whole_weights():
            metrics = evaluate_suites(self.suites, models, t.ref_policy, t.tokenizer, t.rollout_config, t.cfg.train.seed + 7, warn)
        if metrics:
            t.sink.log_scalars(metrics, step)
            if step == 0:
                self.reference_probes = {"step": 0, **metrics}
            elif t.history and t.history[-1].get("step") == step:
                t.history[-1].update(metrics)

    def after_step(self, step: int, evaluate: bool) -> str | None:
        """Returns a reason to stop (a finding at or above analysis.stop_on), else None."""
        if evaluate:
            self.evaluate(step)
        # the history has no step 0: the probe_change detector reads the reference's probe scores from `reference`
        findings = run_detectors(self.trainer.history, self.samples, self.thresholds, distributions=self.trainer.distributions,
                                 reference=self.reference_probes or None)
        new = [f for f in findings if (f.detector, f.severity) not in self.reported and f.severity != "info"]
        for f in new:
            self.reported.add((f.detector, f.severity))
            colour = "red" if f.severity == "critical" else "yellow"
            self.console.print(f"[{colour}]{f.severity}[/] [bold]{f.detector}[/] (step {f.step}): {f.message}", highlight=False)
        if new:
            self.trainer.sink.log_findings([{"detector": f.detector, "severity": f.severity, "step": f.step, "message": f.message} for f in new], step)
        stop_on = self.trainer.cfg.analysis.stop_on
        if stop_on != "none":
            worst = [f for f in findings if at_least(f.severity, stop_on)]
            if worst:
                return f"{worst[0].detector}: {worst[0].message}"
        return None

