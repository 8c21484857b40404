"""The frontier benchmark's setting, defined once (imported by every worker, including the TRL 1.12 one, which
has no policyshift installed: nothing here imports anything).

KL_COLUMNS were fixed before any run (issue #29): sequence KL in nats on held-out prompts."""

KL_COLUMNS = (1.0, 2.0, 4.0, 8.0)

# world (policyshift demo, QUICK preset: 2-layer × 64-wide GPT-2, vocabulary 1024, Bradley–Terry proxy RM)
WORLD_SEED = 0
N_HELDOUT = 64  # the last prompts of the demo's prompt file: never trained on

# training, identical for the three implementations
BATCH = 32  # episodes per iteration (GRPO: 8 prompts × 4 generations)
NUM_GENERATIONS = 4  # GRPO group size
RESPONSE_LEN = 32  # max new tokens (stop at EOS)
LR = 1e-4  # the 1e-5 needs ~150 iterations; 1e-4 reaches 8 nats in ~25 (pilot, seed 9) within the CPU budget
BETA = 0.05  # k1 in the per-token reward (PPO); TRL GRPO: its own KL loss (k3 × ratio), β the same
EPOCHS, MINIBATCHES = 4, 2  # 8 optimizer steps per iteration (TRL GRPO: num_iterations 4 × 2 steps per generation)
MISSING_EOS_PENALTY = 1.0  # the demo's: subtracted from the proxy score of a response without EOS
ITERATIONS = 40
SAVE_EVERY = 4
SEEDS = (1, 2, 3)

# evaluation
EVAL_SAMPLES_PER_PROMPT = 4  # per checkpoint: 64 prompts × 4 samples
EVAL_SEED = 12345
BON_POOL = 256  # reference samples per held-out prompt for the best-of-n baseline
BON_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
