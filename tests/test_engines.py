"""Rollout engines: the default HF engine changes nothing; an engine with its own copy of the weights
supplies tokens only (the training model recomputes the logprobs), its mismatch is measured on real
tokens only, and syncing the weights after an update brings the mismatch back to zero. vLLM itself
cannot run here (no GPU): its absence is a one-line ConfigError, and VLLMEngine's plumbing is checked
against a fake `vllm` module whose "engine" is a tiny HF model."""

import copy
import math
import sys
import types
from dataclasses import fields, replace

import pytest
import torch

from policyshift.config import ConfigError, RolloutConfig
from policyshift.engines import VLLM_MISSING, HFEngine, VLLMEngine, make_engine
from kl_reference import logprobs_from_logits
from policyshift.metrics import engine_mismatch_metrics, rollout_metrics
from policyshift.models import PolicyAndCritic, freeze, load_causal_lm, load_tokenizer, response_logits
from policyshift.rollout import generate_rollout, sample

PROMPTS = ["the cat", "a dog runs on the mat", "good", "very happy dog sits"]  # different lengths: left padding
MISMATCH_KEYS = ("rollout/logprob_diff_abs_mean", "rollout/logprob_diff_max", "rollout/engine_kl_k3")


@pytest.fixture()
def world(tiny_world):
    """A fresh policy each test (some tests change its weights), a reference that differs from it."""
    tok = load_tokenizer(tiny_world["policy"])
    policy = load_causal_lm(tiny_world["policy"])
    ref = freeze(load_causal_lm(tiny_world["policy"]))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    return tok, PolicyAndCritic(policy=policy), ref


def rollout(world, seed, engine=None, T=0.9, max_new_tokens=8):
    tok, models, ref = world
    cfg = RolloutConfig(batch_size=4, max_new_tokens=max_new_tokens, temperature=T)
    return generate_rollout(models, ref, tok, PROMPTS, cfg, 16, torch.Generator().manual_seed(seed), engine=engine)


def mismatch(ro) -> dict:
    return engine_mismatch_metrics(ro.logprobs, ro.engine_logprobs, ro.response_mask)


def policy_logprobs(policy, ro, T=0.9):
    """The policy's own logprobs of the rollout's response tokens (at the sampling temperature)."""
    return logprobs_from_logits(response_logits(policy, ro.input_ids, ro.attention_mask, ro.response_ids.shape[1]), ro.response_ids, T)


def train_step(policy, ro, lr=0.05):
    """One real optimizer step on the policy: raise the logprob of the sampled tokens."""
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    logp = policy_logprobs(policy, ro)
    (-(logp * ro.response_mask).sum() / ro.response_mask.sum()).backward()
    opt.step()


def test_default_hf_engine_is_bit_identical_to_no_engine(world):
    _, models, _ = world
    plain = rollout(world, 11)
    engine = make_engine(RolloutConfig(), models.policy, world[0])
    assert isinstance(engine, HFEngine) and engine.shares_training_weights
    via_engine = rollout(world, 11, engine=engine)
    for f in fields(plain):
        a, b = getattr(plain, f.name), getattr(via_engine, f.name)
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), f.name
    assert via_engine.engine_logprobs is None
    engine.sync_weights(models.policy)  # a no-op for the policy itself


