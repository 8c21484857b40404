"""Metric keys: each is defined here once and imported where it is written (metrics, trainer) and where
it is read (detectors, report, demo), so a rename cannot leave a reader looking at a key nobody writes.

Each key's comment is its documentation (the generated reference, docs/reference/metrics.md, reads it):
`[unit] meaning. Healthy: what a healthy run shows`. KL keys say which estimator they report. Token means
are over real response tokens only; with several processes every metric is of the whole batch (all
processes' episodes) and `time/*` are the main process's."""

# ---- KL to the reference (per token unless the key says seq; seq = sum over a response's tokens)
KL_BETA = "kl/beta"  # [1] β used for this step's penalty. Healthy: fixed, or drifting slowly (adaptive)
# [nats/token] sampled KL(π‖π_ref) with the configured estimator (kl.estimator), the one that is penalized: mean per token.
# Healthy: grows slowly from 0
KL_TOKEN_MEAN = "kl/token_mean"
# [nats/sequence] the same estimator: mean over episodes of the per-sequence sum.
# Healthy: grows slowly from 0; a few nats (≲ 10–20), within analysis.kl_budget
KL_SEQ_MEAN = "kl/seq_mean"
# [nats/token] k1 = log π/π_ref (unbiased, can be negative per token), mean per token.
# Healthy: ≥ 0 on average; a clearly negative mean means a sampling bug
KL_K1_TOKEN_MEAN = "kl/k1_token_mean"
# [nats/token] k3 = (r − 1) − log r with r = π_ref/π (unbiased, ≥ 0), mean per token. Healthy: agrees with k1 on average
KL_K3_TOKEN_MEAN = "kl/k3_token_mean"
# [nats/token] full-vocabulary KL Σ_v π log π/π_ref at each visited state (no sampling noise over the action);
# absent with rollout.exact_kl false. Healthy: close to the sampled estimates
KL_EXACT_TOKEN_MEAN = "kl/exact_token_mean"
# [nats/sequence] the exact KL summed over each response, mean over episodes; absent with rollout.exact_kl false.
# Healthy: close to kl/seq_mean
KL_EXACT_SEQ_MEAN = "kl/exact_seq_mean"
# [nats/sequence] k1 and k3 summed over each response: written only as fixed/ aggregates of the fixed-prompt
# evaluations (a training step logs the token means and the configured estimator's seq_mean)
KL_K1_SEQ_MEAN, KL_K3_SEQ_MEAN = "kl/k1_seq_mean", "kl/k3_seq_mean"
# [nats/token] mean log π_ref per response token (fixed-prompt samples); the report's reference perplexity is
# exp(−this). Healthy: falling slowly with the KL
REF_LOGPROB_MEAN = "response/ref_logprob_mean"

# ---- rewards
SCORE = "reward/score"  # [reward] prefix of _mean/_std/_min/_max: the score after EOS penalty, normalization and clipping
SCORE_MEAN = "reward/score_mean"  # [reward] proxy reward of the training batch, mean. Healthy: rising, then a plateau
SCORE_STD = "reward/score_std"  # [reward] its batch std (σ at the start is the detectors' reward unit). Healthy: not collapsing to 0
SCORE_MIN, SCORE_MAX = "reward/score_min", "reward/score_max"  # [reward] batch minimum and maximum of the score
GOLD = "reward/gold"  # [reward] prefix of the fixed-prompt gold moments (_mean/_std under fixed/)
SHAPED_RETURN_MEAN = "reward/shaped_return_mean"  # [reward] Σ_t r_t per episode: score − β·seq KL (placement reward). Healthy: rising
KL_PENALTY_MEAN = "reward/kl_penalty_mean"  # [reward] β · sequence KL, mean over episodes. Healthy: a small fraction of the score range
# [episodes] episodes dropped for a non-finite reward (reward.on_nonfinite skip; with groups, the whole group). Healthy: 0
NONFINITE_SKIPPED = "reward/nonfinite_skipped"
GOLD_MEAN = "reward/gold_mean"  # [gold reward] gold scorer on the training batch (analysis.gold_reward_*), mean. Healthy: rising with the proxy
GOLD_STD = "reward/gold_std"  # [gold reward] its batch std

