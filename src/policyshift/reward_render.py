"""What a reward model reads: the rendering of (prompt, response) it was trained on, and the index its score
is read at.

A reward model is a function of one token sequence, and it is only right on the sequences it was trained on:
  tokens  the policy's own ids, prompt then response as generated (no decode/re-encode round trip), with the
          end-of-turn token kept when the response ended with it. Needs the policy's vocabulary. What
          policyshift's `reward-model` stage trains on, and the default (reward.template auto) whenever the
          reward model shares the policy's vocabulary.
  chat    [prompt messages…, {"role": "assistant", "content": response}] in the reward tokenizer's chat template
          (a chat row's own messages; a plain prompt becomes one user message). A response cut at
          max_new_tokens is rendered as an unfinished assistant turn (continue_final_message), not closed by the
          template as if it had ended. The default for a reward model with another vocabulary and a template.
  text    prompt + response as one string in the reward tokenizer (the response decoded without special tokens);
          the default for another vocabulary without a template.

The end-of-sequence convention (reward.keep_eos) matters as much: a model trained on sequences that end in EOS
scores a finished answer with the EOS it saw in training; drop it and every score is read one token early, at a
position it never learned to score. null keeps each rendering's own convention (tokens: kept, text: dropped,
chat: as the template writes the end of the turn).

The score is read at an explicit index, the last token of each sequence. transformers' sequence classifiers
read "the last token that is not pad_token_id", and where pad_token is the EOS token (GPT-2, Llama without a pad
token) that silently reads the token *before* a kept EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from policyshift.data import join_prompt_response
from policyshift.models import ModelError, position_ids_from_mask, same_vocabulary

TEMPLATES = ("auto", "tokens", "chat", "text")


@dataclass(frozen=True)
class Episodes:
    """What there is to render of B episodes. The id tensors are the rollout's (left-padded prompts,
    right-padded responses ending at their first end-of-turn token); None when only texts are known."""

    prompts: list[str]
    responses: list[str]
    query_ids: torch.Tensor | None = None
    query_mask: torch.Tensor | None = None
    response_ids: torch.Tensor | None = None
    response_mask: torch.Tensor | None = None
    has_eos: torch.Tensor | None = None  # (B,) bool: the response ended with an end-of-turn token
    messages: list | None = None  # per row: a chat row's messages, or None for a plain prompt

    def ended(self, i: int) -> bool:
        return bool(self.has_eos[i]) if self.has_eos is not None else True  # texts alone: taken as finished answers


def resolve_template(template: str, rm_tokenizer, policy_tokenizer) -> str:
    """`template` with "auto" decided: tokens when the reward model shares the policy's vocabulary, else chat when
    its tokenizer has a chat template, else text. A rendering the tokenizers cannot give is one ModelError line."""
    shared = policy_tokenizer is not None and same_vocabulary(rm_tokenizer, policy_tokenizer)
    if template == "auto":
        return "tokens" if shared else "chat" if getattr(rm_tokenizer, "chat_template", None) else "text"
    if template == "tokens" and not shared:
        raise ModelError("reward.template tokens: the reward model's vocabulary differs from the policy's; use chat or text (or auto)")
    if template == "chat" and not getattr(rm_tokenizer, "chat_template", None):
        raise ModelError(f"reward.template chat: the reward tokenizer {rm_tokenizer.name_or_path or ''} has no chat template; use text (or auto)")
    if template not in TEMPLATES:
        raise ModelError(f"reward.template must be one of {', '.join(TEMPLATES)}; got {template!r}")
    return template


def _with_eos(ids: list[int], ends_with_end: bool, ended: bool, keep: bool | None, eos: int | None) -> list[int]:
    """`ids` with the end token as `keep` says: True appends `eos` to an ended response whose rendering has no end
    token; False drops the end token it has; None leaves the rendering's own ending."""
    if keep is True and ended and not ends_with_end and eos is not None:
        return ids + [eos]
    if keep is False and ends_with_end:
        return ids[:-1]
    return ids


