"""Chunked logprobs/entropy/exact KL (policyshift.logprobs) equal the straightforward full-vocabulary
computation, values and gradients, at every chunk size; no more than one chunk's logits exist, in the
forward and in the backward; the head reproduces the model's own logits (softcapping and scales too)."""

import pytest
import torch

from kl_reference import entropy_from_logits, exact_kl_from_logits, logprobs_from_logits
from policyshift.logprobs import (LOGITS_PER_CHUNK, chunk_tokens, output_head, reference_logprobs, response_hidden, scatter_rows,
                                  token_logprobs)
from policyshift.models import ModelError

N, H, V, T = 23, 8, 50, 0.7


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    tokens = torch.randint(0, V, (N,), generator=g)
    return head, hidden, tokens


@pytest.mark.parametrize("chunk", [1, 4, 7, N, 100])
def test_chunked_logprobs_and_entropy_equal_full_values_and_gradients(chunk):
    head, hidden, tokens = setup()
    w = torch.randn(N, generator=torch.Generator().manual_seed(1))
    lp, ent = token_logprobs(head, hidden, tokens, T, chunk, entropy=True, entropy_grad=True)
    (lp * w + 0.3 * ent).sum().backward()
    got = (lp.detach(), ent.detach(), hidden.grad.clone(), head.weight.grad.clone())

    hidden.grad, head.weight.grad = None, None
    logits = head(hidden)
    lp_ref, ent_ref = logprobs_from_logits(logits, tokens, T), entropy_from_logits(logits, T)
    (lp_ref * w + 0.3 * ent_ref).sum().backward()
    for a, b in zip(got, (lp_ref.detach(), ent_ref.detach(), hidden.grad, head.weight.grad)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_entropy_without_gradient_is_only_a_value():
    head, hidden, tokens = setup()
    lp, ent = token_logprobs(head, hidden, tokens, T, 5, entropy=True, entropy_grad=False)
    assert lp.requires_grad and not ent.requires_grad
    assert torch.allclose(ent, entropy_from_logits(head(hidden), T).detach(), atol=1e-5)
    assert token_logprobs(head, hidden, tokens, T, 5)[1] is None


def test_no_more_than_one_chunk_of_logits_in_forward_and_backward():
    """The head sees at most `chunk` rows, also when the backward recomputes; the tensors autograd keeps
    outside the checkpointed chunks are vocabulary-free, while the plain computation keeps (N, V)."""
    head, hidden, tokens = setup()
    rows = []
    recording = lambda h: (rows.append(h.shape[0]), head(h))[1]  # noqa: E731
    biggest = [0]

    def pack(t):
        biggest[0] = max(biggest[0], t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, ent = token_logprobs(recording, hidden, tokens, T, 4, entropy=True, entropy_grad=True)
    n_forward = len(rows)
    (lp.sum() + ent.sum()).backward()
    assert n_forward == 6 and len(rows) == 12  # ceil(23/4) chunks, each recomputed once in the backward
    assert max(rows) <= 4
    assert biggest[0] < N * V / 4  # the largest kept tensor is a (chunk, H) input or the (V, H) weight at most
    biggest[0] = 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprobs_from_logits(head(hidden), tokens, T)
    assert biggest[0] >= N * V  # the straightforward path keeps the full logits
    rows.clear()
    lp, _ = token_logprobs(recording, hidden, tokens, T, N)
    lp.sum().backward()
    assert rows == [N]  # one chunk holds everything: no checkpoint, no recomputation in the backward


@pytest.mark.parametrize("chunk", [1, 6, 100])
def test_reference_logprobs_and_exact_kl_equal_full(chunk):
    head, hidden, tokens = setup()
    ref_head = torch.nn.Linear(H, V)
    ref_hidden = hidden.detach() + 0.3 * torch.randn(N, H, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_lp, kl = reference_logprobs(ref_head, ref_hidden, tokens, T, chunk, head=head, hidden=hidden)
        alone, none = reference_logprobs(ref_head, ref_hidden, tokens, T, chunk)
        assert torch.allclose(ref_lp, logprobs_from_logits(ref_head(ref_hidden), tokens, T), atol=1e-5)
        assert torch.allclose(kl, exact_kl_from_logits(head(hidden), ref_head(ref_hidden), T), atol=1e-5)
    assert torch.equal(alone, ref_lp) and none is None
    assert (kl > 0).all()


def test_empty_input_and_scatter_rows():
    head, hidden, tokens = setup()
    lp, ent = token_logprobs(head, hidden[:0], tokens[:0], T, 4, entropy=True)
    assert lp.shape == (0,) and ent.shape == (0,)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = scatter_rows(torch.tensor([1.0, 2.0, 3.0]), mask)
    assert out.tolist() == [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    assert scatter_rows(None, mask) is None


def test_chunk_tokens_default_follows_the_vocabulary():
    assert chunk_tokens(7, 151936) == 7
    assert chunk_tokens(None, 151936) == LOGITS_PER_CHUNK // 151936 == 110
    assert chunk_tokens(None, 4096) == 4096


def tiny_causal_lm(kind: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    small = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=8, max_position_embeddings=64)
    extra = {"gemma2": dict(final_logit_softcapping=0.5), "cohere": dict(logit_scale=0.25), "granite": dict(logits_scaling=3.0)}.get(kind, {})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **small, **extra)).eval()


@pytest.mark.parametrize("kind", ["qwen2", "gemma2", "cohere", "granite"])
def test_output_head_reproduces_the_models_own_logits(kind):
    model = tiny_causal_lm(kind)
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = response_hidden(model, ids, mask, 4)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -5:-1].float()
        assert torch.allclose(output_head(model)(hidden), logits, atol=1e-5)


def test_unknown_logit_post_processing_is_a_model_error():
    model = tiny_causal_lm("qwen2")
    plain_forward = type(model).forward

    class Doubled(type(model)):
        def forward(self, *args, **kwargs):
            out = plain_forward(self, *args, **kwargs)
            out.logits = out.logits * 2
            return out

    model.__class__ = Doubled
    ids = torch.randint(0, 40, (1, 6), generator=torch.Generator().manual_seed(4))
    with pytest.raises(ModelError, match="cannot chunk"):
        response_hidden(model, ids, torch.ones_like(ids), 3)


def test_padding_chunks_keep_every_process_in_step(monkeypatch):
    """Another process holding more tokens makes this one run empty chunks too (ZeRO-3: each LM-head call
    is a collective); the results are unchanged and the empty chunks run in the backward as well."""
    import policyshift.logprobs as lp_module

    head, hidden, tokens = setup()
    rows = []
    recording = lambda h: (rows.append(h.shape[0]), head(h))[1]  # noqa: E731
    monkeypatch.setattr(lp_module, "agreed_chunk_count", lambda n, chunk, device: 9)  # 9 × 4 rows ≥ N = 23
    lp, ent = token_logprobs(recording, hidden, tokens, T, 4, entropy=True, entropy_grad=True)
    (lp.sum() + ent.sum()).backward()
    assert rows == [4] * 5 + [3] + [0] * 3 + sorted([4] * 5 + [3] + [0] * 3)  # forward, then the backward (latest chunk first)
    grad = hidden.grad.clone()
    hidden.grad = None
    logits = head(hidden)
    (logprobs_from_logits(logits, tokens, T).sum() + entropy_from_logits(logits, T).sum()).backward()
    assert torch.allclose(lp, logprobs_from_logits(logits, tokens, T), atol=1e-5) and torch.allclose(grad, hidden.grad, atol=1e-5)
