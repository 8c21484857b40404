"""Rewards: an HF sequence-classification reward model (with its own tokenizer) or any Python
callable f(prompts, responses) -> floats; then the missing-EOS penalty, normalization and clipping."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from policyshift.config import short_repr
from policyshift.errors import RewardError  # noqa: F401 (defined in errors.py; old import path)


def _reward_target(spec: str) -> tuple[str, str]:
    """(file.py or module, function name) of a reward function spec; RewardError for a file that is not there or a
    module spec without a function."""
    target, sep, name = spec.rpartition(":")
    if not sep:
        target, name = spec, ""
    if target.endswith(".py"):
        if not Path(target).expanduser().is_file():  # YAML values and `--x=~/r.py` get no shell ~ expansion
            raise RewardError(f"reward function file not found: {target}")
        return target, name or "reward"
    if not name:
        raise RewardError(f"reward function '{spec}' must look like 'module:function' or 'file.py:function'")
    return target, name


def check_reward_source(model: str | None, function: str | None) -> None:
    """What make_reward finds without loading anything: the reward function's file, or its module on the path (not
    imported: a user's module runs once, when the reward is made), or the reward model's local directory. The
    commands call it before any model loads."""
    if function:
        target, _ = _reward_target(function)
        if not target.endswith(".py"):
            try:
                found = importlib.util.find_spec(target) is not None  # imports its parent packages (as the load will)
            except (Exception, SystemExit) as exc:  # a parent package that is not there, or fails on import
                raise RewardError(f"cannot import reward module '{target}': {type(exc).__name__}: {exc}") from None
            if not found:
                raise RewardError(f"cannot import reward module '{target}': ModuleNotFoundError: No module named '{target}'")
    elif model:
        from policyshift.models import local_path_or_hub_id

        local_path_or_hub_id(model)


def load_reward_function(spec: str) -> Callable:
    """'package.module:function', 'path/to/file.py:function' or 'path/to/file.py' (function `reward`)."""
    target, name = _reward_target(spec)
    if target.endswith(".py"):
        path = Path(target).expanduser()
        module_name = f"policyshift_user_reward_{abs(hash(str(path.resolve())))}"
        try:
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # SystemExit: a script that runs argparse or sys.exit() on import
            sys.modules.pop(module_name, None)  # no half-initialized module left behind
            raise RewardError(f"cannot import reward file {target}: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except (Exception, SystemExit) as exc:
            raise RewardError(f"cannot import reward module '{target}': {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise RewardError(f"reward function '{name}' not found in {target}")
    if not callable(fn):
        raise RewardError(f"reward '{spec}' is not callable")
    return fn


def _as_scores(values, n: int, source: str, prompts=None, responses=None) -> torch.Tensor:
    """One float per response from a list, tuple, tensor or ndarray (shape (n,) or (n, 1))."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().reshape(-1).tolist()
    elif isinstance(values, np.ndarray):  # float() of a length-1 row is an error in numpy 2
        values = values.reshape(-1).tolist()
    if isinstance(values, (str, bytes, dict)):  # iterable, but "123" is not three scores
        raise RewardError(f"{source} must return a list of {n} numbers; got {type(values).__name__}")
    try:
        values = list(values)
    except TypeError:
        raise RewardError(f"{source} must return a list of {n} numbers; got {type(values).__name__}") from None
    if len(values) != n:
        raise RewardError(f"{source} returned {len(values)} values for {n} responses")
    return torch.tensor([_as_float(v, i, source, prompts, responses) for i, v in enumerate(values)], dtype=torch.float32)


def _as_float(value, i: int, source: str, prompts, responses) -> float:
    try:
        if isinstance(value, (str, bytes)):  # a numeric string is a bug in the reward, not a score
            raise TypeError
        return float(value)
    except (TypeError, ValueError, OverflowError):
        which = f" for prompt {prompts[i][:60]!r} / response {responses[i][:60]!r}" if prompts is not None else ""
        raise RewardError(f"{source} returned {short_repr(value, 60)} (type {type(value).__name__}), not a usable number, at index {i}{which}") from None


def accepted_fields(fn: Callable) -> Callable[[str], bool]:
    """Which extra prompt-row fields `fn` takes as keyword arguments: all of them with a **kwargs parameter,
    else those it names (a plain f(prompts, responses) gets none and keeps working)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return lambda name: False
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return lambda name: True
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return lambda name: name in named


class FunctionReward:
    """f(prompts, responses, **fields) -> one number per response. `fields`: the prompt rows' other columns
    (e.g. `answer`), one list per field aligned with the prompts, passed when the function accepts them."""

    def __init__(self, fn: Callable, name: str = "reward function"):
        self.fn, self.name = fn, name
        self.accepts = accepted_fields(fn)

    def __call__(self, prompts: list[str], responses: list[str], **fields) -> torch.Tensor:
        kwargs = {k: list(v) for k, v in fields.items() if k not in ("prompts", "responses") and self.accepts(k)}
        try:
            out = self.fn(list(prompts), list(responses), **kwargs)
        except Exception as exc:
            raise RewardError(f"{self.name} raised {type(exc).__name__}: {exc}") from None
        return _as_scores(out, len(prompts), self.name, prompts, responses)


def score_with_fields(reward, prompts: list[str], responses: list[str], fields: dict[str, list]) -> torch.Tensor:
    """Scores from any reward object; the prompt rows' fields go to a reward function (which passes on only
    those it accepts), never to a reward model or a user's own scorer object."""
    return reward(prompts, responses, **fields) if isinstance(reward, FunctionReward) else reward(prompts, responses)


