"""Regression tests for the review fixes: stage-command overrides parsed against the stage's own
config class, the shared one-line error base, the entropy without zero temporaries, the masked
moments, the mismatch maximum without a sync, and the tracking helpers."""

import argparse
import math

import pytest
import torch

from policyshift.config import ConfigError, OneLineError, PPOConfig, parse_overrides, short_repr
from policyshift.data import DataError
from policyshift.kl import entropy_from_logits, entropy_from_logprobs, exact_kl_from_logprobs
from policyshift.masked import masked_var, masked_whiten
from policyshift.metrics import engine_mismatch_metrics
from policyshift.rewards import RewardError
from policyshift.tracking import MultiSink, NullSink, make_sinks
from policyshift.tracking.base import clean_json, one_line


# ---- stage commands: overrides typed by the stage's config, not PPOConfig -------------------------
def test_stage_overrides_keep_string_fields_as_typed():
    from policyshift.stages.reward_model import RewardModelConfig
    from policyshift.stages.sft import SFTConfig

    sft = parse_overrides(["--output_dir", "0100", "--model", "yes", "--data=0x10", "--steps", "5", "--device", "null"],
                          SFTConfig)
    assert sft == {"output_dir": "0100", "model": "yes", "data": "0x10", "steps": 5, "device": "null"}
    rm = parse_overrides(["--output_dir", "0100", "--base_model", "on", "--pairs", "007", "--steps", "3"], RewardModelConfig)
    assert rm == {"output_dir": "0100", "base_model": "on", "pairs": "007", "steps": 3}
    # the PPO parse is unchanged: its own string fields keep their text, the rest is YAML
    assert parse_overrides(["--train.output_dir", "0100", "--train.steps", "0100"]) == {"train.output_dir": "0100", "train.steps": 64}


def test_sft_command_config_writes_to_the_directory_as_typed():
    from policyshift.cli import _stage_config
    from policyshift.stages.sft import SFTConfig

    cfg = _stage_config(SFTConfig, argparse.Namespace(config=None), ["--data", "t.jsonl", "--output_dir", "0100", "--model", "null",
                                                                      "--steps", "7"])
    assert (cfg.output_dir, cfg.model, cfg.steps, cfg.data) == ("0100", None, 7, "t.jsonl")


# ---- one-line errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ConfigError, DataError, RewardError])
def test_user_errors_share_the_one_line_base(cls):
    assert issubclass(cls, OneLineError) and issubclass(cls, ValueError)
    assert str(cls("first line\nsecond\r\nthird")) == "first line second third"


def test_short_repr_cuts_at_the_limit():
    assert short_repr("abc") == "'abc'"
    assert short_repr("x" * 100) == repr("x" * 100)[:77] + "..." and len(short_repr("x" * 100)) == 80
    assert short_repr("x" * 100, 60) == repr("x" * 100)[:57] + "..."
    assert short_repr("x" * 58, 60) == repr("x" * 58)


def test_reward_error_cuts_a_bad_value_at_60_characters():
    from policyshift.rewards import FunctionReward

    with pytest.raises(RewardError) as info:
        FunctionReward(lambda p, r: ["y" * 200], "f")(["p"], ["r"])
    assert f"f returned {repr('y' * 200)[:57]}... (type str)" in str(info.value)


