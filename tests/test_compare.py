"""`policyshift compare`: B = A gives KL 0; a PPO-trained B gives KL > 0 and its reward gain."""

import json

import pytest

from policyshift import PPOTrainer
from policyshift.cli import main
from test_train import config


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    PPOTrainer(config(tiny_world, out, analysis={"every": 10, "num_prompts": 0}, train={"steps": 10, "save_every": 0})).train()
    return str(out / "final")


def run_compare(a, b, world, out, capsys, *extra):
    code = main(["compare", a, b, "--prompts", world["prompts"], "--out", str(out), "--max-new-tokens", "10", *extra])
    assert code == 0, capsys.readouterr().err
    return json.loads((out / "compare.json").read_text())


def test_same_checkpoint_has_zero_kl(tiny_world, tmp_path, capsys):
    r = run_compare(tiny_world["policy"], tiny_world["policy"], tiny_world, tmp_path, capsys)
    for key, value in r["kl_b_from_a"].items():
        assert abs(value) < 1e-5, key
    assert r["n_prompts"] == 64 and len(r["samples"]) == 64
    assert all(s["a"]["response"] == s["b"]["response"] for s in r["samples"])  # same seed, same model: same samples
    html = (tmp_path / "compare.html").read_text()
    assert 'id="compare-kl"' in html and 'id="compare-samples"' in html and "src=\"http" not in html


def test_trained_checkpoint_has_positive_kl_and_reward_gain(tiny_world, trained, tmp_path, capsys):
    r = run_compare(tiny_world["policy"], trained, tiny_world, tmp_path, capsys, "--reward-function", "tiny:good_fraction")
    kl = r["kl_b_from_a"]
    assert kl["k1_seq_mean"] > 0.3 and kl["k3_seq_mean"] > 0.3 and kl["exact_seq_mean"] > 0.3
    assert r["kl_a_from_b"]["exact_seq_mean"] > 0
    assert r["reward"]["b_mean"] > r["reward"]["a_mean"]
    assert "KL(B‖A) per sequence" in capsys.readouterr().out


def test_different_vocabularies_are_refused(tiny_world, tmp_path, capsys):
    import tiny

    other = tmp_path / "other"
    tiny.make_policy(other, tiny.make_tokenizer(other, extra=["zebra"]))
    assert main(["compare", tiny_world["policy"], str(other), "--prompts", tiny_world["prompts"], "--out", str(tmp_path / "o")]) == 2
    assert "different vocabularies" in capsys.readouterr().err
