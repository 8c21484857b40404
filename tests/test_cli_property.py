"""Property: every subcommand, driven with generated arguments (valid and invalid values mixed),
ends with a documented exit status — 0 success, 2 user error, 3 a --fail-on finding, 130
interrupted — never a traceback, and a user error is exactly one `policyshift CMD: error:` line (any
other stderr line is a one-line warning). In-process via policyshift.cli.main on tiny models; every
generated run is bounded (train.steps ≤ 2, 4 episodes, 4 new tokens; 1-step stages), and the example
budget is fixed and derandomized so the test is the same (and as long) on every CI run. `demo` is
driven with its pipeline replaced by a stub: its argument handling is what is under test here (the
pipeline itself: test_demo.py)."""

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiny
from policyshift import PPOTrainer
from policyshift.cli import main
from test_cli_errors import quiet_transformers  # noqa: F401 (autouse fixture)
from test_integrity import run_config

STATUSES = {0, 2, 3, 130}
BUDGET = settings(deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def paths(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("property")
    shutil.copytree(tiny_world["policy"], root / "trunc")
    weights = root / "trunc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    tiny.make_policy(root / "bigger", tiny.make_tokenizer(root / "bigger", extra=["zebra", "yak"]))
    (root / "long.jsonl").write_text('{"prompt": "%s"}\n' % " ".join(["the cat"] * 50))
    (root / "two.jsonl").write_text('{"prompt": "the cat"}\n{"prompt": "a dog"}\n')
    (root / "malformed.jsonl").write_text('{"prompt": "the cat"\n')
    (root / "empty.jsonl").write_text("")
    (root / "texts.jsonl").write_text("".join(f'{{"text": "the cat is {w} ."}}\n' for w in ["good", "bad", "fine", "great"] * 6))
    (root / "pairs.jsonl").write_text('{"prompt": "the cat", "chosen": "is good", "rejected": "is bad"}\n' * 8)
    (root / "a-file").write_text("")
    (root / "empty-dir").mkdir()
    trainer = PPOTrainer(run_config(tiny_world, root / "finished", steps=2))
    trainer.train()
    trainer.close()
    trainer.run_lock.release()
    shutil.copytree(root / "finished", root / "damaged")
    (root / "damaged" / "checkpoints" / "step-2" / "rng.pt").unlink()
    return {"root": root, "policy": tiny_world["policy"], "prompts": tiny_world["prompts"], "missing": str(root / "no-such-thing"),
            **{name: str(root / name) for name in ("trunc", "bigger", "long.jsonl", "two.jsonl", "malformed.jsonl", "empty.jsonl",
                                                   "texts.jsonl", "pairs.jsonl", "a-file", "empty-dir", "finished", "damaged")}}


def flags(**options):
    """A strategy of up to 3 of the options, each with one of its values (mostly one fault at a time,
    so generated runs also get past the early checks). Values are names of `paths` entries (resolved
    later), 'FRESH' (a new directory per example) or literals; the rest keep the command's base values."""
    keys = sorted(options)
    return st.lists(st.sampled_from(keys), max_size=3, unique=True).flatmap(
        lambda chosen: st.fixed_dictionaries({k: st.sampled_from(options[k]) for k in chosen}))


def resolve(value, paths, fresh):
    if value == "FRESH":
        return str(fresh)
    return paths.get(value, value) if isinstance(value, str) else value


def argv_of(command, base: dict, chosen: dict, paths, fresh, positional=()):
    merged = {**base, **chosen}
    out = [command, *(resolve(p, paths, fresh) for p in positional)]
    for key, value in merged.items():
        if value is True:
            out.append(key)
        else:
            out += [key, resolve(value, paths, fresh)]
    return out


def check(capsys, argv):
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse: usage errors (and --help)
        status = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, (argv, err)
    assert status in STATUSES, (argv, status, err[-2000:])
    if status == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(f"policyshift {argv[0]}: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], (argv, err)
        others = [line for line in lines[:-1] if not line.startswith(f"policyshift {argv[0]}: warning: ")]
        assert not others, (argv, others)
    return status


TRAIN_BASE = {"--model.policy": "policy", "--data.prompts": "prompts", "--reward.function": "tiny:good_fraction", "--train.steps": "1",
              "--rollout.batch_size": "4", "--rollout.max_new_tokens": "4", "--analysis.num_prompts": "0", "--train.output_dir": "FRESH",
              "--train.num_threads": "1", "--tracking.tensorboard": "false"}


@settings(BUDGET, max_examples=30)
@given(flags(**{
    "--model.policy": ["trunc", "bigger", "missing", "a-file"], "--model.tokenizer": ["bigger", "missing"], "--model.reference": ["bigger", "trunc"],
    "--data.prompts": ["long.jsonl", "malformed.jsonl", "empty.jsonl", "missing"], "--reward.function": ["nomodule:f", "tiny:nothing"],
    "--train.steps": ["2", "0", "-1", "x"], "--rollout.batch_size": ["0", "3", "x"], "--rollout.max_new_tokens": ["0", "-1", "64", "1000"],
    "--rollout.temperature": ["0", "-1", ".nan"], "--train.device": ["cpu", "banana", "cuda:7"], "--kl.beta": ["-1", "0.2"],
    "--train.output_dir": ["", "a-file", "finished"], "--resume": ["auto", "finished", "damaged", "missing", "empty-dir", ""],
    "--train.overwrite": ["true"], "--ppo.clip_rnage": ["0.2"],
}))
def test_train(capsys, paths, tmp_path_factory, chosen):
    fresh = tmp_path_factory.mktemp("train") / "run"
    for key in ("--resume", "--train.output_dir"):  # a run directory given is a fresh copy: examples must not share state
        if chosen.get(key) in ("finished", "damaged"):
            shutil.copytree(paths[chosen[key]], fresh.parent / chosen[key])
            chosen = {**chosen, key: str(fresh.parent / chosen[key])}
    check(capsys, argv_of("train", TRAIN_BASE, chosen, paths, fresh))


@settings(BUDGET, max_examples=25)
@given(st.sampled_from(["policy", "trunc", "bigger", "missing"]), st.sampled_from(["policy", "trunc", "missing"]), flags(**{
    "--prompts": ["long.jsonl", "malformed.jsonl", "empty.jsonl", "missing"], "--max-new-tokens": ["-3", "0", "100", "x"],
    "--temperature": ["0", "-1", "inf", "nan"], "--batch-size": ["0", "1"], "--out": ["", "a-file"], "--seed": ["-1", "3"],
    "--reward-function": ["tiny:good_fraction", "nomodule:f"], "--prompt-field": ["text"],
}))
def test_compare(capsys, paths, tmp_path_factory, a, b, chosen):
    fresh = tmp_path_factory.mktemp("compare") / "out"
    base = {"--prompts": "two.jsonl", "--max-new-tokens": "4", "--out": "FRESH"}
    check(capsys, argv_of("compare", base, chosen, paths, fresh, positional=(a, b)))


@settings(BUDGET, max_examples=25)
@given(flags(**{
    "--data": ["malformed.jsonl", "empty.jsonl", "missing", "pairs.jsonl"], "--output_dir": ["", "a-file"], "--model": ["policy", "trunc", "missing"],
    "--seq_len": ["0", "8", "200"], "--n_embd": ["30"], "--n_head": ["0", "3"], "--vocab_size": ["100", "x"], "--device": ["banana", "cuda:3"],
    "--lr": ["0", "-1"], "--batch_size": ["0"], "--eval_fraction": ["1", "-0.5"], "--steps": ["0", "2"], "--bogus": ["1"],
}))
def test_sft(capsys, paths, tmp_path_factory, chosen):
    fresh = tmp_path_factory.mktemp("sft") / "out"
    base = {"--data": "texts.jsonl", "--output_dir": "FRESH", "--steps": "1", "--n_layer": "1", "--n_embd": "16", "--n_head": "2",
            "--vocab_size": "300", "--batch_size": "4", "--log_every": "0", "--seq_len": "16"}
    check(capsys, argv_of("sft", base, chosen, paths, fresh))


@settings(BUDGET, max_examples=20)
@given(flags(**{
    "--pairs": ["malformed.jsonl", "texts.jsonl", "missing"], "--base_model": ["trunc", "bigger", "missing", "a-file"],
    "--output_dir": ["", "a-file"], "--max_length": ["0", "16", "1000"], "--steps": ["0", "2"], "--batch_size": ["0", "2"],
    "--eval_fraction": ["1"], "--device": ["banana"],
}))
def test_reward_model(capsys, paths, tmp_path_factory, chosen):
    fresh = tmp_path_factory.mktemp("rm") / "out"
    base = {"--pairs": "pairs.jsonl", "--base_model": "policy", "--output_dir": "FRESH", "--steps": "1", "--batch_size": "4", "--log_every": "0"}
    check(capsys, argv_of("reward-model", base, chosen, paths, fresh))


@settings(BUDGET, max_examples=20)
@given(st.sampled_from(["policy", "finished", "missing", "a-file", "empty-dir"]), flags(**{
    "--reference": ["trunc", "bigger", "missing", "finished"], "--prompts": ["long.jsonl", "malformed.jsonl", "empty.jsonl", "missing"],
    "--max-new-tokens": ["-3", "0", "100"], "--temperature": ["0", "-1", "nan"], "--batch-size": ["0"], "--out": ["", "a-file"],
    "--seed": ["-1"], "--max-prompt-length": ["0", "-5"], "--kl-budget": ["-1", "0", "5"], "--fail-on": ["warning", "critical"],
    "--label": ["one"], "--reward-function": ["tiny:good_fraction", "nomodule:f"], "--logs": ["a-file", "missing", "finished"],
}))
def test_analyze(capsys, paths, tmp_path_factory, path, chosen):
    fresh = tmp_path_factory.mktemp("analyze") / "out"
    base = {"--reference": "policy", "--prompts": "two.jsonl", "--max-new-tokens": "4", "--out": "FRESH"}
    check(capsys, argv_of("analyze", base, chosen, paths, fresh, positional=(path,)))


@settings(BUDGET, max_examples=12)
@given(st.sampled_from(["report", "verify"]), st.sampled_from(["finished", "damaged", "missing", "a-file", "empty-dir"]),
       st.sampled_from([None, "warning", "critical"]))
def test_report_and_verify(capsys, paths, command, run_dir, fail_on):
    argv = [command, paths[run_dir]] + (["--fail-on", fail_on] if fail_on and command == "report" else [])
    status = check(capsys, argv)
    assert (status in (0, 3)) == (run_dir == "finished" or (command == "report" and run_dir == "damaged"))


@settings(BUDGET, max_examples=12)
@given(flags(**{"--out": ["FRESH", "", "a-file"], "--seed": ["-1", "x", "7"], "--quick": [True], "--algorithm": ["grpo", "nope"]}))
def test_demo_arguments(capsys, paths, tmp_path_factory, monkeypatch, chosen):
    import policyshift.demo.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_demo", lambda out, **settings: calls.append((out, settings)))
    fresh = tmp_path_factory.mktemp("demo") / "out"
    status = check(capsys, argv_of("demo", {}, chosen, paths, fresh))
    assert (status == 0) == bool(calls)

