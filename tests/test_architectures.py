"""Llama, Qwen2, Mistral, Gemma and Phi-3 (tiny, from their configs) through the whole model path: sampled
logprobs equal a fresh unpadded forward pass, RoPE positions under left padding, greedy tokens equal
transformers' `generate`, LoRA's default target modules, from_pretrained round trips, and a reward model of
another architecture and vocabulary scoring the policy's text."""

import copy
import warnings

import pytest
import torch
from tiny_archs import ARCHITECTURES, make_arch_model, make_bpe_tokenizer

from policyshift.config import LoRAConfig, RolloutConfig
from kl_reference import logprobs_from_logits
from policyshift.models import PolicyAndCritic, freeze, load_causal_lm, load_tokenizer, position_ids_from_mask, response_logits
from policyshift.rollout import generate_rollout, sample, truncate_after_eos

PROMPTS = ["the cat", "a dog runs on the mat and", "good", "very happy dog sits"]  # different lengths: left padding


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    make_bpe_tokenizer(out)
    return out


@pytest.fixture(scope="module", params=ARCHITECTURES)
def saved_arch(request, tok_dir, tmp_path_factory):
    """(name, path, tokenizer, policy) for each architecture, loaded back with from_pretrained once per module."""
    out = tmp_path_factory.mktemp(request.param)
    make_arch_model(out, request.param, load_tokenizer(str(tok_dir)))
    return request.param, out, load_tokenizer(str(out)), load_causal_lm(str(out))


@pytest.fixture
def arch(saved_arch):
    """Each test gets its own copy of the module's model: tests mutate it (`freeze` turns requires_grad off), and
    that state changes later tests' numerics -- on CPU, `F.linear` on a non-contiguous input (the
    `logits_to_keep` slice) takes another GEMM path when the weight does not require grad, 1 ulp apart."""
    name, path, tok, policy = saved_arch
    return name, path, tok, copy.deepcopy(policy)


def _rollout(policy, tok, temperature=1.0, max_new_tokens=8, seed=0):
    cfg = RolloutConfig(batch_size=len(PROMPTS), max_new_tokens=max_new_tokens, temperature=temperature)
    return generate_rollout(PolicyAndCritic(policy), freeze(policy), tok, PROMPTS, cfg, 32, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [0.8, 1.0])
def test_sampled_logprobs_equal_unpadded_forward(arch, temperature):
    """Each row of a left-padded batch, re-scored alone with no padding at all: the logprobs kept while
    sampling (KV cache, positions continued per row) equal a fresh forward pass to 1e-4."""
    name, _, tok, policy = arch
    ro = _rollout(policy, tok, temperature)
    assert (ro.query_mask == 0).any(), "the batch must really be left-padded"
    checked = 0
    for i in range(len(PROMPTS)):
        n = int(ro.lengths[i])
        ids = torch.cat([ro.query_ids[i][ro.query_mask[i].bool()], ro.response_ids[i, :n]])[None]
        with torch.no_grad():
            logits = policy(input_ids=ids).logits[:, -(n + 1) : -1].float()
        fresh = logprobs_from_logits(logits, ro.response_ids[i : i + 1, :n], temperature)[0]
        torch.testing.assert_close(ro.logprobs[i, :n], fresh, atol=1e-4, rtol=0, msg=f"{name} row {i}")
        checked += n
    assert checked >= 8