# ---- responses
LENGTH_MEAN = "response/length_mean"  # [tokens] tokens per response (incl. EOS), mean. Healthy: stable (within ~1.5× of the start)
EOS_RATE = "response/eos_rate"  # [share] responses that ended with an end-of-turn token. Healthy: near the SFT model's
REP_NGRAM_RATE = "response/rep_ngram_rate"  # [share] repeated word 3-grams within a response, mean. Healthy: near the start's value
DISTINCT_2 = "response/distinct_2"  # [share] distinct bigrams across the batch. Healthy: near the start's value
# [nats/token] categorical entropy of π at the visited states; absent with rollout.exact_kl false.
# Healthy: slow decline; a fall to a few % of the start is collapse
ENTROPY = "policy/entropy"

# ---- groups (num_generations > 1) and advantages
# [reward] mean over groups of the std of their n scores (rollout.num_generations > 1). Healthy: not collapsing to 0
GROUP_REWARD_STD_MEAN = "group/reward_std_mean"
# [share] groups whose n scores are all equal: every advantage 0, no learning signal.
# Healthy: low; rising = the task saturates (all solved or all failed)
GROUP_ZERO_SPREAD_FRAC = "group/zero_spread_frac"
# [advantage] prefix of /mean, /std, /max_abs: the advantages the loss weighs, over real response tokens (after
# whitening or normalization). Healthy: mean ≈ 0; max |A| bounded
# [share] groups whose n scores all equal the run's highest score: all correct, nothing left to learn there.
# Healthy: low; rising = the task is too easy (harder prompts, or a finer reward)
GROUP_FLAT_TOP_FRAC = "group/flat_top_frac"
# [share] groups whose n scores all equal the run's lowest score: all wrong, no signal to climb.
# Healthy: low; high = the task is too hard (easier prompts, partial credit, more samples per prompt)
GROUP_FLAT_BOTTOM_FRAC = "group/flat_bottom_frac"
# [advantage] prefix of /mean, /std, /max_abs: the advantages the loss weighs, over real response tokens (after
# whitening or normalization). Healthy: mean ≈ 0; max |A| bounded
ADVANTAGE = "advantage"

# ---- DAPO dynamic sampling (algorithm.dynamic_sampling)
SAMPLING_ROUNDS = "sampling/rounds"  # [count] generation rounds this step (1 = no refill)
SAMPLING_DROPPED_GROUPS = "sampling/dropped_groups"  # [groups] zero-spread groups dropped
# [groups] zero-spread groups kept to fill the batch after the last round. Healthy: 0
SAMPLING_FLAT_GROUPS_KEPT = "sampling/flat_groups_kept"

# ---- critic
VALUE_MEAN = "value/mean"  # [reward] mean value V over real tokens (only with a critic)
# [1] 1 − Var[R − V]/Var[R] (only with a critic). Healthy: rising towards 0.3–0.9, ≥ 0 after warm-up; strongly negative = critic lost
VALUE_EXPLAINED_VARIANCE = "value/explained_variance"
VALUE_CLIP_FRAC = "value/clip_frac"  # [share] tokens whose value loss was clipped (ppo.clip_range_value)

