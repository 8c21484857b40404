"""Rewards: loading Python reward functions, checking what they return, the post-processing of
scores (missing-EOS penalty, running normalization, clip), and reward models with their own
tokenizer."""

import math

import numpy as np
import pytest
import torch

import tiny
from policyshift.models import ModelError, load_causal_lm
from policyshift.rewards import (
    FunctionReward,
    ModelReward,
    RewardError,
    RunningMoments,
    check_finite,
    load_reward_function,
    make_reward,
    postprocess_scores,
)

PROMPTS = ["the cat", "a dog", "the mat"]
RESPONSES = [" good good", " bad", " is fine"]


def reward_error(fn, *args) -> str:
    with pytest.raises(RewardError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- loading -----------------------------------------------------------------------------------------


def test_module_function():
    fn = load_reward_function("tiny:good_fraction")
    assert fn is tiny.good_fraction
    assert fn(["p"], ["good bad"]) == [0.5]


def test_file_function_and_default_name(tmp_path):
    (tmp_path / "r.py").write_text("def reward(p, r):\n    return [1.0] * len(r)\n\ndef other(p, r):\n    return [2.0] * len(r)\n")
    assert load_reward_function(f"{tmp_path / 'r.py'}:other")(["a"], ["b"]) == [2.0]
    assert load_reward_function(str(tmp_path / "r.py"))(["a"], ["b"]) == [1.0]


def test_home_relative_reward_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "home_reward.py").write_text("def reward(p, r):\n    return [3.0] * len(r)\n")
    assert load_reward_function("~/home_reward.py")(["a"], ["b"]) == [3.0]


def test_file_not_found(tmp_path):
    assert reward_error(load_reward_function, f"{tmp_path}/nope.py:f") == f"reward function file not found: {tmp_path}/nope.py"


def test_import_errors_are_one_line(tmp_path):
    assert reward_error(load_reward_function, "no_such_module_xyz:f") == (
        "cannot import reward module 'no_such_module_xyz': ModuleNotFoundError: No module named 'no_such_module_xyz'")
    (tmp_path / "broken.py").write_text("import no_such_module_xyz\n")
    assert reward_error(load_reward_function, f"{tmp_path / 'broken.py'}:f") == (
        f"cannot import reward file {tmp_path / 'broken.py'}: ModuleNotFoundError: No module named 'no_such_module_xyz'")
    (tmp_path / "syntax.py").write_text("def f(:\n")
    assert "SyntaxError" in reward_error(load_reward_function, f"{tmp_path / 'syntax.py'}:f")
    (tmp_path / "multi.py").write_text("raise RuntimeError('first line\\nsecond line')\n")
    assert reward_error(load_reward_function, f"{tmp_path / 'multi.py'}:f").endswith("RuntimeError: first line second line")


def test_a_reward_file_that_exits_on_import_is_an_error_not_an_exit(tmp_path):
    (tmp_path / "script.py").write_text("import sys\nsys.exit(3)\n")
    assert reward_error(load_reward_function, f"{tmp_path / 'script.py'}:f") == (
        f"cannot import reward file {tmp_path / 'script.py'}: SystemExit: 3")


def test_missing_attribute_and_not_callable_and_bad_spec():
    assert reward_error(load_reward_function, "tiny:nope") == "reward function 'nope' not found in tiny"
    assert reward_error(load_reward_function, "tiny:WORDS") == "reward 'tiny:WORDS' is not callable"
    assert "must look like 'module:function'" in reward_error(load_reward_function, "tiny")


# ---- what a function returns --------------------------------------------------------------------------


def call(returned):
    return FunctionReward(lambda p, r: returned, "reward function f")(PROMPTS, RESPONSES)


@pytest.mark.parametrize("returned", [
    [1, 2.5, -3], (1, 2.5, -3), torch.tensor([1, 2.5, -3]), torch.tensor([[1], [2.5], [-3]]),
    np.array([1, 2.5, -3]), np.array([[1], [2.5], [-3]], dtype=np.float32), [np.float64(1), np.int64(2) + 0.5, -3],
    (x for x in [1, 2.5, -3]),
])
def test_lists_tensors_and_arrays_are_scores(returned):
    scores = call(returned)
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 2.5, -3.0]


