"""Every command validates its inputs before it works: one line `policyshift CMD: error: ...`, exit 2
(test_cli_errors covers train's config and data errors; this file the other commands and the
model-level mismatches). In-process through policyshift.cli.main."""

import shutil

import pytest
import torch

import tiny
from policyshift.cli import main
from test_cli_errors import error_line, quiet_transformers, run_args  # noqa: F401 (quiet_transformers: autouse fixture)


@pytest.fixture(scope="module")
def bad_models(tiny_world, tmp_path_factory):
    """A truncated copy of the policy, a policy+tokenizer with a larger vocabulary, and a tokenizer of
    the same size as the policy's with other words (other ids)."""
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(tiny_world["policy"], root / "trunc")
    weights = root / "trunc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bigger = tiny.make_tokenizer(root / "bigger", extra=["zebra", "yak", "xylophone"])
    tiny.make_policy(root / "bigger", bigger)
    tiny.make_tokenizer(root / "renamed", words=[w if w != "cat" else "cow" for w in tiny.WORDS])
    (root / "long.jsonl").write_text('{"prompt": "%s"}\n' % " ".join(["the cat"] * 50) * 2)
    (root / "two.jsonl").write_text('{"prompt": "the cat"}\n{"prompt": "a dog"}\n')
    return root


# ---- compare -------------------------------------------------------------------------------------
def compare_args(world, bad, tmp_path, *extra, a=None, b=None, prompts=None):
    return ["compare", a or world["policy"], b or world["policy"], "--prompts", str(prompts or bad / "two.jsonl"),
            "--out", str(tmp_path / "cmp"), "--max-new-tokens", "4", *extra]


def test_compare_rejects_impossible_sampling_settings(capsys, tmp_path, tiny_world, bad_models):
    args = lambda *extra: compare_args(tiny_world, bad_models, tmp_path, *extra)  # noqa: E731
    assert error_line(capsys, args("--max-new-tokens", "-3"), "compare") == "--max-new-tokens must be >= 1; got -3"
    assert error_line(capsys, args("--temperature", "0"), "compare") == "--temperature must be > 0 (sampling divides the logits by it); got 0.0"
    assert error_line(capsys, args("--batch-size", "0"), "compare") == "--batch-size must be >= 1; got 0"
    assert (error_line(capsys, args("--max-new-tokens", "100"), "compare")
            == "--max-new-tokens (100) leaves no room for a prompt in the model's 64-token context")
    (tmp_path / "file").write_text("")
    assert error_line(capsys, compare_args(tiny_world, bad_models, tmp_path)[:-4] + ["--out", str(tmp_path / "file")], "compare") == (
        f"--out {tmp_path / 'file'} is a file, not a directory")
    assert not (tmp_path / "cmp").exists()


def test_compare_fits_long_prompts_into_the_context(capsys, tmp_path, tiny_world, bad_models):
    assert main(compare_args(tiny_world, bad_models, tmp_path, prompts=bad_models / "long.jsonl")) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[0] == ("policyshift compare: warning: 2 of 2 prompts are longer than 60 tokens (prompt + 4 response tokens must fit the "
                      "model's 64-token context); they are cut from the left"), err
    assert (tmp_path / "cmp" / "compare.json").is_file()


def test_truncated_weights_name_the_file(capsys, tmp_path, tiny_world, bad_models):
    weights = bad_models / "trunc" / "model.safetensors"
    message = error_line(capsys, compare_args(tiny_world, bad_models, tmp_path, a=str(bad_models / "trunc")), "compare")
    assert message.startswith(f"cannot load causal language model from '{bad_models / 'trunc'}': {weights} is damaged")
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", model__policy=str(bad_models / "trunc")))
    assert f"{weights} is damaged" in message