# ---- the update
LOSS_POLICY = "loss/policy"  # [loss] clipped surrogate policy loss
LOSS_VALUE = "loss/value"  # [loss] value loss (only with a critic). Healthy: falling
# [loss] entropy term; absent when rollout.exact_kl is false and ppo.ent_coef is 0
LOSS_ENTROPY = "loss/entropy"
LOSS_KL = "loss/kl"  # [loss] β·KL loss term (only with kl.placement loss)
LOSS_TOTAL = "loss/total"  # [loss] the minibatch loss that is back-propagated
CLIP_FRAC = "ppo/clip_frac"  # [share] tokens where the clipped surrogate was active. Healthy: 0.05–0.3
CLIP_FRAC_LOW = "ppo/clip_frac_low"  # [share] clipped below 1 − ε_low (A < 0)
CLIP_FRAC_HIGH = "ppo/clip_frac_high"  # [share] clipped above 1 + ε_high (A > 0). Healthy: high ≫ low: raise ε_high
DUAL_CLIP_FRAC = "ppo/dual_clip_frac"  # [share] A < 0 tokens whose loss the dual clip bounded
# [ratio] GSPO: mean, min and max of the sequence ratios s_i. Healthy: s near 1 (±1e-3)
SEQ_RATIO_MEAN, SEQ_RATIO_MIN, SEQ_RATIO_MAX = "gspo/seq_ratio_mean", "gspo/seq_ratio_min", "gspo/seq_ratio_max"
SEQ_CLIP_FRAC = "gspo/seq_clip_frac"  # [share] responses whose sequence ratio was clipped
APPROX_KL = "ppo/approx_kl"  # [nats/token] KL(π_old‖π_new) (k3) over the update. Healthy: ≲ 0.05 (≲ 0.02 typical)
RATIO_MEAN = "ppo/ratio_mean"  # [ratio] π_new/π_old on real tokens, mean. Healthy: ≈ 1
RATIO_VAR = "ppo/ratio_var"  # [ratio²] its variance. Healthy: ≪ 1 (≲ 0.01 typical)
GRAD_NORM = "optim/grad_norm"  # [1] gradient norm before clipping. Healthy: finite
LR = "optim/lr"  # [1] learning rate
SKIPPED_UPDATES = "optim/skipped_updates"  # [minibatches] skipped for a non-finite gradient norm. Healthy: 0

# ---- bookkeeping
EPISODES = "episodes"  # [episodes] episodes sampled so far
# [s] seconds per phase: sampling, scoring (reference, critic, reward), the update, and the whole step
TIME_GENERATE, TIME_SCORE, TIME_UPDATE, TIME_STEP = "time/generate", "time/score", "time/update", "time/step"
TOKENS_PER_S = "perf/tokens_per_s"  # [tokens/s] prompt + response tokens processed per second
# [share] several processes: share of the trained weights this process stores. Healthy: 1 (DDP, ZeRO-2); ≈ 1/W (FSDP2, ZeRO-3)
WEIGHTS_HELD_FRACTION = "parallel/weights_held_fraction"
# [1] several DDP processes: max − min over processes of a float64 checksum of the trained weights. Healthy: exactly 0
REPLICA_CHECKSUM_SPREAD = "parallel/replica_checksum_spread"
# [nats/token] a separate sampling engine (vLLM): |log π_train − log π_engine| on real tokens, mean.
# Healthy: ≈ 1e-3 in bf16; growing = stale engine weights
ENGINE_LOGPROB_DIFF_MEAN = "rollout/logprob_diff_abs_mean"
ENGINE_LOGPROB_DIFF_MAX = "rollout/logprob_diff_max"  # [nats/token] the same, maximum over real tokens
ENGINE_KL_K3 = "rollout/engine_kl_k3"  # [nats/token] k3 estimate of KL(π_engine‖π_train). Healthy: ≈ 0; growing = stale engine weights
# training–inference mismatch correction (algorithm.mismatch_correction; TRL's sampling/importance_sampling_ratio/*)

# [ratio] π_train_old/π_engine after truncation/masking, over real tokens (token modes) or responses (sequence
# modes): minimum, mean, maximum. Healthy: ≈ 1
MISMATCH_IS_MIN = "rollout/is_ratio_min"
MISMATCH_IS_MEAN = "rollout/is_ratio_mean"  # [ratio] the same, mean
MISMATCH_IS_MAX = "rollout/is_ratio_max"  # [ratio] the same, maximum
# [share] real tokens (token modes) or responses (sequence modes) masked by the correction. Healthy: ≈ 0
MISMATCH_MASKED_FRAC = "rollout/is_masked_frac"

# ---- probe suites (analysis.probes): one score per suite per evaluation, on the suite's own prompts
# [scorer] prefix of probe/<name> (the suite's mean score over its prompts; step 0 = the reference) and
# probe/<name>_se (its standard error). Healthy: by the suite's direction, at or better than step 0
PROBE_PREFIX = "probe/"


def probe_key(suite: str) -> str:
    """Mean score of suite `suite` over its prompts at one evaluation (the reference's at step 0)."""
    return f"{PROBE_PREFIX}{suite}"


def probe_se_key(suite: str) -> str:
    """Standard error of that mean (sample std / √n over the prompts): the report's band is ±1.96 of it."""
    return f"{PROBE_PREFIX}{suite}_se"
