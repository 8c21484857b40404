"""What the reward model sees: each rendering (tokens / chat / text, EOS kept or not) gives the intended token
sequence, the score is read at the intended token (not at "the last non-pad token", which is the token before a
kept EOS where pad = EOS), "auto" picks the right rendering, and the reward-model stage trains on exactly what
PPO scores."""

import json

import pytest
import torch
from tiny_archs import make_arch_model, make_chat_tokenizer

import tiny
from policyshift.models import ModelError, freeze, load_sequence_classifier, load_tokenizer
from policyshift.reward_render import Episodes, pair_sequences, render, resolve_template, score_sequences
from policyshift.rewards import ModelReward, score_rollout


@pytest.fixture(scope="module")
def rm_world(tmp_path_factory):
    """A GPT-2 reward model whose tokenizer pads with its EOS (as GPT-2 and Llama checkpoints without a pad
    token do), and a chat-template Llama reward model with another vocabulary."""
    root = tmp_path_factory.mktemp("rm")
    tok = tiny.make_tokenizer(root / "gpt2")
    tiny.make_policy(root / "gpt2", tok, n_layer=1, seed=3, head="seq")
    chat_tok = make_chat_tokenizer(root / "chat")
    make_arch_model(root / "chat", "llama", chat_tok, head="reward", seed=4)
    return root


def eos_padded(path):
    tok = load_tokenizer(str(path), padding_side="right")
    tok.pad_token = tok.eos_token  # the trap: pad id == EOS id
    return tok


def episodes(tok, prompts, responses, ended):
    """A rollout's view: left-padded prompt ids, right-padded response ids ending in EOS where `ended`."""
    q = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    rows = [tok(r, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if e else []) for r, e in zip(responses, ended)]
    R = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (R - len(r)) for r in rows])
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (R - len(r)) for r in rows])
    return Episodes(prompts, responses, q["input_ids"], q["attention_mask"], ids, mask, torch.tensor(ended))


PROMPTS, RESPONSES, ENDED = ["the cat", "a dog runs on"], ["is good", "the mat and sits"], [True, False]


def test_tokens_rendering_is_the_generated_ids(rm_world):
    tok = eos_padded(rm_world / "gpt2")
    ep = episodes(tok, PROMPTS, RESPONSES, ENDED)
    want = [tok("the cat is good")["input_ids"], tok("a dog runs on the mat and sits")["input_ids"]]
    assert render(ep, "tokens", tok, None) == [want[0] + [tok.eos_token_id], want[1]]  # EOS kept where the response ended
    assert render(ep, "tokens", tok, True) == [want[0] + [tok.eos_token_id], want[1]]  # (a cut response gets none)
    assert render(ep, "tokens", tok, False) == want


def test_text_rendering_drops_eos_unless_asked(rm_world):
    tok = eos_padded(rm_world / "gpt2")
    ep = episodes(tok, PROMPTS, RESPONSES, ENDED)
    want = [tok("the cat is good")["input_ids"], tok("a dog runs on the mat and sits")["input_ids"]]
    assert render(ep, "text", tok, None) == want
    assert render(ep, "text", tok, True) == [want[0] + [tok.eos_token_id], want[1]]


def test_chat_rendering_closes_only_finished_turns(rm_world):
    tok = load_tokenizer(str(rm_world / "chat"), padding_side="right")
    messages = [None, [{"role": "system", "content": "be good"}, {"role": "user", "content": "a dog runs on"}]]
    ep = Episodes(PROMPTS, RESPONSES, has_eos=torch.tensor(ENDED), messages=messages)
    got = [tok.decode(ids) for ids in render(ep, "chat", tok, None)]
    assert got[0] == "<|user|> the cat <|end|> <|assistant|> is good <|end|> "  # a plain prompt: one user message
    # a chat row's own messages; a response cut at max_new_tokens is not closed as if it had ended
    assert got[1] == "<|system|> be good <|end|> <|user|> a dog runs on <|end|> <|assistant|> the mat and sits"
    with_eos = render(ep, "chat", tok, True)
    assert with_eos[0][-1] == tok.eos_token_id and with_eos[1][-1] != tok.eos_token_id


