"""An error before a run's first checkpoint leaves its output directory as it was (absent, or holding only
what was there: the user's own files); an error after it leaves the run resumable. Probe-suite errors are
found before anything is written; an over-long chat prompt is one error line, with no warning that it is cut."""

import json
import os

from policyshift.cli import main
from policyshift.rundir import run_state


def base_args(world, run):
    return ["train", "--model.policy", world["policy"], "--data.prompts", world["prompts"], "--reward.function", "tiny:good_fraction",
            "--rollout.batch_size", "4", "--rollout.max_new_tokens", "4", "--analysis.num_prompts", "2", "--train.steps", "2",
            "--train.output_dir", str(run)]


def listing(path):
    return sorted(os.listdir(path)) if path.exists() else None


def test_a_probe_suite_error_writes_nothing(tiny_world, tmp_path, capsys):
    run = tmp_path / "new" / "run"
    probes = json.dumps([{"name": "p", "scorer": "no_such_module_xyz:score", "prompts": tiny_world["prompts"]}])
    assert main(base_args(tiny_world, run) + ["--analysis.probes", probes]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "probe suite p" in err[0], err
    assert not (tmp_path / "new").exists()  # not even the parent it created


def test_an_error_once_training_started_keeps_only_the_users_files(tiny_world, tmp_path, capsys, monkeypatch):
    (tmp_path / "nan_reward.py").write_text("def reward(prompts, responses):\n    return [float('nan')] * len(responses)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("# the user's own config, kept here\n")
    (run / "notes.txt").write_text("mine")
    before = {p.name: p.read_text() for p in run.iterdir()}
    assert main(base_args(tiny_world, run) + ["--reward.function", "nan_reward:reward"]) == 2  # step 1, after the step-0 samples
    assert "non-finite reward" in capsys.readouterr().err.strip().splitlines()[-1]
    assert {p.name: p.read_text() for p in run.iterdir()} == before  # no tb/, samples.jsonl, lock; config.yaml as it was


def test_an_error_after_the_first_checkpoint_leaves_the_run_resumable(tiny_world, tmp_path, capsys, monkeypatch):
    (tmp_path / "late_nan.py").write_text(
        "calls = []\ndef reward(prompts, responses):\n    calls.append(1)\n"
        "    return [float('nan') if len(calls) > 2 else 0.5] * len(responses)\n")  # step-0 samples, step 1; NaN at step 2
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    assert main(base_args(tiny_world, run) + ["--reward.function", "late_nan:reward", "--train.save_every", "1"]) == 2
    assert run_state(run).kind == "resumable" and run_state(run).step == 1  # (the lock goes at exit; this process may take it again)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--reward.function", "tiny:good_fraction"]) == 0
    assert run_state(run).kind == "finished"


def test_an_over_long_chat_prompt_is_one_line_without_a_cut_warning(tiny_world, tmp_path, capsys):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_world["policy"])
    policy = tmp_path / "chat_policy"
    import shutil

    shutil.copytree(tiny_world["policy"], policy)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tok.save_pretrained(policy)
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": " ".join(["the cat"] * n)}]}) + "\n" for n in (1, 2, 40, 3, 2, 1)))
    run = tmp_path / "run"
    args = base_args(tiny_world, run)
    args[args.index("--model.policy") + 1], args[args.index("--data.prompts") + 1] = str(policy), str(prompts)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chat prompt(s) are longer than the 60-token prompt budget" in err[0], err
    assert listing(run) is None


def test_datasets_progress_does_not_precede_the_error_line(tiny_world, tmp_path):
    """A .csv prompt file goes through `datasets` (split generation, with its progress bar): the user sees one line."""
    import subprocess
    import sys

    from tiny import cli_env

    (tmp_path / "p.csv").write_text("text\nthe cat\na dog\n")
    args = base_args(tiny_world, tmp_path / "run")
    args[args.index("--data.prompts") + 1] = str(tmp_path / "p.csv")
    proc = subprocess.run([sys.executable, "-m", "policyshift", *args], env=cli_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "no 'prompt' column" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