class ModelReward:
    """A sequence-classification reward model with its own tokenizer, scoring each episode in the rendering it
    was trained on (reward.template / reward.keep_eos; policyshift.reward_render), read at an explicit index. With
    another tokenizer the RM and the policy need not share a vocabulary (TRL #3595)."""

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int = 512, name: str = "reward model",
                 template: str = "auto", keep_eos: bool | None = None):
        self.model, self.tokenizer, self.batch_size, self.name = model, tokenizer, batch_size, name
        self.template, self.keep_eos = template, keep_eos
        self._resolved: dict[int, str] = {}  # id(policy tokenizer) → the rendering "auto" chose for it
        # Encoder classifiers (no `score` head) pool by attention mask; decoder ones are read at our own index.
        # pad_token_id is still set so that a direct self.model(...) call reads the right token.
        if tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        # Inputs longer than the position table crash the forward pass (a 512-position RM asked for 1024).
        positions = getattr(model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, positions) if isinstance(positions, int) and positions > 0 else max_length

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "float32", trust_remote_code: bool = False, **kwargs) -> "ModelReward":
        from policyshift.models import freeze, load_sequence_classifier, load_tokenizer

        model = freeze(load_sequence_classifier(path, dtype, trust_remote_code, kind="sequence-classification reward model", trained_head=True))
        return cls(model, load_tokenizer(path, trust_remote_code, padding_side="right"), **kwargs)

    def rendering(self, policy_tokenizer=None) -> str:
        """The rendering used for episodes of a policy with `policy_tokenizer` (None: texts only)."""
        from policyshift.reward_render import resolve_template

        key = id(policy_tokenizer)
        if key not in self._resolved:
            self._resolved[key] = resolve_template(self.template, self.tokenizer, policy_tokenizer)
        return self._resolved[key]

    @torch.no_grad()
    def score_episodes(self, episodes, policy_tokenizer=None) -> torch.Tensor:
        """One score per episode (a reward_render.Episodes); `policy_tokenizer` decides what "auto" renders."""
        from policyshift.reward_render import render, score_sequences

        if not episodes.prompts:
            return torch.zeros(0)
        sequences = render(episodes, self.rendering(policy_tokenizer), self.tokenizer, self.keep_eos)
        return score_sequences(self.model, sequences, self.tokenizer.pad_token_id, self.batch_size, self.max_length).cpu()

    def __call__(self, prompts: list[str], responses: list[str], **fields) -> torch.Tensor:
        """Texts only (no token ids): rendered as chat or text by "auto", as finished answers. The trainer, the
        fixed-prompt probes and compare score whole rollouts with score_rollout instead."""
        from policyshift.chat import CHAT_FIELD
        from policyshift.reward_render import Episodes

        return self.score_episodes(Episodes(list(prompts), list(responses), messages=fields.get(CHAT_FIELD)))


def score_rollout(reward, rollout, fields: dict[str, list], tokenizer) -> torch.Tensor:
    """Scores of a rollout's episodes: a reward model reads them in its rendering (the generated ids when it shares
    the policy's `tokenizer`); anything else gets texts and the prompt-row fields (score_with_fields)."""
    if isinstance(reward, ModelReward):
        from policyshift.chat import CHAT_FIELD
        from policyshift.reward_render import Episodes

        episodes = Episodes(list(rollout.prompts), list(rollout.responses), rollout.query_ids, rollout.query_mask, rollout.response_ids,
                            rollout.response_mask, rollout.has_eos, fields.get(CHAT_FIELD))
        return reward.score_episodes(episodes, tokenizer)
    return score_with_fields(reward, rollout.prompts, rollout.responses, fields)


def make_reward(model: str | None = None, function: str | None = None, dtype: str = "float32", trust_remote_code: bool = False, batch_size: int = 32, max_length: int = 512,
                template: str = "auto", keep_eos: bool | None = None):
    if function:
        return FunctionReward(load_reward_function(function), f"reward function {function}")
    return ModelReward.from_pretrained(model, dtype, trust_remote_code, batch_size=batch_size, max_length=max_length, name=f"reward model {model}",
                                       template=template, keep_eos=keep_eos)


def check_finite(scores: torch.Tensor, prompts: list[str], responses: list[str], source: str) -> None:
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise RewardError(
            f"{source} returned a non-finite reward ({scores[i].item()}) for prompt {prompts[i][:60]!r} / response {responses[i][:60]!r}"
        )


class RunningMoments:
    """Running mean/std of scores over all steps (Welford/Chan merge), for reward normalization."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        if x.numel() == 0:  # an empty batch would make the merge 0/0
            return
        x = x.detach().cpu().double()  # float32 sums lose digits the running merge keeps (and MPS has no float64)
        n, mean, var = x.numel(), x.mean().item(), x.var(unbiased=False).item()
        total = self.count + n
        delta = mean - self.mean
        self.m2 += var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


def postprocess_scores(scores, has_eos, missing_eos_penalty=None, moments: RunningMoments | None = None, clip=None):
    """score − penalty for responses without EOS (they were cut at max length); then (score − μ)/σ
    with running moments when normalizing; then clip to ±clip."""
    scores = scores.clone()
    if missing_eos_penalty is not None:
        scores = torch.where(torch.as_tensor(has_eos, device=scores.device).bool(), scores, scores - missing_eos_penalty)
    if moments is not None:
        moments.update(scores)
        scores = (scores - moments.mean) / max(moments.std, 1e-8)
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores
