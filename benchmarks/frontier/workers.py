"""One training run per process: policyshift PPO (or a lever variant), TRL 1.12 PPO, or TRL 1.16 GRPOTrainer, at
the settings of settings.py, each saving its policy (save_pretrained, weights only) every SAVE_EVERY iterations
into OUT/step-N. The gold scorer is not loaded here: the trainers see the proxy reward model only.

    python workers.py policyshift WORLD OUT --seed 1 [--variant exact_kl]
    /work/venvs/trl112/bin/python workers.py trl_ppo WORLD OUT --seed 1     # TRL 1.12 venv: no policyshift in it
    python workers.py trl_grpo WORLD OUT --seed 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import settings as S  # noqa: E402

STEP_DIR = "step-{}"  # checkpoint directory name; the evaluator reads the step back from it
DONE_FILE = "run.json"  # written when the run finished: timing and settings

# policyshift levers (issue #29), one config change each against the defaults (dotted keys, PPOConfig.from_dict
# overrides); "exact_kl" is not a config value and is applied by _exact_kl_penalty.
VARIANTS = {  # in screening order (issue #29's priorities)
    "default": {},
    "exact_kl": {},
    # Ziegler's controller with the horizon scaled to this run's 40 × 32 = 1280 episodes (10000 would barely move β)
    "adaptive_kl": {"kl.controller": "adaptive", "kl.target": 4.0, "kl.horizon": 500},
    "no_whiten": {"ppo.whiten_advantages": False},
    "reward_norm": {"reward.normalize": True},
    "epochs1_mb1": {"ppo.epochs": 1, "ppo.num_minibatches": 1},
    "grpo_k3_loss": {"algorithm.advantage": "grpo", "rollout.num_generations": S.NUM_GENERATIONS, "kl.placement": "loss",
                     "kl.estimator": "k3"},
    "rloo": {"algorithm.advantage": "rloo", "rollout.num_generations": S.NUM_GENERATIONS},
    "epochs2_mb4": {"ppo.epochs": 2, "ppo.num_minibatches": 4},
    "k3_reward": {"kl.estimator": "k3"},
    # the screen's critic-compatible levers above default at >= 2 KL columns, together (rloo/grpo replace the critic)
    "together": {"reward.normalize": True, "ppo.epochs": 2, "ppo.num_minibatches": 4, "ppo.whiten_advantages": False},
    "clip0.1": {"ppo.clip_range": 0.1},
    "ent0.01": {"ppo.ent_coef": 0.01},
    "beta0.1": {"kl.beta": 0.1},
    "critic_sft": {},  # the critic initialised from the SFT policy instead of the reward model (set in run_policyshift)
    "shared_critic": {"model.share_critic_backbone": True},  # value head on the policy's own backbone
}


def _exact_kl_penalty(trainer) -> None:
    """kl.estimator "exact" as a monkeypatch (the library has no such value): the per-token KL in the reward is the
    full-vocabulary KL(π(·|s_t)‖π_ref(·|s_t)) the rollout already computes for logging (rollout.exact_kl), not
    k1 of the sampled token. Same expectation summed over a response, none of k1's sampling variance."""
    import dataclasses

    orig = trainer.advantage_inputs

    def advantage_inputs(rollout):
        inputs = orig(rollout)
        assert rollout.exact_kl is not None, "rollout.exact_kl must be on"
        return dataclasses.replace(inputs, kl=rollout.exact_kl * rollout.response_mask)

    trainer.advantage_inputs = advantage_inputs


def run_policyshift(world: dict, out: Path, seed: int, variant: str) -> dict:
    from policyshift.config import PPOConfig
    from policyshift.trainer import PPOTrainer

    cfg = PPOConfig.from_dict({
        "model": {"policy": world["sft"]},
        "data": {"prompts": world["train_prompts"], "max_prompt_length": 32},
        "rollout": {"batch_size": S.BATCH, "max_new_tokens": S.RESPONSE_LEN, "temperature": 1.0},
        "reward": {"model": world["reward_model"], "batch_size": 64, "missing_eos_penalty": S.MISSING_EOS_PENALTY},
        "kl": {"estimator": "k1", "beta": S.BETA, "controller": "fixed"},
        "ppo": {"epochs": S.EPOCHS, "num_minibatches": S.MINIBATCHES, "lr": S.LR},
        "analysis": {"num_prompts": 0, "every": 0},
        "train": {"steps": S.ITERATIONS, "seed": seed, "save_every": 0, "output_dir": tempfile.mkdtemp(prefix="frontier-ps-"),
                  "device": "cpu", "num_threads": 1, "overwrite": True},
        "tracking": {"tensorboard": False},
    }, VARIANTS[variant] | ({"model.critic": world["sft"]} if variant == "critic_sft" else {}))
    trainer = PPOTrainer(cfg)
    if variant == "exact_kl":
        _exact_kl_penalty(trainer)
    t0 = time.perf_counter()
    for it in range(1, S.ITERATIONS + 1):
        trainer.ppo_step()
        if it % S.SAVE_EVERY == 0:
            trainer.models.policy.save_pretrained(out / STEP_DIR.format(it))
    return {"seconds": time.perf_counter() - t0}


def _prompt_ids(tok, prompts: list[str]) -> list[list[int]]:
    return [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]


