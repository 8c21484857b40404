"""The GPU memory/speed switches, checked on CPU: gradient checkpointing changes memory, not results;
bf16 mixed precision runs every forward (rollout and update) under autocast and still learns."""

import pytest
import torch

from policyshift import PPOTrainer
from test_train import config


def short(world, out, **sections):
    base = {"train": {"steps": 3, "output_dir": str(out), "save_every": 0}, "analysis": {"every": 0, "num_prompts": 2},
            "tracking": {"tensorboard": False}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config(world, out, **base)


def count_block_calls(trainer) -> list:
    """Calls of an MLP inside a checkpointed block, recomputations included (torch skips forward
    hooks when it recomputes, so the method itself is wrapped)."""
    calls, mlp = [], trainer.models.policy.transformer.h[0].mlp
    forward = mlp.forward
    mlp.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]
    return calls


def test_gradient_checkpointing_gives_the_same_run(tiny_world, tmp_path):
    plain_trainer = PPOTrainer(short(tiny_world, tmp_path / "plain"))
    plain_calls = count_block_calls(plain_trainer)
    plain = plain_trainer.train()
    trainer = PPOTrainer(short(tiny_world, tmp_path / "gc", model={"gradient_checkpointing": True}))
    calls = count_block_calls(trainer)
    flag = "is_activation_checkpointing" if hasattr(trainer.models.policy, "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert getattr(trainer.models.policy, flag) and getattr(trainer.models.critic, flag)
    checkpointed = trainer.train()
    assert len(calls) > len(plain_calls)  # the blocks really ran again in the backward pass (recomputation)
    for a, b in zip(plain, checkpointed):
        for key in ("loss/policy", "loss/value", "kl/token_mean", "reward/score_mean", "optim/grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert not trainer.models.training  # back to eval mode after the update: rollouts stay deterministic


def test_bf16_autocast_covers_rollout_and_update(tiny_world, tmp_path):
    trainer = PPOTrainer(short(tiny_world, tmp_path / "bf16", train={"mixed_precision": "bf16"}))
    seen = []
    hook = trainer.models.policy.lm_head.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
    history = trainer.train()
    hook.remove()
    assert {dtype for _, dtype in seen} == {torch.bfloat16}  # sampling, probes and the update alike
    assert any(grad for grad, _ in seen) and any(not grad for grad, _ in seen)
    assert all(p.dtype == torch.float32 for p in trainer.models.parameters())  # master weights stay fp32
    assert all(torch.isfinite(torch.tensor(h["loss/total"])) for h in history)
    # the PPO ratio at the first epoch is 1 up to bf16 rounding: rollout and update ran at the same precision
    assert abs(history[0]["ppo/ratio_mean"] - 1) < 0.05


def test_one_process_gives_each_trainer_the_precision_it_asked_for(tiny_world, tmp_path):
    # accelerate keeps one process-wide state: a full-precision trainer built after a bf16 one (a notebook, a test
    # session) got the bf16 state and ran its forwards under bf16 autocast, and the other way round was refused
    first = PPOTrainer(short(tiny_world, tmp_path / "bf16", train={"mixed_precision": "bf16"}))
    assert first.accelerator.mixed_precision == "bf16"
    second = PPOTrainer(short(tiny_world, tmp_path / "fp32"))
    assert second.accelerator.mixed_precision == "no"
    seen = []
    second.models.policy.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    second.train()
    assert seen and set(seen) == {torch.float32}
    assert PPOTrainer(short(tiny_world, tmp_path / "bf16-again", train={"mixed_precision": "bf16"})).accelerator.mixed_precision == "bf16"