def test_score_is_read_at_the_last_token_even_when_it_is_the_pad_id(rm_world):
    """EOS kept and pad = EOS: our score is the head at the EOS position of the unpadded sequence; transformers'
    own pooling ("last token that is not pad") reads the token before it."""
    tok = eos_padded(rm_world / "gpt2")
    model = freeze(load_sequence_classifier(str(rm_world / "gpt2")))
    model.config.pad_token_id = tok.pad_token_id
    seqs = render(episodes(tok, PROMPTS, RESPONSES, ENDED), "tokens", tok, None)
    ours = score_sequences(model, seqs, tok.pad_token_id, 8, 64)
    with torch.no_grad():
        for i, s in enumerate(seqs):
            hidden = model.transformer(input_ids=torch.tensor([s])).last_hidden_state[0]
            torch.testing.assert_close(ours[i], model.score(hidden[-1])[0], atol=1e-5, rtol=0)  # the intended token: the last
        before_eos = model.score(model.transformer(input_ids=torch.tensor([seqs[0]])).last_hidden_state[0, -2])[0]
        pooled = model(input_ids=torch.tensor([seqs[0]])).logits[0, 0]
    torch.testing.assert_close(pooled, before_eos, atol=1e-5, rtol=0)  # transformers' pooling: the token before EOS
    assert (ours[0] - pooled).abs() > 1e-4
    one_by_one = torch.cat([score_sequences(model, [s], tok.pad_token_id, 1, 64) for s in seqs])
    torch.testing.assert_close(ours, one_by_one, atol=1e-5, rtol=0)  # right padding never changes a score
    assert score_sequences(model, seqs, tok.pad_token_id, 8, 3)[0] == pytest.approx(
        float(score_sequences(model, [seqs[0][-3:]], tok.pad_token_id, 1, 64)[0]), abs=1e-5)  # too long: keep the end


def test_auto_picks_tokens_then_chat_then_text(rm_world, tiny_world):
    policy_tok = load_tokenizer(tiny_world["policy"])
    shared = load_tokenizer(str(rm_world / "gpt2"))  # tests/tiny.py's tokenizer: the policy's vocabulary
    chat = load_tokenizer(str(rm_world / "chat"))
    other = tiny.make_tokenizer(rm_world / "other", extra=["zebra"])
    assert resolve_template("auto", shared, policy_tok) == "tokens"
    assert resolve_template("auto", chat, policy_tok) == "chat"
    assert resolve_template("auto", other, policy_tok) == "text"
    assert resolve_template("auto", shared, None) == "text"  # texts only: nothing to share
    with pytest.raises(ModelError, match="reward.template tokens: the reward model's vocabulary differs"):
        resolve_template("tokens", other, policy_tok)
    with pytest.raises(ModelError, match="reward.template chat: the reward tokenizer .* has no chat template"):
        resolve_template("chat", other, policy_tok)


