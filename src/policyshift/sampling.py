"""DAPO dynamic sampling (Yu et al. 2025, `algorithm.dynamic_sampling`): a group whose advantages are all 0 carries
no learning signal and only dilutes the batch. Drop such groups and sample further prompts until the batch holds
its number of groups again — whole groups only, at most `max_sampling_rounds` generation rounds per step; if the
rounds run out, flat groups fill the remainder (the batch keeps its shape, so every process runs the same number
of micro-batches).

"Flat" is decided on what the estimator learns from (advantages.group_has_signal), not on the scores alone: with KL
in the reward a group with equal scores still has −β·kl advantages and is kept. verl's DAPO recipe
(recipe/dapo/dapo_ray_trainer.py, `algorithm.filter_groups.metric`) filters on the std of a per-sequence metric,
`seq_final_reward` = the token-level rewards summed, which includes the KL penalty when it is in the reward.
The pool also keeps each episode's raw score, so the reward normalizer is updated only from the kept episodes."""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from dataclasses import replace

import torch
import torch.nn.functional as F



def concat_rollouts(parts: list) -> object:
    """One Rollout from several (generation rounds): left-padded prompt columns pad on the left, response
    columns on the right; the masks say what is real, so the padding values never matter."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for f in dataclass_fields(parts[0]):
        values = [getattr(p, f.name) for p in parts]
        if values[0] is None:
            out[f.name] = None
        elif isinstance(values[0], list):
            out[f.name] = [x for v in values for x in v]
        elif values[0].dim() == 1:
            out[f.name] = torch.cat(values)
        else:
            width = max(v.shape[1] for v in values)
            left = f.name.startswith("query")
            out[f.name] = torch.cat([F.pad(v, (width - v.shape[1], 0) if left else (0, width - v.shape[1])) for v in values])
    return replace(parts[0], **out)


def _select_fields(fields: dict[str, list], index: list[int]) -> dict[str, list]:
    return {k: [v[i] for i in index] for k, v in fields.items()}


class GroupPool:
    """Scored groups gathered over generation rounds until `need` groups with reward spread are in."""

    def __init__(self, need: int):
        self.need = need
        self.informative: list[tuple] = []  # (rollout, fields, raw scores) of groups with a signal, in arrival order
        self.flat: list[tuple] = []
        self.n_informative = self.n_flat = 0

    @property
    def full(self) -> bool:
        return self.n_informative >= self.need

    def add(self, rollout, fields: dict[str, list], has_signal: torch.Tensor, raw: torch.Tensor) -> None:
        """`has_signal` (G,) bool per group in torch.unique order (advantages.group_has_signal); `raw` (B,) the
        episodes' scores before normalization."""
        ids = rollout.group_ids
        unique = torch.unique(ids)
        flat = ~has_signal.to(unique.device)
        for flags, bucket in ((~flat, self.informative), (flat, self.flat)):
            chosen = unique[flags]
            if not len(chosen):
                continue
            index = torch.isin(ids, chosen).nonzero().flatten().cpu()
            bucket.append((rollout.select(index), _select_fields(fields, index.tolist()), raw[index.to(raw.device)]))
        self.n_informative += int((~flat).sum())
        self.n_flat += int(flat.sum())

    def batch(self) -> tuple[object, dict[str, list], torch.Tensor, int]:
        """The first `need` informative groups, topped up with flat ones if the rounds ran out; their raw scores;
        and how many flat groups it holds."""
        picked, groups, flat_kept = [], 0, 0
        for bucket, is_flat in ((self.informative, False), (self.flat, True)):
            for rollout, fields, raw in bucket:
                if groups >= self.need:
                    break
                ids = torch.unique(rollout.group_ids)[: self.need - groups]
                index = torch.isin(rollout.group_ids, ids).nonzero().flatten().cpu()
                picked.append((rollout.select(index), _select_fields(fields, index.tolist()), raw[index.to(raw.device)]))
                groups += len(ids)
                flat_kept += len(ids) if is_flat else 0
        rollout = concat_rollouts([r for r, _, _ in picked])
        merged = {k: [x for _, f, _ in picked for x in f[k]] for k in picked[0][1]}
        return rollout, merged, torch.cat([raw for _, _, raw in picked]), flat_kept