def test_rope_positions_under_left_padding(arch):
    """Rotary attention sees only position differences, so the positions must be consistent within a row: the
    sampler gives each row's prompt 0…n−1 from its first real token and continues at n, n+1… per row (not at the
    padded column). Mixing the two conventions (prompt from the mask, new token at its column) changes the
    logits, so a wrong position would show in the logprob tests too."""
    name, _, tok, policy = arch
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    seen = []
    hook = policy.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
    try:
        sample(policy, ids, mask, 3, 1.0, None, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    n = mask.sum(1)
    assert seen[0][mask.bool()].tolist() == torch.cat([torch.arange(int(k)) for k in n]).tolist()
    for t, positions in enumerate(seen[1:]):
        assert positions.flatten().tolist() == (n + t).tolist(), f"{name} step {t + 1}"

    row = 0  # "the cat": the most padding
    assert mask[row, 0] == 0
    real = ids[row][mask[row].bool()]
    with torch.no_grad():
        alone = policy(input_ids=real[None]).logits[0, -1].float()
        ours = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[row, -1].float()
        # the prompt's last token at its padded column while the rest count from the first real token
        mixed = position_ids_from_mask(mask)
        mixed[:, -1] = ids.shape[1] - 1
        wrong = policy(input_ids=ids, attention_mask=mask, position_ids=mixed).logits[row, -1].float()
    torch.testing.assert_close(ours, alone, atol=1e-4, rtol=0)
    assert (wrong - alone).abs().max() > 1e-4, f"{name}: inconsistent positions did not matter; the test proves nothing"


def test_greedy_tokens_equal_transformers_generate(arch):
    """At a vanishing temperature our sampler is argmax decoding; its tokens (KV cache, per-row positions,
    one mask for the whole generation) equal `generate(do_sample=False)` on the same left-padded batch."""
    name, _, tok, policy = arch
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    ours, _ = sample(policy, enc["input_ids"], enc["attention_mask"], 10, 1e-7, tok.eos_token_id, stop_at_eos=False,
                     generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = policy.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False, max_new_tokens=10, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:]
    ref = torch.nn.functional.pad(ref, (0, 10 - ref.shape[1]), value=tok.pad_token_id)  # generate stops when every row is done
    ours_ids, _, _ = truncate_after_eos(ours, tok.eos_token_id, tok.pad_token_id)
    ref_ids, _, _ = truncate_after_eos(ref, tok.eos_token_id, tok.pad_token_id)
    assert ours_ids.tolist() == ref_ids.tolist(), name
    assert len(set(map(tuple, ours_ids.tolist()))) > 1  # rows differ: each continued its own prompt


def test_sampler_uses_the_current_cache_api(arch):
    """No deprecation warning from the KV-cache argument (transformers 5 renamed past_key_values to cache)."""
    _, _, tok, policy = arch
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        sample(policy, enc["input_ids"], enc["attention_mask"], 4, 1.0, tok.eos_token_id, generator=torch.Generator().manual_seed(0))


def test_lora_default_target_modules(arch):
    """peft's default target modules for the architecture: adapters appear, only they train, and with B = 0
    the adapted model still gives the base model's logits."""
    from policyshift.lora import apply_lora

    name, path, tok, _ = arch
    base = load_causal_lm(str(path))
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        before = response_logits(base, enc["input_ids"], enc["attention_mask"], 1)
    peft_model = apply_lora(base, LoRAConfig(r=4))
    adapted = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert adapted, f"{name}: no LoRA adapters"
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        after = response_logits(peft_model, enc["input_ids"], enc["attention_mask"], 1)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def test_checkpoint_round_trips_through_from_pretrained(arch, tmp_path):
    """What a run saves (checkpoint.save_models: policy + tokenizer) loads back with from_pretrained and gives
    the same logits; a LoRA run's merged export too."""
    from policyshift.checkpoint import save_models
    from policyshift.lora import apply_lora, save_merged

    name, path, tok, policy = arch
    save_models(tmp_path / "ckpt", PolicyAndCritic(policy), tok)
    loaded = load_causal_lm(str(tmp_path / "ckpt" / "policy"))
    assert type(loaded) is type(policy)
    saved, back = policy.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved), name  # the same weights, bit for bit
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    # Exact: the same weights through the same kernels give the same logits. "The same kernels" includes the
    # requires_grad state (see the `arch` fixture), so both models are put in the same one.
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in policy.parameters()]
    with torch.no_grad():
        want = response_logits(policy, enc["input_ids"], enc["attention_mask"], 2)
        torch.testing.assert_close(response_logits(loaded, enc["input_ids"], enc["attention_mask"], 2), want, atol=0, rtol=0)
    peft_model = apply_lora(load_causal_lm(str(path)), LoRAConfig(r=4))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # a trained adapter: the merged weights must differ from the base
        adapted = response_logits(peft_model, enc["input_ids"], enc["attention_mask"], 2)
    save_merged(peft_model, tok, tmp_path / "merged")
    merged = load_causal_lm(str(tmp_path / "merged"))
    with torch.no_grad():
        got = response_logits(merged, enc["input_ids"], enc["attention_mask"], 2)
    torch.testing.assert_close(got, adapted, atol=1e-5, rtol=0)
    assert (got - want).abs().max() > 1e-4, name


def test_reward_model_of_another_architecture_and_vocabulary(arch, tmp_path):
    """The policy's decoded responses scored by a reward model with another architecture and another
    vocabulary: batched scores equal each text scored alone (the score is read at each row's own last token)."""
    from policyshift.rewards import ModelReward

    name, _, tok, policy = arch
    other = {"llama": "qwen2", "qwen2": "gemma", "mistral": "phi3", "gemma": "llama", "phi3": "mistral"}[name]
    rm_tok = make_bpe_tokenizer(tmp_path / "rm_tok", vocab_size=280, seed=5)
    assert rm_tok.get_vocab() != tok.get_vocab()
    make_arch_model(tmp_path / "rm", other, rm_tok, head="reward", seed=3)
    rm = ModelReward.from_pretrained(str(tmp_path / "rm"))
    ro = _rollout(policy, tok, max_new_tokens=6, seed=2)
    scores = rm(ro.prompts, ro.responses)
    alone = torch.cat([rm([p], [r]) for p, r in zip(ro.prompts, ro.responses)])
    assert scores.shape == (len(PROMPTS),) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0)
    assert scores.unique().numel() > 1
