"""The benchmark's world, built once: policyshift demo's data, SFT policy, Bradley–Terry proxy reward model (trained
on pairs labelled by a labeler who over-rewards "really"/"truly") and the hidden gold scorer
(policyshift.demo.gold.true_preference), which no trainer ever sees. The demo's prompts are split: the last
N_HELDOUT are held out for evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import settings as S

WORLD_FILE = "world.json"  # the paths below, written last: its presence means the world is complete


def build_world(root: Path) -> dict:
    root = Path(root)
    if (root / WORLD_FILE).exists():
        return json.loads((root / WORLD_FILE).read_text())
    from policyshift.data import load_prompts
    from policyshift.demo.corpus import write_demo_data
    from policyshift.demo.gold import labeler_preference
    from policyshift.demo.presets import QUICK
    from policyshift.stages.reward_model import RewardModelConfig, make_preference_pairs, run_reward_model, save_pairs
    from policyshift.stages.sft import SFTConfig, run_sft

    root.mkdir(parents=True, exist_ok=True)
    data = write_demo_data(root / "data", seed=S.WORLD_SEED, n_texts=QUICK["n_texts"], n_prompts=QUICK["n_prompts"])
    sft = run_sft(SFTConfig(data=data["texts"], output_dir=str(root / "sft"), seed=S.WORLD_SEED, **QUICK["sft"]))
    prompts = load_prompts(data["prompts"])
    train, heldout = prompts[:-S.N_HELDOUT], prompts[-S.N_HELDOUT:]
    # the RM's preference pairs come from the training prompts only
    pairs = make_preference_pairs(str(root / "sft"), train, labeler_preference, n_pairs=QUICK["n_pairs"], seed=S.WORLD_SEED,
                                  max_new_tokens=QUICK["max_new_tokens"])
    rm = run_reward_model(RewardModelConfig(pairs=save_pairs(pairs, str(root / "data" / "pairs.jsonl")), base_model=str(root / "sft"),
                                            output_dir=str(root / "reward_model"), seed=S.WORLD_SEED, **QUICK["rm"]))
    for name, rows in (("train_prompts", train), ("heldout_prompts", heldout)):
        with open(root / "data" / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps({"prompt": p}) + "\n" for p in rows)
    world = {"sft": str(root / "sft"), "reward_model": str(root / "reward_model"),
             "train_prompts": str(root / "data" / "train_prompts.jsonl"), "heldout_prompts": str(root / "data" / "heldout_prompts.jsonl"),
             "sft_eval_loss": sft.get("eval_loss"), "rm_eval_accuracy": rm.get("eval_accuracy")}
    (root / WORLD_FILE).write_text(json.dumps(world, indent=1, default=str))
    return world


def read_prompts(path: str) -> list[str]:
    return [json.loads(line)["prompt"] for line in Path(path).read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    import sys

    print(json.dumps(build_world(Path(sys.argv[1])), indent=1, default=str))
