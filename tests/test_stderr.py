"""Stderr of real commands (subprocesses: what a user sees): progress lines, and each warning the
user can act on as one `policyshift CMD: warning:` line — no source lines, no library noise caused by
policyshift's own use of transformers, no progress bars of transformers."""

import re
import subprocess
import sys

from tiny import cli_env

# transformers' deprecation of the sampler's `past_key_values` argument: fixed with the model
# compatibility issue (rollout.py's sampler), not here
KNOWN_ELSEWHERE = ("`past_key_values`",)


def run(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "policyshift", *args], env=cli_env(), capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.strip() and not any(k in line for k in KNOWN_ELSEWHERE)]


def test_train_stderr_is_progress_and_one_line_warnings(tiny_world, tmp_path):
    long_prompts = tmp_path / "prompts.jsonl"
    long_prompts.write_text("".join('{"prompt": "%s"}\n' % " ".join(["the cat"] * n) for n in (1, 2, 40, 3)))
    lines = run("train", "--model.policy", tiny_world["policy"], "--data.prompts", str(long_prompts), "--reward.function",
                "tiny:good_fraction", "--train.steps", "2", "--rollout.batch_size", "4", "--rollout.max_new_tokens", "4",
                "--analysis.num_prompts", "0", "--train.output_dir", str(tmp_path / "run"), cwd=tmp_path)
    warnings = [line for line in lines if line.startswith("policyshift train: warning: ")]
    assert warnings == ["policyshift train: warning: 1 of 4 prompts are longer than 60 tokens (prompt + 4 response tokens must fit "
                        "the model's 64-token context); they are cut from the left"]
    progress = [line for line in lines if line.startswith("step ") or "PPO " in line]
    # live findings, one line each (4-token responses are all cut at the limit: the truncation detector speaks)
    findings = [line for line in lines if re.match(r"(info|warning|critical) [a-z_]+ \(step \d+\): .+\.$", line)]
    assert len(progress) + len(warnings) + len(findings) == len(lines), lines


def test_stage_commands_print_nothing_on_stderr(tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(f'{{"text": "review of the cat : it is {w} ."}}\n' for w in ["good", "bad", "fine", "great"] * 10))
    assert run("sft", "--data", str(texts), "--output_dir", str(tmp_path / "sft"), "--steps", "2", "--n_layer", "1", "--n_embd", "16",
               "--n_head", "2", "--vocab_size", "300", "--log_every", "0", cwd=tmp_path) == []
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p :", "chosen": "good .", "rejected": "bad ."}\n' * 8)
    assert run("reward-model", "--pairs", str(pairs), "--base_model", str(tmp_path / "sft"), "--output_dir", str(tmp_path / "rm"),
               "--steps", "2", "--batch_size", "4", "--log_every", "0", cwd=tmp_path) == []


def test_a_warning_is_one_line(capsys, monkeypatch):
    """Any warning raised inside a command (multi-line message, any category) comes out as one line."""
    import warnings

    import policyshift.cli as cli

    def warn_and_succeed(args, extra):
        warnings.warn("first line\n  second line", UserWarning)
        warnings.warn("a library's notice", FutureWarning)
        return 0

    monkeypatch.setattr(cli, "cmd_verify", warn_and_succeed)
    assert cli.main(["verify", "x"]) == 0
    assert capsys.readouterr().err.splitlines() == ["policyshift verify: warning: first line second line",
                                                    "policyshift verify: warning: FutureWarning: a library's notice"]
