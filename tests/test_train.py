"""End-to-end PPO on CPU with tiny real models: the reward rises with the KL finite and positive;
a large β holds the policy at the reference; an HF reward model with its own tokenizer works."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import tiny
from policyshift import PPOConfig, PPOTrainer
from tiny import rows


def config(world, out, **sections):
    base = {
        "model": {"policy": world["policy"]},
        "data": {"prompts": world["prompts"]},
        "reward": {"function": "tiny:good_fraction"},
        "rollout": {"batch_size": 16, "max_new_tokens": 10},
        "ppo": {"lr": 3e-3, "num_minibatches": 2},
        "analysis": {"every": 15, "num_prompts": 4},
        "train": {"steps": 30, "output_dir": str(out), "save_every": 15, "seed": 0},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return PPOConfig.from_dict(base)


def mean(history, key):
    return sum(r[key] for r in history) / len(history)


@pytest.fixture(scope="module")
def small_beta_run(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "small_beta"
    history = PPOTrainer(config(tiny_world, out, kl={"beta": 0.05})).train()
    return out, history


def test_reward_rises_with_finite_positive_kl(small_beta_run):
    _, h = small_beta_run
    assert len(h) == 30
    start, end = mean(h[:5], "reward/score_mean"), mean(h[-5:], "reward/score_mean")
    assert end > start + 0.3, (start, end)
    kl_end = mean(h[-5:], "kl/seq_mean")
    assert 0 < kl_end < 50 and all(torch.isfinite(torch.tensor(r["kl/seq_mean"])) for r in h)
    assert mean(h[-5:], "kl/exact_seq_mean") > 0  # the exact KL agrees that the policy moved
    assert abs(h[0]["kl/k1_token_mean"]) < 1e-5  # step 1 samples from π = π_ref


def test_run_directory_layout(small_beta_run):
    out, h = small_beta_run
    metrics = rows(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(1, 31))
    for key in ("kl/token_mean", "kl/exact_token_mean", "kl/beta", "reward/score_std", "policy/entropy", "ppo/clip_frac",
                "value/explained_variance", "optim/grad_norm", "time/generate", "perf/tokens_per_s", "response/eos_rate"):
        assert key in metrics[-1], key
    assert (out / "config.yaml").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-15", "step-30"]
    ckpt = out / "checkpoints" / "step-30"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 30
    AutoModelForCausalLM.from_pretrained(ckpt / "policy")
    AutoModelForSequenceClassification.from_pretrained(ckpt / "critic")
    final = out / "final"
    AutoModelForCausalLM.from_pretrained(final)
    AutoTokenizer.from_pretrained(final)
    AutoModelForSequenceClassification.from_pretrained(final / "critic")  # the value model is saved (TRL #3293)
    samples = rows(out / "samples.jsonl")
    assert sorted({(s["step"], s["model"]) for s in samples}) == [(0, "reference"), (15, "policy"), (30, "policy")]
    dists = rows(out / "distributions.jsonl")
    assert len(dists) == 30 and len(dists[0]["scores"]) == 16


def test_large_beta_keeps_kl_small(tiny_world, small_beta_run, tmp_path):
    _, small = small_beta_run
    h = PPOTrainer(config(tiny_world, tmp_path / "big_beta", kl={"beta": 2.0}, analysis={"num_prompts": 0})).train()
    assert mean(h[-5:], "kl/seq_mean") < 0.25 * mean(small[-5:], "kl/seq_mean")
    assert mean(h[-5:], "kl/exact_seq_mean") < 1.0


def test_reward_model_with_its_own_tokenizer(tiny_world, tmp_path):
    # The RM's vocabulary differs from the policy's (extra words, other ids): it must score decoded text.
    rm_tok = tiny.make_tokenizer(tmp_path / "rm", words=list(reversed(tiny.WORDS)), extra=["extra", "words"])
    tiny.make_policy(tmp_path / "rm", rm_tok, head="seq", seed=3)
    cfg = config(tiny_world, tmp_path / "run", reward={"function": None, "model": str(tmp_path / "rm")},
                 train={"steps": 3, "save_every": 0}, analysis={"num_prompts": 0})
    trainer = PPOTrainer(cfg)
    assert trainer.critic_source == tiny_world["policy"]  # different vocabulary: critic starts from the policy
    h = trainer.train()
    assert len(h) == 3 and all(r["reward/score_std"] > 0 for r in h)
    # scores equal the RM applied to the decoded text with its own tokenizer
    ro_prompts, ro_responses = ["the cat"], [" sits on the mat"]
    direct = trainer.reward(ro_prompts, ro_responses)
    enc = rm_tok(["the cat sits on the mat"], return_tensors="pt")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert torch.allclose(direct, model(**enc).logits[:, 0], atol=1e-5)


def test_kl_as_loss_and_adaptive_controller(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path / "run", kl={"placement": "loss", "estimator": "k3", "controller": "adaptive", "target": 1.0, "horizon": 100},
                 train={"steps": 4, "save_every": 0}, analysis={"num_prompts": 0})
    h = PPOTrainer(cfg).train()
    assert all("loss/kl" in r for r in h)
    assert all(r["reward/kl_penalty_mean"] >= 0 for r in h)
    betas = [r["kl/beta"] for r in h]
    assert betas[1] < betas[0]  # KL below target at the start: β shrinks (e = −0.2, ×(1 − 0.2·16/100))
    assert betas[1] == pytest.approx(betas[0] * (1 - 0.2 * 16 / 100))


def test_report_builds_from_the_real_run(small_beta_run):
    from policyshift.analysis.report import build_report

    out, _ = small_beta_run
    html = build_report(out).read_text()
    for n in range(1, 8):
        assert f'id="panel-{n}"' in html
    assert "reference (step 0)" in html and "step 30" in html  # the sample browser has both ends of the run


def test_shared_critic_backbone(tiny_world, tmp_path):
    cfg = config(tiny_world, tmp_path / "run", model={"share_critic_backbone": True}, train={"steps": 2, "save_every": 1},
                 analysis={"num_prompts": 0})
    trainer = PPOTrainer(cfg)
    assert trainer.models.critic is None and trainer.critic_source.startswith("policy backbone")
    n_policy = sum(p.numel() for p in trainer.models.policy.parameters())
    assert sum(p.numel() for p in trainer.models.parameters()) == n_policy + trainer.models.policy.config.hidden_size + 1
    h = trainer.train()
    assert len(h) == 2 and all(r["loss/value"] > 0 for r in h)
    assert (tmp_path / "run" / "final" / "critic" / "value_head.safetensors").is_file()
    cfg.train.steps = 3
    resumed = PPOTrainer(cfg, resume=True)
    assert resumed.step == 2 and torch.equal(resumed.models.value_head.summary.weight, trainer.models.value_head.summary.weight)


def test_prompts_are_fitted_to_the_context(tiny_world, tmp_path):
    # the tiny GPT-2 has a 64-token context
    cfg = config(tiny_world, tmp_path / "run", data={"max_prompt_length": 60}, rollout={"max_new_tokens": 10},
                 train={"steps": 1, "save_every": 0}, analysis={"num_prompts": 0})
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # the budget shrinks, but no prompt is that long: nothing to say
        warnings.simplefilter("always")
        trainer = PPOTrainer(cfg)
    assert trainer.max_prompt_length == 54 and not [w for w in caught if "cut" in str(w.message)]
    cfg = config(tiny_world, tmp_path / "run2", data={"max_prompt_length": 2}, train={"steps": 1, "save_every": 0}, analysis={"num_prompts": 0})
    with pytest.warns(UserWarning, match=r"of 64 prompts are longer than 2 tokens; they are cut from the left"):
        trainer = PPOTrainer(cfg)
    trainer.train()
    assert (trainer.history[0]["step"], trainer.max_prompt_length) == (1, 2)
    from policyshift.config import ConfigError

    with pytest.raises(ConfigError, match="leaves no room for a prompt"):
        PPOTrainer(config(tiny_world, tmp_path / "run3", rollout={"max_new_tokens": 64}, analysis={"num_prompts": 0}))


def test_stop_on_critical_ends_the_run_cleanly(tiny_world, tmp_path, capsys):
    from policyshift.cli import main

    out = tmp_path / "run"
    # β = 0 and a huge LR: the policy collapses onto 'good' within a few steps (entropy collapse is critical)
    args = ["train", "--stop-on", "critical", "--model.policy", tiny_world["policy"], "--data.prompts", tiny_world["prompts"],
            "--reward.function", "tiny:good_fraction", "--kl.beta", "0", "--ppo.lr", "0.01", "--rollout.batch_size", "16",
            "--rollout.max_new_tokens", "10", "--train.steps", "60", "--train.save_every", "0", "--analysis.num_prompts", "4",
            "--analysis.every", "5", "--train.output_dir", str(out), "--tracking.tensorboard", "false"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "stopping at step" in err
    steps = [r["step"] for r in rows(out / "metrics.jsonl")]
    assert len(steps) < 60
    assert (out / "checkpoints" / f"step-{steps[-1]}" / "trainer_state.json").is_file()  # the checkpoint is kept
    findings = rows(out / "findings.jsonl")
    assert any(f["severity"] == "critical" for f in findings)
