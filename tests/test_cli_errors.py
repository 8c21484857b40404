"""`policyshift train` user errors: exit status 2 and one line `policyshift train: error: ...` on
stderr that names the problem, never a traceback. In-process through `policyshift.cli.main`, except
one subprocess test that checks what really reaches stderr."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from policyshift.cli import main


@pytest.fixture(autouse=True)
def quiet_transformers(monkeypatch):
    """Load reports and weight-loading bars would share stderr with the error line."""
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("POLICYSHIFT_DEBUG", raising=False)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield
    hf_logging.set_verbosity(verbosity)
    hf_logging.enable_progress_bar()


def run_args(world, out_dir, **overrides) -> list[str]:
    """A 1-step run on the tiny world; `overrides` replace any of these settings (None drops one)."""
    settings = {
        "model.policy": world["policy"], "data.prompts": world["prompts"], "reward.function": "tiny:good_fraction",
        "train.steps": "1", "rollout.batch_size": "4", "rollout.max_new_tokens": "4", "analysis.num_prompts": "0",
        "train.output_dir": str(out_dir),
    }
    settings.update({k.replace("__", "."): v for k, v in overrides.items()})
    return ["train"] + [x for k, v in settings.items() if v is not None for x in (f"--{k}", v)]


def error_line(capsys, argv, command="train") -> str:
    """Runs the CLI, expects exit status 2, returns the error message (without the prefix)."""
    prefix = f"policyshift {command}: error: "
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # one error line, and nothing after it
    return errors[0][len(prefix):]


def test_the_same_settings_train_when_nothing_is_wrong(capsys, tmp_path, tiny_world):
    """The control for the tests below: each of them changes one setting of this run."""
    assert main(run_args(tiny_world, tmp_path / "run")) == 0
    assert f"run written to {tmp_path / 'run'}" in capsys.readouterr().out
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


# ---- before any model loads ------------------------------------------------------------------------


def test_missing_config_file(capsys, tmp_path):
    assert error_line(capsys, ["train", "--config", str(tmp_path / "nope.yaml")]) == f"config file not found: {tmp_path / 'nope.yaml'}"


def test_unknown_config_key_with_suggestion(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("ppo:\n  clip_range: 0.1\n")
    message = error_line(capsys, ["train", "--config", str(tmp_path / "c.yaml"), "--ppo.clip_rnage", "0.2"])
    assert message == "unknown config key 'ppo.clip_rnage'; did you mean 'ppo.clip_range'?"
    (tmp_path / "d.yaml").write_text("kll:\n  beta: 0.1\n")
    assert error_line(capsys, ["train", "--config", str(tmp_path / "d.yaml")]) == "unknown config key 'kll'; did you mean 'kl'?"


def test_invalid_value(capsys):
    assert error_line(capsys, ["train", "--kl.beta", "-1"]) == "kl.beta must be >= 0; got -1.0"


def test_missing_required_settings(capsys):
    assert error_line(capsys, ["train"]) == "model.policy is required (a from_pretrained path or hub id)"


def test_output_dir_already_holding_a_run(capsys, tmp_path, tiny_world):
    (tmp_path / "run" / "checkpoints" / "step-1").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-1" / "trainer_state.json").write_text('{"step": 1}')
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run"))
    assert message.startswith(f"{tmp_path / 'run'} already holds a run (resumable); use --resume {tmp_path / 'run'} to continue it")
    assert "--train.overwrite true" in message


def test_model_path_missing(capsys, tmp_path, tiny_world):
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", model__policy=str(tmp_path / "no-model")))
    assert message == f"model path not found: {tmp_path / 'no-model'}"


# ---- prompts (a missing file: before the models load; its contents: after, with the tokenizer) ----------


def test_missing_prompt_file(capsys, tmp_path, tiny_world):
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", data__prompts=str(tmp_path / "nope.jsonl")))
    assert message == f"prompt file not found: {tmp_path / 'nope.jsonl'}"


def test_malformed_prompt_file(capsys, tmp_path, tiny_world):
    (tmp_path / "p.jsonl").write_text('{"prompt": "the cat"}\n{"prompt": "a dog"\n')
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", data__prompts=str(tmp_path / "p.jsonl")))
    assert message.startswith(f"{tmp_path / 'p.jsonl'}:2: malformed JSON")


def test_prompt_file_with_the_wrong_field(capsys, tmp_path, tiny_world):
    (tmp_path / "p.jsonl").write_text('{"text": "the cat"}\n')
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", data__prompts=str(tmp_path / "p.jsonl")))
    assert message == f"{tmp_path / 'p.jsonl'}:1: no 'prompt' field (fields: text); set data.prompt_field"


def test_empty_prompt_list(capsys, tmp_path, tiny_world):
    (tmp_path / "p.jsonl").write_text("\n\n")
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", data__prompts=str(tmp_path / "p.jsonl")))
    assert message == f"no prompts in {tmp_path / 'p.jsonl'}"


# ---- rewards -----------------------------------------------------------------------------------------


def reward_module(tmp_path, monkeypatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:reward"


def test_reward_function_that_cannot_be_imported(capsys, tmp_path, tiny_world, monkeypatch):
    spec = reward_module(tmp_path, monkeypatch, "cli_reward_broken", "import no_such_module_for_cli_test\n")
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", reward__function=spec))
    assert message == ("cannot import reward module 'cli_reward_broken': ModuleNotFoundError: "
                       "No module named 'no_such_module_for_cli_test'")


def test_reward_returning_the_wrong_number_of_values(capsys, tmp_path, tiny_world, monkeypatch):
    spec = reward_module(tmp_path, monkeypatch, "cli_reward_count", "def reward(prompts, responses):\n    return [0.0]\n")
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", reward__function=spec))
    assert message == "reward function cli_reward_count:reward returned 1 values for 4 responses"


def test_reward_returning_nan(capsys, tmp_path, tiny_world, monkeypatch):
    spec = reward_module(tmp_path, monkeypatch, "cli_reward_nan",
                         "def reward(prompts, responses):\n    return [float('nan')] * len(responses)\n")
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", reward__function=spec))
    assert message.startswith("reward returned a non-finite reward (nan) for prompt ")
    assert "/ response " in message


# ---- the real process ----------------------------------------------------------------------------------


def test_subprocess_stderr_has_no_traceback(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  policy: x\n")
    env = {k: v for k, v in os.environ.items() if k != "POLICYSHIFT_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "policyshift", "train", "--config", str(tmp_path / "c.yaml"), "--ppo.clip_rnage", "0.2"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parent)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr == "policyshift train: error: unknown config key 'ppo.clip_rnage'; did you mean 'ppo.clip_range'?\n"
    assert proc.stdout == ""


def test_output_dir_not_writable(capsys, tmp_path, tiny_world):
    (tmp_path / "a-file").write_text("")  # a directory cannot be made inside a file (even as root)
    message = error_line(capsys, run_args(tiny_world, tmp_path / "a-file" / "run"))
    assert message.startswith(f"output directory {tmp_path / 'a-file' / 'run'} is not writable")


def test_policy_that_is_not_a_causal_lm(capsys, tmp_path, tiny_world):
    import tiny

    tiny.make_policy(tmp_path / "clf", tiny_world["tokenizer"], head="seq")
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", model__policy=str(tmp_path / "clf")))
    assert message == f"'{tmp_path / 'clf'}' is a GPT2ForSequenceClassification, not a causal language model"


def test_reward_model_that_is_not_a_classifier(capsys, tmp_path, tiny_world):
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", reward__function=None, reward__model=tiny_world["policy"]))
    assert "is a GPT2LMHeadModel, not a sequence-classification reward model" in message


def test_prompts_that_leave_no_room_for_a_response(capsys, tmp_path, tiny_world):
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", rollout__max_new_tokens="64"))
    assert message == "rollout.max_new_tokens (64) leaves no room for a prompt in the model's 64-token context"


def test_resume_of_a_directory_that_is_not_a_run(capsys, tmp_path):
    message = error_line(capsys, ["train", "--resume", str(tmp_path)])
    assert message == f"--resume {tmp_path}: not a run directory (no config.yaml)"


def test_stage_commands_run_and_fail_in_one_line(capsys, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(f'{{"text": "review of the cat : it is {w} ."}}\n' for w in ["good", "bad", "fine", "great"] * 10))
    assert main(["sft", "--data", str(texts), "--output_dir", str(tmp_path / "sft"), "--steps", "3", "--n_layer", "1",
                 "--n_embd", "16", "--n_head", "2", "--vocab_size", "300", "--log_every", "0"]) == 0
    assert "SFT model written" in capsys.readouterr().out
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p :", "chosen": "good .", "rejected": "bad ."}\n' * 8)
    assert main(["reward-model", "--pairs", str(pairs), "--base_model", str(tmp_path / "sft"), "--output_dir", str(tmp_path / "rm"),
                 "--steps", "2", "--batch_size", "4", "--log_every", "0"]) == 0
    assert "held-out pairwise accuracy" in capsys.readouterr().out
    assert error_line(capsys, ["sft", "--data", str(texts), "--output_dir", str(tmp_path / "x"), "--model", str(tmp_path / "nope")],
                      "sft") == f"model path not found: {tmp_path / 'nope'}"
    assert error_line(capsys, ["sft", "--output_dir", str(tmp_path / "x")], "sft") == "missing required option(s): --data"
    assert error_line(capsys, ["reward-model", "--pairs", str(tmp_path / "none.jsonl"), "--base_model", str(tmp_path / "sft"),
                               "--output_dir", str(tmp_path / "y")], "reward-model") == f"pairs file not found: {tmp_path / 'none.jsonl'}"


def test_only_train_runs_under_several_processes(capsys, tmp_path, monkeypatch):
    """Under `accelerate launch` every process would redo a whole SFT/RM/demo job and write the same files."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv in (["sft", "--data", "x.jsonl", "--output_dir", str(tmp_path / "sft")], ["demo", "--out", str(tmp_path / "demo")]):
        line = error_line(capsys, argv, argv[0])
        assert line == f"only `train` runs under accelerate launch (2 processes); run `policyshift {argv[0]}` as one process"
    assert not (tmp_path / "sft").exists() and not (tmp_path / "demo").exists()
