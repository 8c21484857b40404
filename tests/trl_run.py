"""A real tiny TRL GRPOTrainer run (CPU, a few steps, checkpoints and completion logging on) whose
output directory the analyze/import tests read. TRL is pinned in the `test` extra (trl==1.12.0)."""

from __future__ import annotations

import json
from pathlib import Path

import tiny


def good(prompts, completions, **_):
    """TRL passes reward functions keyword arguments (completions=..., completion_ids=...)."""
    return tiny.good_fraction(prompts, completions)


def run_grpo(root: Path, steps: int = 4, save_steps: int = 2, beta: float = 0.1) -> dict:
    """SFT stand-in = a tiny GPT-2 at root/sft; GRPO output at root/grpo (checkpoint-N/, completions/,
    runs/*/events.out.tfevents.*); fixed prompts at root/prompts.jsonl."""
    import os

    from accelerate.state import AcceleratorState
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok = tiny.make_tokenizer(root / "sft")
    tiny.make_policy(root / "sft", tok)
    prompts_file = tiny.write_prompts(root / "prompts.jsonl", n=8)
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()]
    environ = dict(os.environ)
    try:
        args = GRPOConfig(output_dir=str(root / "grpo"), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                          max_steps=steps, save_steps=save_steps, logging_steps=1, log_completions=True, report_to=["tensorboard"],
                          beta=beta, use_cpu=True, bf16=False, learning_rate=1e-3, seed=0, save_only_model=True, num_completions_to_print=0)
        GRPOTrainer(model=str(root / "sft"), reward_funcs=good, args=args, train_dataset=Dataset.from_dict({"prompt": prompts}),
                    processing_class=tok).train()
    finally:
        # HF Trainer leaves accelerate's process-wide state and ACCELERATE_* variables set (mixed precision
        # among them): a policyshift trainer later in the same test process would inherit its autocast
        AcceleratorState._reset_state(reset_partial_state=True)
        os.environ.clear()
        os.environ.update(environ)
    return {"sft": root / "sft", "grpo": root / "grpo", "prompts": prompts_file}