def render(ep: Episodes, template: str, rm_tokenizer, keep_eos: bool | None) -> list[list[int]]:
    """One token-id list per episode, in the reward tokenizer's ids, for a resolved `template`."""
    eos = rm_tokenizer.eos_token_id
    if template == "tokens":
        keep = True if keep_eos is None else keep_eos  # as generated: the end-of-turn token is part of the response
        if ep.query_ids is None:  # texts only (a direct call): the shared tokenizer encodes them as sampling did
            prompts = rm_tokenizer(list(ep.prompts), add_special_tokens=True)["input_ids"]
            responses = rm_tokenizer(list(ep.responses), add_special_tokens=False)["input_ids"]
            return [_with_eos(p + r, False, ep.ended(i), keep, eos) for i, (p, r) in enumerate(zip(prompts, responses))]
        rows = zip(ep.query_ids.cpu(), ep.query_mask.cpu(), ep.response_ids.cpu(), ep.response_mask.cpu())
        # a response that ended (has_eos) has its end-of-turn token as its last real token
        return [_with_eos(q[m.bool()].tolist() + r[rm.bool()].tolist(), ep.ended(i), ep.ended(i), keep, eos)
                for i, (q, m, r, rm) in enumerate(rows)]
    if template == "text":
        texts = [p + join_prompt_response(p, r) for p, r in zip(ep.prompts, ep.responses)]
        keep = False if keep_eos is None else keep_eos
        return [_with_eos(s, bool(s) and s[-1] == eos, ep.ended(i), keep, eos)
                for i, s in enumerate(rm_tokenizer(texts, add_special_tokens=True)["input_ids"])]
    out = []
    for i, (p, r) in enumerate(zip(ep.prompts, ep.responses)):
        messages = (ep.messages[i] if ep.messages is not None else None) or [{"role": "user", "content": p}]
        conversation = list(messages) + [{"role": "assistant", "content": r}]
        ended = ep.ended(i)
        text = rm_tokenizer.apply_chat_template(conversation, tokenize=False, continue_final_message=not ended)
        ids = rm_tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes its own BOS
        out.append(_with_eos(ids, bool(ids) and ids[-1] == eos, ended, keep_eos, eos))
    return out


def score_head(model) -> nn.Module | None:
    """The scalar head of a decoder-style sequence classifier (`score`: GPT-2, Llama, Qwen2, Mistral, Gemma,
    Phi-3…), read at our own index; None for encoder classifiers (BERT/DeBERTa: a pooler over the first
    token, with padding masked by attention), whose own logits are used."""
    head = getattr(model, "score", None)
    return head if isinstance(head, nn.Module) and hasattr(model, model.base_model_prefix) else None


def score_sequences(model, sequences: list[list[int]], pad_token_id: int, batch_size: int, max_length: int) -> torch.Tensor:
    """The reward of each token sequence (on the model's device; differentiable: the reward-model stage trains
    through it), read at its last token. Sequences longer than max_length keep their
    end (the response is what is judged); right padding keeps real tokens at positions 0…L−1."""
    device = next(model.parameters()).device
    head = score_head(model)
    scores = []
    for start in range(0, len(sequences), batch_size):
        chunk = [s[-max_length:] for s in sequences[start : start + batch_size]]
        lengths = torch.tensor([len(s) for s in chunk])
        if int(lengths.min()) == 0:
            raise ModelError("the reward model was given an empty sequence (an empty prompt and response)")
        ids = torch.full((len(chunk), int(lengths.max())), pad_token_id, dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
        ids, mask = ids.to(device), mask.to(device)
        if head is None:
            scores.append(model(input_ids=ids, attention_mask=mask).logits[:, 0].float())
            continue
        hidden = getattr(model, model.base_model_prefix)(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                                                         use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(chunk), device=device), (lengths - 1).to(device)]  # the explicit index
        scores.append(head(last)[:, 0].float())
    return torch.cat(scores) if scores else torch.zeros(0, device=device)


def pair_sequences(pairs: list[dict], template: str, tokenizer, keep_eos: bool | None) -> tuple[list[list[int]], list[list[int]]]:
    """(chosen, rejected) sequences of preference pairs in the rendering the reward model will be scored with.
    A pair may carry the ids it was sampled as (`prompt_ids`, `chosen_ids`, `rejected_ids`: a response's ids end
    with EOS when it ended, as make_preference_pairs writes them); text-only pairs are taken as finished
    answers. The tokens rendering uses the ids, the others the texts."""
    out = []
    for side in ("chosen", "rejected"):
        if template == "tokens" and all(f"{side}_ids" in p and "prompt_ids" in p for p in pairs):
            ids = [list(p[f"{side}_ids"]) for p in pairs]
            ended = torch.tensor([bool(r) and r[-1] == tokenizer.eos_token_id for r in ids])
            keep = True if keep_eos is None else keep_eos
            out.append([_with_eos(list(p["prompt_ids"]) + r, bool(e), bool(e), keep, tokenizer.eos_token_id) for p, r, e in zip(pairs, ids, ended)])
        else:
            episodes = Episodes([p["prompt"] for p in pairs], [p[side] for p in pairs], messages=[p.get("messages") for p in pairs])
            out.append(render(episodes, template, tokenizer, keep_eos))
    return out[0], out[1]
