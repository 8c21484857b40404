"""Every command checks every file it names before the first expensive step: a missing data or prompt file,
reward function, reward model, model path or an output directory it cannot write is one line and exit 2
before any model loads or any training starts. Each test makes loading a model (or starting a stage's
training) an error, so a check that came after the load would fail the test with exit 1, not 2."""

import os
from pathlib import Path

import pytest

from policyshift.cli import main
from test_cli_errors import error_line, quiet_transformers, run_args  # noqa: F401 (quiet_transformers: autouse fixture)


@pytest.fixture(autouse=True)
def nothing_loads(monkeypatch):
    """Any model or tokenizer load, and the training of either stage, raises: the input checks must come first."""
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    def reached(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded (or a stage trained) before the inputs were checked")

    for owner in (_BaseAutoModelClass, transformers.PreTrainedModel, transformers.AutoTokenizer, transformers.PreTrainedTokenizerBase):
        monkeypatch.setattr(owner, "from_pretrained", classmethod(reached))
    monkeypatch.setattr("policyshift.stages.sft.run_sft", reached)
    monkeypatch.setattr("policyshift.stages.reward_model.run_reward_model", reached)


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text("def reward(prompts, responses):\n    return [0.0] * len(responses)\n")
    return path


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write: chmod 555 (a user), or a read-only mount (root ignores modes)."""
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        return tmp_path / "ro"
    if not os.access("/proc/sys", os.W_OK):
        return Path("/proc/sys")
    pytest.skip("running as root with no read-only directory to write to")


# ---- analyze ------------------------------------------------------------------------------------------
def test_analyze_names_a_missing_path_before_the_reference_it_would_look_for(capsys, tmp_path):
    message = error_line(capsys, ["analyze", str(tmp_path / "nope")], "analyze")
    assert message.startswith(f"{tmp_path / 'nope'}: no such file or directory (expected an HF model directory")
    # the path was typed first: it is the line even when --reference is missing too
    message = error_line(capsys, ["analyze", str(tmp_path / "nope"), "--reference", str(tmp_path / "no-ref")], "analyze")
    assert message.startswith(f"{tmp_path / 'nope'}: no such file or directory")
    (tmp_path / "f").write_text("")
    assert error_line(capsys, ["analyze", str(tmp_path / "f")], "analyze").startswith(f"{tmp_path / 'f'}: not a directory")


@pytest.mark.parametrize("flags,message", [
    (["--reference", "{tmp}/no-ref"], "--reference {tmp}/no-ref: model path not found: {tmp}/no-ref"),
    (["--prompts", "{tmp}/no.jsonl"], "prompt file not found: {tmp}/no.jsonl"),
    (["--reward-function", "{tmp}/no_reward.py:score"], "reward function file not found: {tmp}/no_reward.py"),
    (["--reward-function", "no_such_reward_module_xyz:score"],
     "cannot import reward module 'no_such_reward_module_xyz': ModuleNotFoundError: No module named 'no_such_reward_module_xyz'"),
    (["--reward", "{tmp}/no-rm"], "model path not found: {tmp}/no-rm"),
    (["--gold-reward-function", "{tmp}/no_gold.py"], "reward function file not found: {tmp}/no_gold.py"),
    (["--gold-reward", "{tmp}/no-gold"], "model path not found: {tmp}/no-gold"),
])
def test_analyze_checks_what_it_names_before_any_model_loads(capsys, tmp_path, tiny_world, flags, message):
    base = ["--reference", tiny_world["policy"], "--prompts", tiny_world["prompts"], "--out", str(tmp_path / "out")]
    argv = ["analyze", tiny_world["policy"], *base, *[f.format(tmp=tmp_path) for f in flags]]  # a later flag overrides
    assert error_line(capsys, argv, "analyze") == message.format(tmp=tmp_path)
    assert not (tmp_path / "out").exists()


def test_analyze_out_that_cannot_be_written(capsys, tmp_path, tiny_world):
    ro = unwritable_dir(tmp_path)
    argv = ["analyze", tiny_world["policy"], "--reference", tiny_world["policy"], "--prompts", tiny_world["prompts"], "--out", str(ro / "out")]
    assert error_line(capsys, argv, "analyze") == f"--out {ro / 'out'}: {ro} is not writable"


# ---- compare ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,flags,message", [
    ("{policy}", "{tmp}/no-b", [], "model path not found: {tmp}/no-b"),
    ("{tmp}/no-a", "{policy}", [], "model path not found: {tmp}/no-a"),
    ("{policy}", "{policy}", ["--prompts", "{tmp}/no.jsonl"], "prompt file not found: {tmp}/no.jsonl"),
    ("{policy}", "{policy}", ["--reward-function", "{tmp}/no_reward.py:score"], "reward function file not found: {tmp}/no_reward.py"),
    ("{policy}", "{policy}", ["--reward", "{tmp}/no-rm"], "model path not found: {tmp}/no-rm"),
])
def test_compare_checks_what_it_names_before_any_model_loads(capsys, tmp_path, tiny_world, a, b, flags, message):
    fill = lambda s: s.format(tmp=tmp_path, policy=tiny_world["policy"])  # noqa: E731
    argv = ["compare", fill(a), fill(b), "--prompts", tiny_world["prompts"], "--out", str(tmp_path / "cmp"), *map(fill, flags)]
    assert error_line(capsys, argv, "compare") == fill(message)
    assert not (tmp_path / "cmp").exists()


# ---- sft, reward-model -----------------------------------------------------------------------------------
def test_sft_checks_its_data_and_model_before_training(capsys, tmp_path, tiny_world):
    out = str(tmp_path / "sft")
    # the data file first: before the model's config is read
    assert (error_line(capsys, ["sft", "--data", str(tmp_path / "no.jsonl"), "--model", str(tmp_path / "no-model"), "--output_dir", out], "sft")
            == f"SFT data file not found: {tmp_path / 'no.jsonl'}")
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "the cat is good"}\n')
    assert (error_line(capsys, ["sft", "--data", str(data), "--model", str(tmp_path / "no-model"), "--output_dir", out], "sft")
            == f"model path not found: {tmp_path / 'no-model'}")
    assert (error_line(capsys, ["sft", "--data", str(data), "--model", tiny_world["policy"], "--tokenizer", str(tmp_path / "no-tok"),
                                "--output_dir", out], "sft") == f"model path not found: {tmp_path / 'no-tok'}")
    ro = unwritable_dir(tmp_path)
    assert (error_line(capsys, ["sft", "--data", str(data), "--output_dir", str(ro / "sft")], "sft")
            == f"output_dir {ro / 'sft'}: {ro} is not writable")
    assert not Path(out).exists()


def test_reward_model_checks_its_pairs_and_base_before_training(capsys, tmp_path, tiny_world):
    out = str(tmp_path / "rm")
    assert (error_line(capsys, ["reward-model", "--pairs", str(tmp_path / "no.jsonl"), "--base_model", tiny_world["policy"],
                                "--output_dir", out], "reward-model") == f"pairs file not found: {tmp_path / 'no.jsonl'}")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "the cat", "chosen": "is good", "rejected": "is bad"}\n')
    assert (error_line(capsys, ["reward-model", "--pairs", str(pairs), "--base_model", str(tmp_path / "no-base"), "--output_dir", out],
                       "reward-model") == f"model path not found: {tmp_path / 'no-base'}")
    assert not Path(out).exists()


# ---- train ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,message", [
    ({"data__prompts": "{tmp}/no.jsonl"}, "prompt file not found: {tmp}/no.jsonl"),
    ({"analysis__prompts": "{tmp}/no-fixed.jsonl"}, "prompt file not found: {tmp}/no-fixed.jsonl"),
    ({"reward__function": "{tmp}/no_reward.py:score"}, "reward function file not found: {tmp}/no_reward.py"),
    ({"reward__function": None, "reward__model": "{tmp}/no-rm"}, "model path not found: {tmp}/no-rm"),
    ({"analysis__gold_reward_function": "no_such_gold_module_xyz:gold"},
     "cannot import reward module 'no_such_gold_module_xyz': ModuleNotFoundError: No module named 'no_such_gold_module_xyz'"),
    ({"model__reference": "{tmp}/no-ref"}, "model path not found: {tmp}/no-ref"),
    ({"model__critic": "{tmp}/no-critic"}, "model path not found: {tmp}/no-critic"),
    ({"model__tokenizer": "{tmp}/no-tok"}, "model path not found: {tmp}/no-tok"),
])
def test_train_checks_every_path_before_the_policy_loads(capsys, tmp_path, tiny_world, override, message):
    overrides = {k: v.format(tmp=tmp_path) if v else v for k, v in override.items()}
    assert error_line(capsys, run_args(tiny_world, tmp_path / "run", **overrides)) == message.format(tmp=tmp_path)
    assert not (tmp_path / "run").exists()


def test_the_checks_pass_inputs_that_are_there(capsys, tmp_path, tiny_world, reward_file):
    """The control: with every named file there, the command gets as far as the first load (the guard's error)."""
    argv = ["compare", tiny_world["policy"], tiny_world["policy"], "--prompts", tiny_world["prompts"], "--out", str(tmp_path / "cmp"),
            "--reward-function", f"{reward_file}:reward"]
    assert main(argv) == 1
    assert "a model or tokenizer was loaded" in capsys.readouterr().err