def test_separate_copy_engine_mismatch_sync_cycle(world):
    _, models, _ = world
    engine = HFEngine(copy.deepcopy(models.policy), shares_training_weights=False)

    ro = rollout(world, 3, engine=engine)
    assert ro.engine_logprobs is not None and ro.response_mask.sum() > 8
    # PPO's logprobs are the training model's own forward pass on the engine's tokens
    fresh, real = policy_logprobs(models.policy, ro), ro.response_mask.bool()
    assert torch.allclose(ro.logprobs[real], fresh[real], atol=1e-6) and (ro.logprobs[~real] == 0).all()  # scored on real tokens only
    m0 = mismatch(ro)
    assert m0["rollout/logprob_diff_max"] < 1e-5 and abs(m0["rollout/engine_kl_k3"]) < 1e-6

    train_step(models.policy, ro)  # the policy moves on; the engine still has the old weights
    stale = rollout(world, 4, engine=engine)
    m1 = mismatch(stale)
    assert m1["rollout/logprob_diff_abs_mean"] > 1e-2 and m1["rollout/engine_kl_k3"] > 1e-4
    # the tokens really came from the stale copy, not from the policy
    tok, _, ref = world
    cfg = RolloutConfig(batch_size=4, max_new_tokens=8, temperature=0.9)
    from_copy = generate_rollout(PolicyAndCritic(engine.model), ref, tok, PROMPTS, cfg, 16, torch.Generator().manual_seed(4))
    assert torch.equal(stale.response_ids, from_copy.response_ids)
    assert torch.allclose(stale.engine_logprobs, from_copy.logprobs * from_copy.response_mask, atol=1e-5)

    engine.sync_weights(models.policy)
    synced = engine.model.state_dict()
    assert synced.keys() == models.policy.state_dict().keys()
    assert all(torch.equal(synced[k], v) for k, v in models.policy.state_dict().items())
    m2 = mismatch(rollout(world, 5, engine=engine))
    assert m2["rollout/logprob_diff_max"] < 1e-5 and abs(m2["rollout/engine_kl_k3"]) < 1e-6


