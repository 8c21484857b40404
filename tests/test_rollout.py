"""Rollout correctness: logprobs recorded while sampling equal a fresh forward pass at the same
temperature; batched (left/right-padded) quantities equal the unpadded per-example computation."""

import pytest
import torch

from policyshift.config import RolloutConfig
from kl_reference import logprobs_from_logits
from policyshift.models import PolicyAndCritic, freeze, load_causal_lm, load_sequence_classifier, load_tokenizer, response_logits
from policyshift.rollout import generate_rollout, truncate_after_eos


@pytest.fixture(scope="module")
def world(tiny_world):
    tok = load_tokenizer(tiny_world["policy"])
    policy = load_causal_lm(tiny_world["policy"])
    critic = load_sequence_classifier(tiny_world["policy"])
    ref = freeze(load_causal_lm(tiny_world["policy"]))
    with torch.no_grad():  # make the reference differ from the policy so log-ratios are non-zero
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return tok, PolicyAndCritic(policy=policy, critic=critic), ref


PROMPTS = ["the cat", "a dog runs on the mat", "good", "very happy dog sits"]  # different lengths: left padding


def test_truncate_after_eos_hand_case():
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 9, 9, 9]])
    out, mask, has_eos = truncate_after_eos(ids, eos_token_id=1, pad_token_id=0)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert out.tolist() == [[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_sampled_logprobs_equal_fresh_forward(world, temperature):
    tok, models, ref = world
    cfg = RolloutConfig(batch_size=4, max_new_tokens=10, temperature=temperature)
    ro = generate_rollout(models, ref, tok, PROMPTS, cfg, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = response_logits(models.policy, ro.input_ids, ro.attention_mask, ro.response_ids.shape[1])
    fresh = logprobs_from_logits(logits, ro.response_ids, temperature)
    mask = ro.response_mask.bool()
    assert mask.sum() > 8
    assert torch.allclose(ro.logprobs[mask], fresh[mask], atol=1e-4)
    # and they are really temperature-scaled: at T=1 they would differ
    plain = logprobs_from_logits(logits, ro.response_ids, 1.0)
    assert not torch.allclose(ro.logprobs[mask], plain[mask], atol=1e-3)


def test_batched_rollout_equals_unpadded_per_example(world):
    tok, models, ref = world
    cfg = RolloutConfig(batch_size=4, max_new_tokens=8, temperature=1.0)
    ro = generate_rollout(models, ref, tok, PROMPTS, cfg, 16, torch.Generator().manual_seed(1))
    assert ro.query_mask[:, 0].tolist().count(0) >= 1  # some rows really are left-padded
    for i in range(len(PROMPTS)):
        n = int(ro.lengths[i])
        prompt = ro.query_ids[i][ro.query_mask[i].bool()]
        ids = torch.cat([prompt, ro.response_ids[i, :n]])[None]
        ones = torch.ones_like(ids)
        with torch.no_grad():
            lp = logprobs_from_logits(response_logits(models.policy, ids, ones, n), ids[:, -n:])[0]
            ref_lp = logprobs_from_logits(response_logits(ref, ids, ones, n), ids[:, -n:])[0]
            values = models.values(ids, ones, n)[0]
        assert torch.allclose(ro.logprobs[i, :n], lp, atol=1e-4)
        assert torch.allclose(ro.ref_logprobs[i, :n], ref_lp, atol=1e-4)
        assert torch.allclose(ro.values[i, :n], values, atol=1e-4)


def test_responses_stop_at_first_eos_and_text_matches(world):
    tok, models, ref = world
    cfg = RolloutConfig(batch_size=4, max_new_tokens=30, temperature=1.0)
    ro = generate_rollout(models, ref, tok, PROMPTS * 4, cfg, 16, torch.Generator().manual_seed(2))
    eos = tok.eos_token_id
    for i in range(len(ro)):
        n = int(ro.lengths[i])
        real = ro.response_ids[i, :n].tolist()
        assert eos not in real[:-1]  # nothing after the first EOS is kept
        assert (real[-1] == eos) == bool(ro.has_eos[i])
        assert ro.responses[i] == tok.decode(real, skip_special_tokens=True)
    assert ro.response_mask.shape[1] == int(ro.lengths.max())  # no all-padding columns


def test_kv_cache_sampler_equals_naive_full_recompute(world):
    """The optimized sampler (KV cache, LM head on the last position only, one preallocated mask, no
    pass after the last token, per-step statistics instead of stacked logits) draws the same tokens with
    the same logprobs, entropies and hidden states as recomputing the whole sequence at every step."""
    from kl_reference import entropy_from_logits
    from policyshift.rollout import draw, sample

    tok, models, _ = world
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    tokens, steps = sample(models.policy, enc["input_ids"], enc["attention_mask"], 7, 0.9, None, True, torch.Generator().manual_seed(3), exact=True)
    gen = torch.Generator().manual_seed(3)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    naive_tokens, naive_logits, naive_hidden = [], [], []
    with torch.no_grad():
        for _ in range(7):
            out = models.policy(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), output_hidden_states=True)
            step = out.logits[:, -1]
            token = draw(torch.softmax(step / 0.9, -1), gen)  # the sampler's own draw (tested on its own below)
            naive_tokens.append(token)
            naive_logits.append(step)
            naive_hidden.append(out.hidden_states[-1][:, -1])
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    assert torch.equal(tokens, torch.cat(naive_tokens, 1))
    logits = torch.stack(naive_logits, 1)
    assert torch.allclose(steps.logprobs, logprobs_from_logits(logits, tokens, 0.9), atol=1e-4)
    assert torch.allclose(steps.entropy, entropy_from_logits(logits, 0.9), atol=1e-4)
    assert torch.allclose(steps.hidden, torch.stack(naive_hidden, 1), atol=1e-4)
    plain = sample(models.policy, enc["input_ids"], enc["attention_mask"], 7, 0.9, None, True, torch.Generator().manual_seed(3))[1]
    assert torch.equal(plain.logprobs, steps.logprobs) and plain.entropy is None and plain.hidden is None


def test_shared_log_softmax_paths_equal_the_logits_functions(world):
    from kl_reference import entropy_from_logits, exact_kl_from_logits

    tok, models, ref = world
    cfg = RolloutConfig(batch_size=4, max_new_tokens=6, temperature=0.8)
    ro = generate_rollout(models, ref, tok, PROMPTS, cfg, 16, torch.Generator().manual_seed(4))
    R = ro.response_ids.shape[1]
    with torch.no_grad():
        logits = response_logits(models.policy, ro.input_ids, ro.attention_mask, R)
        ref_logits = response_logits(ref, ro.input_ids, ro.attention_mask, R)
    m = ro.response_mask.bool()
    assert torch.allclose(ro.exact_kl[m], exact_kl_from_logits(logits, ref_logits, 0.8)[m], atol=1e-4)
    assert torch.allclose(ro.entropy[m], entropy_from_logits(logits, 0.8)[m], atol=1e-4)


def test_inverse_cdf_draw_follows_the_distribution_exactly():
    from policyshift.rollout import draw

    probs = torch.tensor([[0.0, 0.1, 0.6, 0.0, 0.3], [0.25, 0.25, 0.25, 0.25, 0.0]], dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    n = 40000
    tokens = torch.cat([draw(probs, g) for _ in range(n)], 1)  # (2, n)
    for row in range(2):
        freq = torch.bincount(tokens[row], minlength=5).float() / n
        assert (freq[probs[row] == 0] == 0).all()  # zero-probability tokens are never drawn
        # within 5 standard errors of the probabilities
        se = (probs[row] * (1 - probs[row]) / n).sqrt()
        assert ((freq - probs[row]).abs() <= 5 * se + 1e-9).all(), (freq, probs[row])
    # a one-hot row (a tiny temperature) always draws its token: argmax sampling
    assert draw(torch.tensor([[0.0, 0.0, 1.0]]), g).item() == 2
