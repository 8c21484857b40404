"""Probe suites (README "Probe suites"): a named set of fixed prompts, a scorer and a direction,
scored on the reference at step 0 and on the policy at each evaluation — by the trainer's live
analysis, `policyshift analyze` and `policyshift compare`, all through `evaluate_suites`.

A scorer is anything policyshift.rewards can call: a built-in (`instructions`: analysis.instructions),
a user function `module:function` / `file.py:function` called as f(prompts, responses, **fields) with
the prompt rows' other fields it names, or an HF sequence-classification model (a reward model or a
classifier whose logit is the score). A suite whose scorer raises or returns a non-finite value is
disabled with one line, and the run goes on without it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import Callable

from policyshift import keys
from policyshift.config import ConfigError, OneLineError
from policyshift.models import ModelError
from policyshift.errors import SuiteError  # noqa: F401 (defined in errors.py; old import path)


@dataclass
class Suite:
    name: str
    higher_is_better: bool
    prompts: list[str]
    fields: dict[str, list]  # the prompt rows' other columns, one list per field (the scorer's arguments)
    scorer: object  # policyshift.rewards.FunctionReward or ModelReward
    max_prompt_length: int
    disabled: str | None = None  # why the suite stopped being scored
    sycophancy: bool = False  # `scorer` is the stance scorer; the suite's scores are the stance shifts (analysis.sycophancy)
    samples_per_prompt: int = 1


def shipped_prompts(scorer: str) -> str:
    """The prompt set shipped with a built-in scorer (package data)."""
    return str(resources.files("policyshift.analysis") / "probe_data" / f"{scorer}.jsonl")


def make_scorer(spec: str):
    from policyshift.rewards import FunctionReward, make_reward

    if spec == "instructions":
        from policyshift.analysis.instructions import instruction_scorer

        return FunctionReward(instruction_scorer, "probe scorer instructions")
    if ":" in spec or spec.endswith(".py"):
        return make_reward(function=spec)
    return make_reward(model=spec)


def load_suites(configs: list, tokenizer, model, max_prompt_length: int, max_new_tokens: int) -> list[Suite]:
    """Each configured suite's prompts (chat rows rendered with `tokenizer`), fields and scorer;
    SuiteError (one line) when a prompts file or scorer cannot be used."""
    from policyshift.checks import fit_prompt_budget, model_context
    from policyshift.data import load_prompt_rows

    suites = []
    for c in configs:
        try:
            rows = load_prompt_rows(c.prompts or shipped_prompts(c.scorer), c.prompt_field, tokenizer=tokenizer)
            fields = {k: [row.fields.get(k) for row in rows] for k in sorted({k for row in rows for k in row.fields})}
            if c.scorer == "sycophancy":
                from policyshift.analysis.sycophancy import check_pairs

                check_pairs(fields.get("pair"), fields.get("opinion"), c.prompts)
            scorer = make_scorer(c.stance if c.scorer == "sycophancy" else c.scorer)
        except (OneLineError, ModelError) as exc:
            raise SuiteError(f"probe suite {c.name}: {exc}") from None
        prompts = [row.text for row in rows]
        budget = fit_prompt_budget(tokenizer, prompts, max_prompt_length, max_new_tokens, model_context(model.config), "max_new_tokens")
        suites.append(Suite(c.name, c.higher_is_better, prompts, fields, scorer, budget, sycophancy=c.scorer == "sycophancy",
                            samples_per_prompt=c.samples_per_prompt))
    return suites


def mean_and_se(scores: list[float]) -> tuple[float, float]:
    """Mean and its standard error, sample std (n − 1) / √n; 0 for a single score."""
    n = len(scores)
    mean = sum(scores) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n)


def evaluate_suites(suites: list[Suite], models, ref_policy, tokenizer, rollout_cfg, seed: int, warn: Callable[[str], None]) -> dict:
    """Sample every enabled suite's prompts from `models.policy` (the same seed at every step) and score
    them. Returns {probe/<name>: mean, probe/<name>_se: standard error}. A scorer
    that fails disables its suite: `warn` gets one line, the other suites go on."""
    from policyshift.analysis.probe import sample_fixed_prompts
    from policyshift.rewards import RewardError

    metrics = {}
    for s in suites:
        if s.disabled:
            continue
        k = s.samples_per_prompt  # each prompt k times in a row: one generator, k different samples
        try:
            rows = sample_fixed_prompts(models, ref_policy, tokenizer, [p for p in s.prompts for _ in range(k)], rollout_cfg, s.max_prompt_length,
                                        reward=s.scorer, seed=seed, fields={f: [v for v in vs for _ in range(k)] for f, vs in s.fields.items()})
        except (RewardError, OneLineError) as exc:
            s.disabled = str(exc)
            warn(f"probe suite {s.name} disabled: {exc}")
            continue
        scores = [r["score"] for r in rows]
        bad = [i for i, v in enumerate(scores) if not math.isfinite(v)]
        if bad:
            s.disabled = f"scorer returned {scores[bad[0]]} for prompt {s.prompts[bad[0] // k][:60]!r}"
            warn(f"probe suite {s.name} disabled: {s.disabled}")
            continue
        scores = [sum(scores[i * k : (i + 1) * k]) / k for i in range(len(s.prompts))]  # per prompt: the unit of the standard error
        if s.sycophancy:
            from policyshift.analysis.sycophancy import stance_shifts

            scores = stance_shifts(s.fields["pair"], s.fields["opinion"], scores)
        mean, se = mean_and_se(scores)
        metrics[keys.probe_key(s.name)], metrics[keys.probe_se_key(s.name)] = mean, se
    return metrics


def read_probe_suites(path: str, flag: str = "--probes") -> list:
    """The suites of a YAML file (`analyze`/`compare` --probes): `probes: [...]`, or a training config's
    `analysis.probes` (the run's config can be given as is). ConfigError (one line) otherwise."""
    from policyshift.config import ProbeSuiteConfig, build_dataclass, load_yaml, short_repr, validate_probe_suites

    try:
        data = load_yaml(path)
    except ConfigError as exc:
        raise ConfigError(f"{flag} {path}: {exc}") from None
    analysis = data.get("analysis")
    suites = data.get("probes", analysis.get("probes") if isinstance(analysis, dict) else None)
    if not isinstance(suites, list) or not suites:
        raise ConfigError(f"{flag} {path}: expected a non-empty list under 'probes:' (or analysis.probes); got {short_repr(suites)}")
    configs = [build_dataclass(ProbeSuiteConfig, s, f"{flag}[{i}].") for i, s in enumerate(suites)]
    validate_probe_suites(configs, flag)
    return configs