def test_mismatch_metrics_ignore_padding_hand_computed():
    nan, inf = float("nan"), float("inf")
    train = torch.tensor([[-1.0, -2.0, 1e30], [-0.5, nan, inf]])
    engine = torch.tensor([[-1.5, -2.0, -1e30], [-0.25, 5.0, -inf]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    m = engine_mismatch_metrics(train, engine, mask)
    assert m["rollout/logprob_diff_abs_mean"] == pytest.approx((0.5 + 0.0 + 0.25) / 3)
    assert m["rollout/logprob_diff_max"] == pytest.approx(0.5)
    k3 = lambda x: math.exp(x) - 1 - x  # noqa: E731  x = log π_train − log π_engine
    assert m["rollout/engine_kl_k3"] == pytest.approx((k3(0.5) + k3(0.0) + k3(-0.25)) / 3)


def test_rollout_metrics_report_mismatch_only_with_an_engine_copy(world):
    _, models, _ = world
    zeros = lambda ro: dict(kl_per_token=torch.zeros_like(ro.logprobs), beta=0.1, beta_in_reward=0.1)  # noqa: E731
    plain = rollout(world, 6)
    assert not set(MISMATCH_KEYS) & set(rollout_metrics(replace(plain, scores=torch.zeros(4)), **zeros(plain)))
    ro = rollout(world, 6, engine=HFEngine(copy.deepcopy(models.policy), shares_training_weights=False))
    ro = replace(ro, scores=torch.zeros(4))
    metrics = rollout_metrics(ro, **zeros(ro))
    assert set(MISMATCH_KEYS) <= set(metrics) and all(math.isfinite(metrics[k]) for k in MISMATCH_KEYS)
    assert ro.select(torch.tensor([2, 0])).engine_logprobs.shape[0] == 2
    assert plain.select(torch.tensor([1])).engine_logprobs is None


def test_vllm_missing_is_one_line_config_error(world, monkeypatch):
    tok, models, _ = world
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(ConfigError) as err:
        make_engine(RolloutConfig(engine="vllm"), models.policy, tok)
    assert str(err.value) == VLLM_MISSING and "\n" not in str(err.value)


def test_vllm_without_gpu_is_one_line_config_error(world, monkeypatch):
    tok, models, _ = world
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as err:
        make_engine(RolloutConfig(engine="vllm"), models.policy, tok)
    assert "\n" not in str(err.value)


# ---- VLLMEngine against a fake vllm ----------------------------------------------------------------
class FakeLLM:
    """Stands in for vllm.LLM: loads the directory VLLMEngine wrote, samples one prompt at a time with
    our exact sampler seeded by the request's seed, returns vLLM-shaped outputs (processed logprobs)."""

    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.prefix_resets = kwargs, [], 0
        self.model = load_causal_lm(kwargs["model"], kwargs["dtype"])
        self.tokenizer = load_tokenizer(kwargs["model"])
        FakeLLM.instances.append(self)

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        outputs = []
        for prompt, p in zip(prompts, params):
            ids = torch.tensor([prompt["prompt_token_ids"]])
            gen = torch.Generator().manual_seed(p.seed)
            tokens, steps = sample(self.model, ids, torch.ones_like(ids), p.max_tokens, p.temperature, None, False, gen)
            tokens = tokens[0].tolist()
            for i, t in enumerate(tokens):
                if t in p.stop_token_ids:
                    tokens = tokens[: i + 1]
                    break
            logprobs = [{t: types.SimpleNamespace(logprob=steps.logprobs[0, i].item(), rank=1)} for i, t in enumerate(tokens)]
            outputs.append(types.SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"],
                                                 outputs=[types.SimpleNamespace(token_ids=tokens, logprobs=logprobs, finish_reason="stop")]))
        return outputs

    def apply_model(self, func):
        return [func(FakeVLLMModel(self.model))]

    def reset_prefix_cache(self):
        self.prefix_resets += 1


class FakeVLLMModel:
    def __init__(self, hf_model):
        self.hf_model, self.loaded = hf_model, []

    def load_weights(self, weights):
        weights = dict(weights)
        self.loaded.extend(weights)
        self.hf_model.load_state_dict(weights, strict=False)


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture()
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__version__ = "0.11.0"
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    FakeLLM.instances = []
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    return module


def test_vllm_engine_plumbing_with_a_fake_vllm(world, fake_vllm):
    tok, models, _ = world
    engine = make_engine(RolloutConfig(engine="vllm", vllm_gpu_memory_utilization=0.25), models.policy, tok, seed=3, max_model_len=24)
    assert isinstance(engine, VLLMEngine) and not engine.shares_training_weights
    llm = FakeLLM.instances[0]
    assert llm.kwargs["gpu_memory_utilization"] == 0.25 and llm.kwargs["seed"] == 3 and llm.kwargs["max_model_len"] == 24
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and llm.kwargs["dtype"] == "float32"
    assert llm.kwargs["generation_config"] == "vllm"
    import os
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"

    ro = rollout(world, 8, engine=engine, max_new_tokens=10)
    prompts, params = llm.calls[0]
    enc = tok(PROMPTS)
    assert [p["prompt_token_ids"] for p in prompts] == enc["input_ids"]  # left padding stripped
    p0 = params[0]
    assert (p0.top_p, p0.top_k, p0.min_p, p0.repetition_penalty, p0.temperature, p0.max_tokens, p0.logprobs) == (1.0, -1, 0.0, 1.0, 0.9, 10, 0)
    assert p0.stop_token_ids == [tok.eos_token_id] and p0.ignore_eos is False
    assert len({p.seed for p in params}) == len(PROMPTS)  # one seed per request, drawn from the generator
    assert ro.engine_logprobs is not None
    assert mismatch(ro)["rollout/logprob_diff_max"] < 1e-4  # same weights: engine and training model agree

    train_step(models.policy, ro)
    assert mismatch(rollout(world, 9, engine=engine))["rollout/logprob_diff_abs_mean"] > 1e-2
    engine.sync_weights(models.policy)
    assert llm.prefix_resets == 1
    assert all(torch.equal(llm.model.state_dict()[k], v) for k, v in models.policy.state_dict().items())
    assert mismatch(rollout(world, 10, engine=engine))["rollout/logprob_diff_max"] < 1e-4


def test_vllm_engine_old_version_keeps_raw_logprobs_only_at_t1(world, fake_vllm):
    tok, models, _ = world
    fake_vllm.__version__ = "0.10.0"  # no logprobs_mode: raw logprobs are the sampling ones only at T=1
    engine = make_engine(RolloutConfig(engine="vllm"), models.policy, tok)
    assert "logprobs_mode" not in FakeLLM.instances[0].kwargs
    assert rollout(world, 1, engine=engine, T=0.9).engine_logprobs is None
    assert rollout(world, 1, engine=engine, T=1.0).engine_logprobs is not None
