"""policyshift.metrics: the per-step metrics of a batch."""

import torch

from policyshift.metrics import engine_mismatch_metrics


# engine mismatch: max without a device sync
def test_mismatch_max_is_zero_without_real_tokens_and_for_an_empty_batch():
    train, engine = torch.tensor([[-1.0, float("nan")]]), torch.tensor([[-3.0, 2.0]])
    assert engine_mismatch_metrics(train, engine, torch.zeros(1, 2))["rollout/logprob_diff_max"] == 0.0
    assert engine_mismatch_metrics(train, engine, torch.tensor([[1.0, 0.0]]))["rollout/logprob_diff_max"] == 2.0
    empty = torch.zeros(2, 0)
    assert engine_mismatch_metrics(empty, empty, empty)["rollout/logprob_diff_max"] == 0.0