# ---- train: devices and vocabularies -------------------------------------------------------------
def test_devices_are_checked_before_anything_loads(capsys, tmp_path, tiny_world):
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", train__device="banana"))
    assert message == "train.device 'banana' is not a device; use auto, cpu, cuda, cuda:N or mps"
    if not torch.cuda.is_available():
        message = error_line(capsys, run_args(tiny_world, tmp_path / "run", train__device="cuda"))
        assert message.startswith("train.device is 'cuda' but ") and message.endswith("; use cpu or auto")
    assert not (tmp_path / "run").exists()


def test_tokenizer_larger_than_the_policy_vocabulary(capsys, tmp_path, tiny_world, bad_models):
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", model__tokenizer=str(bad_models / "bigger")))
    assert message == (f"tokenizer {bad_models / 'bigger'} has 24 tokens but policy {tiny_world['policy']} embeds only 21: "
                       "they are not a pair (set model.tokenizer to the policy's own)")


def test_tokenizer_of_the_same_size_with_other_ids(capsys, tmp_path, tiny_world, bad_models):
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", model__tokenizer=str(bad_models / "renamed")))
    assert message.startswith(f"tokenizer {bad_models / 'renamed'} is not the one saved with policy {tiny_world['policy']}")


def test_reference_with_another_vocabulary(capsys, tmp_path, tiny_world, bad_models):
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", model__reference=str(bad_models / "bigger")))
    assert message == (f"reference {bad_models / 'bigger'} has a 24-token vocabulary, policy {tiny_world['policy']} 21: "
                       "the KL to the reference needs the same vocabulary")


# ---- sft, reward-model, demo ---------------------------------------------------------------------
@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(f'{{"text": "review of the cat : it is {w} ."}}\n' for w in ["good", "bad", "fine", "great"] * 10))
    return path


@pytest.mark.parametrize("flags,message", [
    (["--seq_len", "200"], "seq_len (200) is longer than the model's n_positions (128)"),
    (["--n_embd", "30", "--n_head", "4"], "n_embd (30) must be divisible by n_head (4)"),
    (["--steps", "0"], "steps must be >= 1; got 0"),
    (["--lr", "-1"], "lr must be > 0; got -1.0"),
    (["--eval_fraction", "1"], "eval_fraction must be in [0, 1); got 1.0"),
    (["--vocab_size", "100"], "vocab_size must be >= 258 (256 bytes + EOS + PAD) for a trained byte-level tokenizer; got 100"),
    (["--device", "banana"], "device 'banana' is not a device; use auto, cpu, cuda, cuda:N or mps"),
])
def test_sft_rejects_impossible_settings(capsys, tmp_path, texts, flags, message):
    assert error_line(capsys, ["sft", "--data", str(texts), "--output_dir", str(tmp_path / "sft"), *flags], "sft") == message
    assert not (tmp_path / "sft").exists()


def test_reward_model_fits_max_length_to_its_base_model(capsys, tmp_path, tiny_world):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "the cat", "chosen": "is good", "rejected": "is bad"}\n' * 8)
    assert main(["reward-model", "--pairs", str(pairs), "--base_model", tiny_world["policy"], "--output_dir", str(tmp_path / "rm"),
                 "--steps", "1", "--batch_size", "4", "--log_every", "0"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"policyshift reward-model: warning: max_length 128 is longer than {tiny_world['policy']}'s 64-token context; using 64"]


def test_demo_out_naming_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    assert error_line(capsys, ["demo", "--out", str(tmp_path / "f")], "demo") == f"--out {tmp_path / 'f'} is a file, not a directory"
    assert error_line(capsys, ["demo", "--out", ""], "demo") == "--out is empty; name the directory to write to"


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "a"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "policyshift compare: error: the following arguments are required: b, --prompts (see policyshift compare --help)"]
    assert main(["report", "x", "--bogus"]) == 2
    assert capsys.readouterr().err.splitlines() == ["policyshift report: error: unrecognized arguments: --bogus (see policyshift report --help)"]