def test_rollouts_are_scored_in_the_reward_models_rendering(rm_world, tiny_world):
    """score_rollout on a rollout: the generated ids (EOS included) when the vocabularies match; with
    template text, today's re-tokenized text without EOS; with keep_eos false, the ids without it."""
    from policyshift.config import RolloutConfig
    from policyshift.models import PolicyAndCritic, freeze, load_causal_lm
    from policyshift.rollout import generate_rollout

    tok = load_tokenizer(tiny_world["policy"])
    policy = load_causal_lm(tiny_world["policy"])
    ro = generate_rollout(PolicyAndCritic(policy), freeze(policy), tok, ["the cat", "a dog runs", "good", "happy"] * 4,
                          RolloutConfig(batch_size=16, max_new_tokens=12), 16, torch.Generator().manual_seed(0))
    assert ro.has_eos.any() and not ro.has_eos.all()
    model = freeze(load_sequence_classifier(str(rm_world / "gpt2")))
    rm_tok = load_tokenizer(str(rm_world / "gpt2"), padding_side="right")
    ids = [q[m.bool()].tolist() + r[rm.bool()].tolist() for q, m, r, rm in zip(ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask)]
    auto = score_rollout(ModelReward(model, rm_tok), ro, {}, tok)
    torch.testing.assert_close(auto, score_sequences(model, ids, rm_tok.pad_token_id, 64, 512), atol=1e-5, rtol=0)
    no_eos = score_rollout(ModelReward(model, rm_tok, keep_eos=False), ro, {}, tok)
    stripped = [s[:-1] if e else s for s, e in zip(ids, ro.has_eos.tolist())]
    torch.testing.assert_close(no_eos, score_sequences(model, stripped, rm_tok.pad_token_id, 64, 512), atol=1e-5, rtol=0)
    assert not torch.allclose(auto[ro.has_eos], no_eos[ro.has_eos])  # the EOS convention changes the scores of ended responses
    torch.testing.assert_close(auto[~ro.has_eos], no_eos[~ro.has_eos])
    text = score_rollout(ModelReward(model, rm_tok, template="text"), ro, {}, tok)
    torch.testing.assert_close(text, ModelReward(model, rm_tok, template="text")(ro.prompts, ro.responses), atol=1e-5, rtol=0)


def test_reward_model_stage_trains_on_what_ppo_scores(tmp_path, tiny_world):
    """Pairs with the ids they were sampled as: the stage's scores of a pair equal ModelReward's scores of the same
    episodes as a rollout holds them (same rendering, same index), for tokens with EOS kept (the default)."""
    from policyshift.stages.reward_model import RewardModelConfig, _pair_scores, run_reward_model

    tok = load_tokenizer(tiny_world["policy"], padding_side="right")
    eos = tok.eos_token_id
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = [{"prompt": p, "chosen": c, "rejected": r, "prompt_ids": ids(p), "chosen_ids": ids(c) + [eos], "rejected_ids": ids(r)}
            for p, c, r in [("the cat", "is good", "is bad"), ("a dog", "runs good", "sits sad"), ("the mat", "good", "not happy")]] * 4
    with open(tmp_path / "pairs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    run_reward_model(RewardModelConfig(pairs=str(tmp_path / "pairs.jsonl"), base_model=tiny_world["policy"], output_dir=str(tmp_path / "rm"),
                                       steps=5, batch_size=4, lr=3e-3, eval_fraction=0.0, log_every=0))
    rm = ModelReward.from_pretrained(str(tmp_path / "rm"))
    with torch.no_grad():
        chosen, rejected = _pair_scores(rm.model, rm.tokenizer, rows[:3], 128, "tokens", None)
    ep = episodes(tok, [r["prompt"] for r in rows[:3]], [r["chosen"] for r in rows[:3]], [True] * 3)
    torch.testing.assert_close(rm.score_episodes(ep, tok), chosen, atol=1e-5, rtol=0)
    ep = episodes(tok, [r["prompt"] for r in rows[:3]], [r["rejected"] for r in rows[:3]], [False] * 3)
    torch.testing.assert_close(rm.score_episodes(ep, tok), rejected, atol=1e-5, rtol=0)
    seqs, _ = pair_sequences(rows[:1], "tokens", tok, None)
    assert seqs == [ids("the cat") + ids("is good") + [eos]]


def test_cli_tokens_rendering_for_another_vocabulary_is_one_line(rm_world, tiny_world, tmp_path, capsys):
    from test_cli_errors import error_line, run_args

    other = tmp_path / "other_rm"
    tiny.make_policy(other, tiny.make_tokenizer(other, extra=["zebra"]), n_layer=1, head="seq")
    args = run_args(tiny_world, tmp_path / "run", reward__function=None, reward__model=str(other), reward__template="tokens")
    assert error_line(capsys, args) == "reward.template tokens: the reward model's vocabulary differs from the policy's; use chat or text (or auto)"
