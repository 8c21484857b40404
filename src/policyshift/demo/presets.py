"""Demo sizes. QUICK: SFT + preference pairs + reward model in well under a minute on 2 CPU cores.
FULL: the same stages in about 3 minutes, with a better SFT policy and a more accurate (and more cue-biased)
reward model. Measured numbers are in the comments; timings on a shared 2-core machine are noisy.

Keys: "sft" -> SFTConfig fields (besides data/output_dir), "rm" -> RewardModelConfig fields (besides
pairs/base_model/output_dir), and the demo-data/pair-generation knobs of write_demo_data and
make_preference_pairs.
"""

QUICK = {
    "n_texts": 4000,  # SFT corpus (corpus.write_demo_data)
    "n_prompts": 512,  # prompts for pairs and PPO
    "sft": dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=1024, seq_len=64,
                steps=400, batch_size=32, lr=5e-3, eval_fraction=0.05, seed=0),
    "n_pairs": 2000,  # make_preference_pairs
    "max_new_tokens": 48,
    "rm": dict(steps=200, batch_size=32, lr=1e-3, eval_fraction=0.1, max_length=128, seed=0),
}

FULL = {
    "n_texts": 8000,
    "n_prompts": 1024,
    "sft": dict(n_layer=2, n_embd=128, n_head=4, n_positions=128, vocab_size=1024, seq_len=64,
                steps=1000, batch_size=32, lr=3e-3, eval_fraction=0.05, seed=0),
    "n_pairs": 4000,
    "max_new_tokens": 48,
    "rm": dict(steps=400, batch_size=32, lr=5e-4, eval_fraction=0.1, max_length=128, seed=0),
}
