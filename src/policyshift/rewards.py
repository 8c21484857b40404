"""Rewards: an HF sequence-classification reward model (with its own tokenizer) or any Python
callable f(prompts, responses) -> floats; then the missing-EOS penalty, normalization and clipping."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Callable

import torch


class RewardError(ValueError):
    """A reward that cannot be loaded or returned something unusable; one line."""


def load_reward_function(spec: str) -> Callable:
    """'package.module:function', 'path/to/file.py:function' or 'path/to/file.py' (function `reward`)."""
    target, sep, name = spec.rpartition(":")
    if not sep:
        target, name = spec, ""
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise RewardError(f"reward function file not found: {target}")
        module_name = f"policyshift_user_reward_{abs(hash(str(path.resolve())))}"
        try:
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise RewardError(f"cannot import reward file {target}: {type(exc).__name__}: {exc}") from None
        name = name or "reward"
    else:
        if not name:
            raise RewardError(f"reward function '{spec}' must look like 'module:function' or 'file.py:function'")
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise RewardError(f"cannot import reward module '{target}': {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise RewardError(f"reward function '{name}' not found in {target}")
    if not callable(fn):
        raise RewardError(f"reward '{spec}' is not callable")
    return fn


def _as_scores(values, n: int, source: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().reshape(-1).tolist()
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise RewardError(f"{source} must return a list of {n} numbers; got {type(values).__name__}") from None
    if len(values) != n:
        raise RewardError(f"{source} returned {len(values)} values for {n} responses")
    return torch.tensor(values, dtype=torch.float32)


class FunctionReward:
    def __init__(self, fn: Callable, name: str = "reward function"):
        self.fn, self.name = fn, name

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        try:
            out = self.fn(list(prompts), list(responses))
        except Exception as exc:
            raise RewardError(f"{self.name} raised {type(exc).__name__}: {exc}") from None
        return _as_scores(out, len(prompts), self.name)


class ModelReward:
    """Scores decoded prompt+response text with the reward model's own tokenizer, so the RM and the
    policy need not share a vocabulary (TRL #3595)."""

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int = 512, name: str = "reward model"):
        self.model, self.tokenizer, self.batch_size, self.max_length, self.name = model, tokenizer, batch_size, max_length, name
        if model.config.pad_token_id is None:  # seq-cls models find the last real token through pad_token_id
            model.config.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "float32", trust_remote_code: bool = False, **kwargs) -> "ModelReward":
        from policyshift.models import freeze, load_sequence_classifier, load_tokenizer

        model = freeze(load_sequence_classifier(path, dtype, trust_remote_code, kind="sequence-classification reward model"))
        return cls(model, load_tokenizer(path, trust_remote_code, padding_side="right"), **kwargs)

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        texts = [p + r for p, r in zip(prompts, responses)]
        scores = []
        for i in range(0, len(texts), self.batch_size):
            # Keep the end of the text if it is too long: the response is what is being judged.
            self.tokenizer.truncation_side = "left"
            enc = self.tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
            logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits
            scores.append(logits[:, 0].float().cpu())
        return torch.cat(scores)


def make_reward(model: str | None = None, function: str | None = None, dtype: str = "float32", trust_remote_code: bool = False, batch_size: int = 32, max_length: int = 512):
    if function:
        return FunctionReward(load_reward_function(function), f"reward function {function}")
    return ModelReward.from_pretrained(model, dtype, trust_remote_code, batch_size=batch_size, max_length=max_length, name=f"reward model {model}")


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
        scores = torch.where(has_eos.to(scores.device), scores, scores - missing_eos_penalty)
    if moments is not None:
        moments.update(scores)
        scores = (scores - moments.mean) / max(moments.std, 1e-8)
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores
