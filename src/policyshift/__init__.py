"""policyshift: PPO-RLHF against a reward model with a KL penalty to the reference policy,
and an analysis of how the policy shifts while it trains."""

__version__ = "0.1.0"

from policyshift.config import PPOConfig  # noqa: E402


def __getattr__(name):  # the trainer pulls in transformers: import it only when asked for
    if name == "PPOTrainer":
        from policyshift.trainer import PPOTrainer

        return PPOTrainer
    raise AttributeError(name)


__all__ = ["PPOConfig", "PPOTrainer", "__version__"]