def test_wrong_count():
    assert reward_error(call, [1.0, 2.0]) == "reward function f returned 2 values for 3 responses"
    assert reward_error(call, torch.ones(2, 3)) == "reward function f returned 6 values for 3 responses"


def test_non_numeric_returns():
    assert reward_error(call, 0.5) == "reward function f must return a list of 3 numbers; got float"
    assert reward_error(call, "123") == "reward function f must return a list of 3 numbers; got str"
    assert reward_error(call, {"a": 1, "b": 2, "c": 3}) == "reward function f must return a list of 3 numbers; got dict"
    assert reward_error(call, None) == "reward function f must return a list of 3 numbers; got NoneType"
    assert reward_error(call, [1.0, None, 2.0]) == (
        "reward function f returned None (type NoneType), not a usable number, at index 1 for prompt 'a dog' / response ' bad'")
    assert "returned '0.5' (type str)" in reward_error(call, ["0.5", 1.0, 1.0])
    assert "at index 2 for prompt 'the mat'" in reward_error(call, [1.0, 2.0, 10**400])


def test_a_raising_function_is_a_reward_error():
    def boom(prompts, responses):
        raise KeyError("oops\nmore")

    assert reward_error(FunctionReward(boom, "reward function f"), PROMPTS, RESPONSES) == "reward function f raised KeyError: 'oops\\nmore'"


def test_non_finite_scores_name_the_prompt_and_response():
    scores = call([1.0, float("nan"), float("inf")])  # the function itself may return them...
    message = reward_error(check_finite, scores, PROMPTS, RESPONSES, "reward")  # ...the trainer checks them
    assert message == "reward returned a non-finite reward (nan) for prompt 'a dog' / response ' bad'"
    check_finite(torch.tensor([0.0, -1e30, 1e30]), PROMPTS, RESPONSES, "reward")


# ---- post-processing ---------------------------------------------------------------------------------


def test_missing_eos_penalty_by_hand():
    scores = torch.tensor([1.0, 2.0, 3.0, -1.0])
    has_eos = torch.tensor([True, False, True, False])
    assert postprocess_scores(scores, has_eos, missing_eos_penalty=1.5).tolist() == [1.0, 0.5, 3.0, -2.5]
    assert postprocess_scores(scores, torch.tensor([1, 0, 1, 0]), missing_eos_penalty=1.5).tolist() == [1.0, 0.5, 3.0, -2.5]
    assert postprocess_scores(scores, has_eos).tolist() == scores.tolist()  # no penalty configured
    assert scores.tolist() == [1.0, 2.0, 3.0, -1.0]  # the input is not modified


def test_normalization_uses_the_moments_of_everything_seen():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n).astype(np.float32) for n in (8, 1, 16, 5)]
    moments, seen = RunningMoments(), []
    for batch in batches:
        seen.append(batch)
        out = postprocess_scores(torch.from_numpy(batch), torch.ones(len(batch), dtype=torch.bool), moments=moments)
        everything = np.concatenate(seen).astype(np.float64)
        assert moments.count == len(everything)
        assert moments.mean == pytest.approx(everything.mean(), rel=1e-6)
        assert moments.std == pytest.approx(everything.std(), rel=1e-6)  # population std, like np.std
        np.testing.assert_allclose(out.numpy(), (batch - everything.mean()) / everything.std(), rtol=1e-5, atol=1e-6)


def test_normalization_then_clip_and_penalty_before_normalization():
    moments = RunningMoments()
    out = postprocess_scores(torch.tensor([0.0, 10.0, 0.0, 10.0]), torch.tensor([True, True, True, False]),
                             missing_eos_penalty=10.0, moments=moments, clip=1.0)
    raw = np.array([0.0, 10.0, 0.0, 0.0])  # the penalty is applied before the moments see the scores
    assert moments.mean == pytest.approx(raw.mean())
    np.testing.assert_allclose(out.numpy(), np.clip((raw - raw.mean()) / raw.std(), -1, 1), rtol=1e-6)
    assert postprocess_scores(torch.tensor([-5.0, 0.5, 5.0]), torch.ones(3, dtype=torch.bool), clip=2.0).tolist() == [-2.0, 0.5, 2.0]


