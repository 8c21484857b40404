"""KL divergence between the policy π and the frozen reference π_ref, and the β that weighs it.

Per-token estimators of KL(π‖π_ref) from a token x ~ π (Schulman, "Approximating KL divergence", 2020).
With log r = log π_ref(x) − log π(x):
    k1 = −log r                unbiased, high variance, negative on some tokens
    k2 = ½ (log r)²            biased (exact only to second order in log r), ≥ 0, low variance
    k3 = (r − 1) − log r       unbiased (E_π[r] = 1), ≥ 0, low variance
The exact full-vocabulary KL and entropy are here too, for logging against the estimators.

Shapes: B = batch, T = response length, V = vocabulary.
"""

import torch


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log π(x) − log π_ref(x). (B, T), (B, T) → (B, T)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log r)². (B, T), (B, T) → (B, T)."""
    log_r = ref_logprobs - logprobs
    return 0.5 * log_r**2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, clamp: float = 20.0) -> torch.Tensor:
    """k3 = (r − 1) − log r, with log r clamped to [−clamp, clamp]. (B, T), (B, T) → (B, T).

    The clamp only matters for pathological ratios (|log r| > clamp; at 20, r > 4.9e8 or r < 2.1e-9):
    there exp(log r) explodes (inf in fp32 past log r ≈ 88) and a single token's inf/nan poisons
    the batch mean and the gradients (OpenRLHF #525, verl #751). Beyond the clamp the value is that
    at the boundary (so k3 ≥ 0 still holds) and the gradient is 0; on the r → 0 side this
    underestimates k3 ≈ −log r, which never overflows. For every ordinary token it is the exact k3.
    """
    log_r = (ref_logprobs - logprobs).clamp(-clamp, clamp)
    return (torch.exp(log_r) - 1) - log_r  # x − 1 − log x ≥ 0 for x > 0: never negative


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(name: str, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate by estimator name ("k1", "k2" or "k3"). (B, T), (B, T) → (B, T)."""
    if name not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {name!r}; valid: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[name](logprobs, ref_logprobs)


def _plogp_minus(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # p·(a − b) with the convention 0·(anything) = 0: a vocabulary entry masked with a −inf logit
    # has p = 0 and log p = −inf, and a plain product would give 0·(−inf) = nan. The where goes
    # inside the product so the backward pass never multiplies by that −inf either.
    return p * torch.where(p > 0, a - b, 0.0)


# Token log-probabilities, exact KL and entropy from log-probabilities already normalized, so one log_softmax over
# the vocabulary serves them all (the rollout and the update are full-vocabulary-bound on small models). The
# from-logits compositions the tests compare against live in tests/kl_reference.py.
def log_softmax_t(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)


def gather_tokens(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def exact_kl_from_logprobs(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    return _plogp_minus(logp.exp(), logp, logq).sum(-1)


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, 0.0)).sum(-1)  # _plogp_minus(p, logp, 0) without a (..., V) zero tensor


def adaptive_beta(beta: float, kl: float, target: float, horizon: float, n_steps: int) -> float:
    """Ziegler et al. (2019) proportional controller for the KL coefficient β.

    e = clip(KL/target − 1, −0.2, 0.2);  β ← β (1 + e · n_steps / horizon).
    The clip bounds the step so one noisy KL measurement cannot swing β.
    """
    e = min(max(float(kl) / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + e * n_steps / horizon)


class FixedKLController:
    """Constant β."""

    def __init__(self, beta: float):
        self.beta = float(beta)

    def update(self, kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, d: dict) -> None:
        self.beta = float(d["beta"])


class AdaptiveKLController:
    """β that tracks a target KL (see adaptive_beta). n_steps is the number of samples since the
    last update, horizon the number of samples over which a full-size correction accrues."""

    def __init__(self, beta: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.beta, self.target, self.horizon = float(beta), float(target), float(horizon)

    def update(self, kl: float, n_steps: int) -> None:
        self.beta = adaptive_beta(self.beta, kl, self.target, self.horizon, n_steps)

    def state_dict(self) -> dict:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, d: dict) -> None:
        self.beta, self.target, self.horizon = float(d["beta"]), float(d["target"]), float(d["horizon"])


def make_kl_controller(kind: str, beta: float, target: float | None = None, horizon: float | None = None):
    """"fixed" → FixedKLController(beta) (target/horizon ignored); "adaptive" → AdaptiveKLController."""
    if kind == "fixed":
        return FixedKLController(beta)
    if kind == "adaptive":
        if target is None or horizon is None:
            raise ValueError("adaptive KL controller needs target and horizon")
        return AdaptiveKLController(beta, target, horizon)
    raise ValueError(f"unknown KL controller {kind!r}; valid: ['adaptive', 'fixed']")
