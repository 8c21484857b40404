"""Demo sizes. QUICK: SFT + preference pairs + reward model in ~40 s on 2 CPU cores.
FULL: the same stages in ~3 minutes, with a better SFT policy and a more accurate reward model.

Measured once (seed 0, torch on 1 thread, on a shared 2-core machine under load, so wall times are upper bounds;
with the default 2 threads on a *busy* machine, wall time was 5-10x worse from threads spinning on each other):
  QUICK: CPU s sft 15.5 / pairs 8.8 / rm 11.8 (wall 53 s at load ~6). SFT held-out loss 1.12 (ppl 3.1), 94% of
         samples on topic, mean gold −0.09; RM held-out accuracy 0.905 (init 0.51), corr(RM, gold) 0.85 on SFT
         samples; inserting "really" before each adjective of a cue-free response raises the RM score for 98% of
         responses (mean −0.45 → +1.53, RM std 2.8) while gold goes −0.06 → −0.18.
  FULL:  CPU s sft 81.6 / pairs 24.5 / rm 57.0 (wall 189 s at load ~4). SFT held-out loss 0.94 (ppl 2.56), 98%
         on topic; RM held-out accuracy 0.91-0.94, corr(RM, gold) 0.91; "really" insertion: RM −1.58 → +2.15
         (higher for 100%, RM std 4.9), gold −0.07 → −0.23.

Keys: "sft" -> SFTConfig fields (besides data/output_dir), "rm" -> RewardModelConfig fields (besides
pairs/base_model/output_dir), and the demo-data/pair-generation knobs of write_demo_data and
make_preference_pairs.
"""

QUICK = {
    "n_texts": 4000,  # SFT corpus (corpus.write_demo_data)
    "n_prompts": 512,  # prompts for pairs and PPO
    "sft": dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=1024, seq_len=64,
                steps=400, batch_size=32, lr=5e-3, eval_fraction=0.05),
    "n_pairs": 2000,  # make_preference_pairs
    "max_new_tokens": 48,
    "rm": dict(steps=200, batch_size=32, lr=1e-3, eval_fraction=0.1, max_length=128),
}

FULL = {
    "n_texts": 8000,
    "n_prompts": 1024,
    "sft": dict(n_layer=2, n_embd=128, n_head=4, n_positions=128, vocab_size=1024, seq_len=64,
                steps=1000, batch_size=32, lr=3e-3, eval_fraction=0.05),
    "n_pairs": 4000,
    "max_new_tokens": 48,
    "rm": dict(steps=400, batch_size=32, lr=5e-4, eval_fraction=0.1, max_length=128),
}