def test_running_moments_edge_cases_and_state():
    moments = RunningMoments()
    assert moments.std == 1.0  # nothing seen: normalization divides by 1
    moments.update(torch.tensor([]))
    assert moments.state_dict() == {"count": 0, "mean": 0.0, "m2": 0.0}
    moments.update(torch.tensor([2.0]))
    assert (moments.count, moments.mean, moments.std) == (1, 2.0, 1.0)
    moments.update(torch.tensor([4.0, 6.0]))
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert restored.state_dict() == moments.state_dict()
    assert restored.std == pytest.approx(math.sqrt(8 / 3))
    constant = RunningMoments()
    assert postprocess_scores(torch.full((4,), 7.0), torch.ones(4, dtype=torch.bool), moments=constant).tolist() == [0.0] * 4


# ---- reward models -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A seq-cls GPT-2 whose tokenizer is not the policy's (extra words, so different ids)."""
    out = tmp_path_factory.mktemp("rm")
    tok = tiny.make_tokenizer(out, extra=["zebra", "apple", "orange"])
    tiny.make_policy(out, tok, n_layer=1, seed=3, head="seq")
    return out


def test_reward_model_with_its_own_tokenizer(reward_model_dir, tiny_world):
    rm = ModelReward.from_pretrained(str(reward_model_dir), batch_size=2)
    assert len(rm.tokenizer) != len(tiny_world["tokenizer"])
    scores = rm(PROMPTS, RESPONSES)
    assert scores.shape == (3,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert rm(PROMPTS[:1], RESPONSES[:1]).tolist() == pytest.approx(scores[:1].tolist(), abs=1e-5)
    assert rm([], []).shape == (0,)
    reward = make_reward(model=str(reward_model_dir), batch_size=3)
    assert isinstance(reward, ModelReward) and reward(PROMPTS, RESPONSES).tolist() == pytest.approx(scores.tolist(), abs=1e-5)


def test_reward_model_scores_do_not_depend_on_the_batch(reward_model_dir):
    """The checkpoint's pad id (here the <unk> id) differs from the tokenizer's: padded rows must
    still be scored at their last real token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    model.config.pad_token_id = tokenizer.unk_token_id
    prompts, responses = ["the cat sits on the mat and", "a", "dog is"], [" very happy good", " good", " sad"]
    batched = ModelReward(model, tokenizer, batch_size=8)(prompts, responses)
    one_by_one = ModelReward(model, tokenizer, batch_size=1)(prompts, responses)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)


def test_reward_model_truncates_to_its_positions_and_leaves_the_tokenizer_alone(reward_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()  # n_positions = 64
    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    tokenizer.truncation_side, tokenizer.padding_side = "right", "left"  # as a shared policy tokenizer might be
    rm = ModelReward(model, tokenizer, max_length=512)
    long_text = " ".join(["good"] * 200)
    scores = rm(["the cat", "a"], [long_text, " dog"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # Left truncation keeps the end: the score of a long text is that of its last 64 tokens.
    assert rm(["x"], [" " + " ".join(["good"] * 64)]).item() == pytest.approx(scores[0].item(), abs=1e-5)
    assert (tokenizer.truncation_side, tokenizer.padding_side) == ("right", "left")


# ---- model loading ------------------------------------------------------------------------------------


def test_missing_model_paths_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match=f"model path not found: {tmp_path}/nope"):
        load_causal_lm(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="model path not found"):
        ModelReward.from_pretrained(str(tmp_path / "nope"))


def test_an_empty_model_dir_is_a_model_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="cannot load"):
        ModelReward.from_pretrained(str(tmp_path / "empty"))


def test_a_sequence_classifier_is_not_a_causal_lm(reward_model_dir):
    with pytest.raises(ModelError, match="not a causal language model"):
        load_causal_lm(str(reward_model_dir))


def test_a_multi_label_classifier_is_not_a_reward_model(tmp_path):
    import tiny
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = tiny.make_tokenizer(tmp_path / "clf")
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, num_labels=2)).save_pretrained(tmp_path / "clf")
    with pytest.raises(ModelError, match="2 output labels"):
        ModelReward.from_pretrained(str(tmp_path / "clf"))