# ---- entropy: same values and gradients as p·(log p − 0) with 0·(−inf) = 0 -------------------------
def _entropy_reference(logp):
    p = logp.exp()
    return -(p * torch.where(p > 0, logp - torch.zeros_like(logp), torch.zeros_like(logp))).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_entropy_matches_reference_bitwise_with_masked_logits(dtype):
    torch.manual_seed(0)
    logits = (torch.randn(2, 3, 17) * 4).to(dtype)
    logits[0, 0, 2] = float("-inf")
    logits[1, 2, :5] = float("-inf")
    w = torch.randn(2, 3).to(dtype)
    out = []
    for fn in (entropy_from_logprobs, _entropy_reference):
        x = logits.clone().requires_grad_(True)
        h = fn(torch.log_softmax(x, -1))
        (h * w).sum().backward()
        out.append((h.detach(), x.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert torch.isfinite(out[0][0]).all() and torch.isfinite(out[0][1]).all()


def test_entropy_and_kl_of_a_one_hot_distribution_are_zero():
    logits = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    assert entropy_from_logits(logits).item() == 0.0
    logp = torch.log_softmax(logits, -1)
    assert exact_kl_from_logprobs(logp, logp).item() == 0.0


# ---- masked moments --------------------------------------------------------------------------------
def test_masked_var_and_whiten_use_the_same_moments():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    mask = (torch.rand(4, 6) > 0.3).float()
    x_pad = torch.where(mask.bool(), x, torch.full_like(x, float("nan")))  # padding may hold nan
    real = x[mask.bool()]
    assert torch.allclose(masked_var(x_pad, mask), real.var(unbiased=True))
    assert torch.allclose(masked_var(x_pad, mask, unbiased=False), real.var(unbiased=False))
    w = masked_whiten(x_pad, mask)
    expected = (real - real.mean()) * torch.rsqrt(real.var(unbiased=True) + 1e-8)
    assert torch.allclose(w[mask.bool()], expected, atol=1e-6) and (w[~mask.bool()] == 0).all()
    assert torch.equal(masked_whiten(x_pad, mask, all_sum=lambda t: t), w)
    assert torch.equal(masked_whiten(x_pad, mask, shift_mean=False),
                       torch.where(mask.bool(), w + real.mean(), torch.zeros_like(w)))
    one = torch.tensor([[1.0, 0.0]])
    assert masked_var(torch.tensor([[3.0, 5.0]]), one).item() == 0.0  # one real token: no Bessel division by 0


# ---- engine mismatch: max without a device sync ----------------------------------------------------
def test_mismatch_max_is_zero_without_real_tokens_and_for_an_empty_batch():
    train, engine = torch.tensor([[-1.0, float("nan")]]), torch.tensor([[-3.0, 2.0]])
    assert engine_mismatch_metrics(train, engine, torch.zeros(1, 2))["rollout/logprob_diff_max"] == 0.0
    assert engine_mismatch_metrics(train, engine, torch.tensor([[1.0, 0.0]]))["rollout/logprob_diff_max"] == 2.0
    empty = torch.zeros(2, 0)
    assert engine_mismatch_metrics(empty, empty, empty)["rollout/logprob_diff_max"] == 0.0


# ---- tracking helpers -----------------------------------------------------------------------------
def test_null_sink_is_an_empty_multisink(tmp_path):
    sink = NullSink()
    assert isinstance(sink, MultiSink) and sink.sinks == [] and sink.name == "null" and NullSink().sinks is not sink.sinks
    sink.log_config({"a": 1})
    sink.log_scalars({"a": 1.0}, 1)
    sink.log_histograms({"a": [1.0]}, 1)
    sink.log_samples([{"prompt": "p"}], 1)
    sink.log_findings([{"detector": "d"}], 1)
    sink.log_artifact(tmp_path / "report.html")
    sink.close()
    assert list(tmp_path.iterdir()) == []


def test_jsonl_sink_is_named_by_its_class(tmp_path):
    config = PPOConfig.from_dict({"tracking": {"tensorboard": False}})
    sink = make_sinks(tmp_path, config)
    assert sink.names == ["jsonl"]
    sink.close()


def test_clean_json_nulls_non_finite_floats_at_any_depth():
    nan, inf = float("nan"), float("inf")
    assert clean_json({"a": nan, "b": [1.0, -inf, (2, inf)], "c": {"d": inf, "e": "x"}, "f": None}) == \
        {"a": None, "b": [1.0, None, [2, None]], "c": {"d": None, "e": "x"}, "f": None}
    assert clean_json(nan) is None and clean_json(1.5) == 1.5 and clean_json("nan") == "nan" and clean_json(3) == 3
    assert math.isfinite(clean_json(1e308))


def test_one_line_names_the_type_and_the_first_line():
    assert one_line(RuntimeError("down\nmore")) == "RuntimeError: down"
    assert one_line(RuntimeError()) == "RuntimeError"
