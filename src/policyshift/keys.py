"""Metric keys: each is defined here once and imported where it is written (metrics, trainer) and where
it is read (detectors, report, demo), so a rename cannot leave a reader looking at a key nobody writes.
README "Metrics" documents what each holds; KL keys say which estimator they report."""

# ---- KL to the reference (per token unless the key says seq; seq = sum over a response's tokens)
KL_BETA = "kl/beta"
KL_TOKEN_MEAN = "kl/token_mean"  # the configured estimator (kl.estimator), the one that is penalized
KL_SEQ_MEAN = "kl/seq_mean"
KL_K1_TOKEN_MEAN = "kl/k1_token_mean"
KL_K3_TOKEN_MEAN = "kl/k3_token_mean"
KL_EXACT_TOKEN_MEAN = "kl/exact_token_mean"  # full-vocabulary KL(π‖π_ref) at each sampled state
KL_EXACT_SEQ_MEAN = "kl/exact_seq_mean"
# written only as fixed/ aggregates of the fixed-prompt evaluations (a training step logs the token means and
# the configured estimator's seq_mean)
KL_K1_SEQ_MEAN, KL_K3_SEQ_MEAN = "kl/k1_seq_mean", "kl/k3_seq_mean"
REF_LOGPROB_MEAN = "response/ref_logprob_mean"  # mean log π_ref per response token

# ---- rewards
SCORE = "reward/score"  # prefix of _mean/_std/_min/_max
SCORE_MEAN = "reward/score_mean"
SCORE_STD = "reward/score_std"
SCORE_MIN, SCORE_MAX = "reward/score_min", "reward/score_max"
GOLD = "reward/gold"  # prefix of the fixed-prompt gold moments
SHAPED_RETURN_MEAN = "reward/shaped_return_mean"
KL_PENALTY_MEAN = "reward/kl_penalty_mean"
NONFINITE_SKIPPED = "reward/nonfinite_skipped"
GOLD_MEAN = "reward/gold_mean"
GOLD_STD = "reward/gold_std"

# ---- responses
LENGTH_MEAN = "response/length_mean"
EOS_RATE = "response/eos_rate"
REP_NGRAM_RATE = "response/rep_ngram_rate"
DISTINCT_2 = "response/distinct_2"
ENTROPY = "policy/entropy"

# ---- groups (num_generations > 1) and advantages
GROUP_REWARD_STD_MEAN = "group/reward_std_mean"  # mean over groups of the std of their n scores
GROUP_ZERO_SPREAD_FRAC = "group/zero_spread_frac"  # groups whose n scores are all equal: no learning signal
GROUP_FLAT_TOP_FRAC = "group/flat_top_frac"  # groups whose n scores all equal the run's highest score: all correct
GROUP_FLAT_BOTTOM_FRAC = "group/flat_bottom_frac"  # groups whose n scores all equal the run's lowest score: all wrong
ADVANTAGE = "advantage"  # prefix of /mean, /std, /max_abs (masked, over response tokens)

# ---- DAPO dynamic sampling (algorithm.dynamic_sampling)
SAMPLING_ROUNDS = "sampling/rounds"  # generation rounds this step (1 = no refill)
SAMPLING_DROPPED_GROUPS = "sampling/dropped_groups"  # zero-spread groups dropped
SAMPLING_FLAT_GROUPS_KEPT = "sampling/flat_groups_kept"  # zero-spread groups kept to fill the batch after the last round

# ---- critic
VALUE_MEAN = "value/mean"
VALUE_EXPLAINED_VARIANCE = "value/explained_variance"
VALUE_CLIP_FRAC = "value/clip_frac"

# ---- the update
LOSS_POLICY = "loss/policy"
LOSS_VALUE = "loss/value"
LOSS_ENTROPY = "loss/entropy"
LOSS_KL = "loss/kl"
LOSS_TOTAL = "loss/total"
CLIP_FRAC = "ppo/clip_frac"
CLIP_FRAC_LOW = "ppo/clip_frac_low"  # clipped below 1 − ε_low (A < 0)
CLIP_FRAC_HIGH = "ppo/clip_frac_high"  # clipped above 1 + ε_high (A > 0)
DUAL_CLIP_FRAC = "ppo/dual_clip_frac"  # A < 0 tokens whose loss the dual clip bounded
SEQ_RATIO_MEAN, SEQ_RATIO_MIN, SEQ_RATIO_MAX = "gspo/seq_ratio_mean", "gspo/seq_ratio_min", "gspo/seq_ratio_max"
SEQ_CLIP_FRAC = "gspo/seq_clip_frac"  # share of responses whose sequence ratio was clipped
APPROX_KL = "ppo/approx_kl"
RATIO_MEAN = "ppo/ratio_mean"
RATIO_VAR = "ppo/ratio_var"
GRAD_NORM = "optim/grad_norm"
LR = "optim/lr"
SKIPPED_UPDATES = "optim/skipped_updates"

# ---- bookkeeping
EPISODES = "episodes"
TIME_GENERATE, TIME_SCORE, TIME_UPDATE, TIME_STEP = "time/generate", "time/score", "time/update", "time/step"
TOKENS_PER_S = "perf/tokens_per_s"
WEIGHTS_HELD_FRACTION = "parallel/weights_held_fraction"
REPLICA_CHECKSUM_SPREAD = "parallel/replica_checksum_spread"
ENGINE_LOGPROB_DIFF_MEAN = "rollout/logprob_diff_abs_mean"
ENGINE_LOGPROB_DIFF_MAX = "rollout/logprob_diff_max"
ENGINE_KL_K3 = "rollout/engine_kl_k3"
# training–inference mismatch correction (algorithm.mismatch_correction; TRL's sampling/importance_sampling_ratio/*)
MISMATCH_IS_MIN = "rollout/is_ratio_min"  # π_train_old/π_engine after truncation/masking, over real tokens (sequences)
MISMATCH_IS_MEAN = "rollout/is_ratio_mean"
MISMATCH_IS_MAX = "rollout/is_ratio_max"
MISMATCH_MASKED_FRAC = "rollout/is_masked_frac"  # share of real tokens (token modes) or responses (sequence modes) masked

# ---- probe suites (analysis.probes): one score per suite per evaluation, on the suite's own prompts
PROBE_PREFIX = "probe/"


def probe_key(suite: str) -> str:
    """Mean score of suite `suite` over its prompts at one evaluation (the reference's at step 0)."""
    return f"{PROBE_PREFIX}{suite}"


def probe_se_key(suite: str) -> str:
    """Standard error of that mean (sample std / √n over the prompts): the report's band is ±1.96 of it."""
    return f"{PROBE_PREFIX}{suite}_se"