def run_trl_ppo(world: dict, out: Path, seed: int) -> dict:
    """TRL 1.12 `trl.experimental.ppo.PPOTrainer`, set up as benchmarks/ppo_vs_trl.py does (8 optimizer steps per
    iteration: per_device_train_batch_size = BATCH with num_mini_batches, not gradient accumulation), with the demo's
    EOS handling instead of that benchmark's no-early-stop: stop_token "eos", missing_eos_penalty."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(world["sft"], padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(world["sft"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(world["sft"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(world["reward_model"], num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(world["reward_model"], num_labels=1, dtype=torch.float32)
    prompts = [json.loads(line)["prompt"] for line in Path(world["train_prompts"]).read_text().splitlines()]
    dataset = Dataset.from_dict({"input_ids": _prompt_ids(tok, prompts)})
    args = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="frontier-trl-ppo-"),
        per_device_train_batch_size=S.BATCH, gradient_accumulation_steps=1, num_mini_batches=S.MINIBATCHES,
        num_ppo_epochs=S.EPOCHS, local_rollout_forward_batch_size=S.BATCH,
        response_length=S.RESPONSE_LEN, temperature=1.0, kl_estimator="k1", kl_coef=S.BETA,
        missing_eos_penalty=S.MISSING_EOS_PENALTY, stop_token="eos",
        total_episodes=S.BATCH * S.ITERATIONS, num_sample_generations=0, learning_rate=S.LR,
        lr_scheduler_type="constant",  # TrainingArguments' default is linear decay; policyshift's is constant
        bf16=False, fp16=False, gradient_checkpointing=False,
        report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True, logging_steps=1000000,
        seed=seed, use_cpu=True, dataloader_num_workers=0,
    )

    class Saver(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % S.SAVE_EVERY == 0:
                policy.save_pretrained(out / STEP_DIR.format(state.global_step))

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value, callbacks=[Saver()])
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - t0}


def run_trl_grpo(world: dict, out: Path, seed: int) -> dict:
    """TRL 1.16 `GRPOTrainer` at the same batch (8 prompts × 4 generations = 32 completions per generation), the same
    8 optimizer steps per generation (num_iterations = EPOCHS over steps_per_generation = MINIBATCHES micro-batches of
    16), lr, β (its own KL: k3 as a loss term) and response length; the proxy RM through a Python reward function
    that scores the generated ids exactly as policyshift does (prompt ids + completion ids with their EOS)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from policyshift.reward_render import score_sequences

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(world["sft"])
    rm = AutoModelForSequenceClassification.from_pretrained(world["reward_model"], num_labels=1, dtype=torch.float32).eval()
    prompts = [json.loads(line)["prompt"] for line in Path(world["train_prompts"]).read_text().splitlines()]

    def proxy_reward(prompts, completions, completion_ids, **_):
        ids = [p + list(c) for p, c in zip(_prompt_ids(tok, prompts), completion_ids)]
        with torch.no_grad():
            scores = score_sequences(rm, ids, tok.pad_token_id, 64, 512).tolist()
        return [s - (0.0 if c and c[-1] == tok.eos_token_id else S.MISSING_EOS_PENALTY) for s, c in zip(scores, completion_ids)]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="frontier-trl-grpo-"),
        per_device_train_batch_size=S.BATCH // S.MINIBATCHES, gradient_accumulation_steps=1, steps_per_generation=S.MINIBATCHES,
        num_generations=S.NUM_GENERATIONS, num_iterations=S.EPOCHS, max_completion_length=S.RESPONSE_LEN,
        temperature=1.0, top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0,
        beta=S.BETA, learning_rate=S.LR, lr_scheduler_type="constant",
        bf16=False, fp16=False, gradient_checkpointing=False, disable_dropout=True,
        max_steps=S.ITERATIONS * S.EPOCHS * S.MINIBATCHES, log_completions=False, report_to="none", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, logging_steps=1_000_000, seed=seed, use_cpu=True, dataloader_num_workers=0,
    )
    per_iteration = S.EPOCHS * S.MINIBATCHES  # optimizer steps per generation

    class Saver(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % (S.SAVE_EVERY * per_iteration) == 0:
                model.save_pretrained(out / STEP_DIR.format(state.global_step // per_iteration))

    policy = AutoModelForCausalLM.from_pretrained(world["sft"], dtype=torch.float32)
    trainer = GRPOTrainer(model=policy, reward_funcs=proxy_reward, args=args, processing_class=tok,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[Saver()])
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - t0}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("impl", choices=["policyshift", "trl_ppo", "trl_grpo"])
    ap.add_argument("world")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--variant", default="default", choices=sorted(VARIANTS))
    ns = ap.parse_args(argv)
    world = json.loads((Path(ns.world) / "world.json").read_text())
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    if ns.impl == "policyshift":
        info = run_policyshift(world, out, ns.seed, ns.variant)
    elif ns.impl == "trl_ppo":
        info = run_trl_ppo(world, out, ns.seed)
    else:
        info = run_trl_grpo(world, out, ns.seed)
    (out / DONE_FILE).write_text(json.dumps({**info, "impl": ns.impl, "variant": ns.variant, "seed": ns.seed}))


if __name__ == "__main__":
    main()
