"""Chat prompts rendered with the tokenizer's chat template (sampling, fixed-prompt analysis, compare) and
responses that end at any of the model's end-of-turn tokens."""

import json

import pytest
import torch
from tiny_archs import END, make_arch_model, make_chat_tokenizer

from tiny import make_tokenizer
from policyshift.chat import end_of_turn_ids, render_chat
from policyshift.config import PPOConfig, RolloutConfig
from policyshift.data import DataError, load_prompt_rows
from kl_reference import logprobs_from_logits
from policyshift.models import ModelError, PolicyAndCritic, freeze, load_causal_lm, load_tokenizer, response_logits
from policyshift.rollout import generate_rollout, truncate_after_eos

CHATS = [
    [{"role": "user", "content": "the cat sits"}],
    [{"role": "system", "content": "be good"}, {"role": "user", "content": "a dog runs on the mat"}],
    [{"role": "user", "content": "good"}, {"role": "assistant", "content": "very good"}, {"role": "user", "content": "and the dog"}],
    [{"role": "user", "content": "happy"}],
]


@pytest.fixture(scope="module")
def chat_world(tmp_path_factory):
    """A chat tokenizer (turns end in <|end|>), a tiny Llama whose generation_config ends turns at <eos> or
    <|end|>, and a prompt file of chat rows (plus one plain-text row)."""
    root = tmp_path_factory.mktemp("chat")
    tok = make_chat_tokenizer(root / "policy")
    end = tok.convert_tokens_to_ids(END)
    make_arch_model(root / "policy", "llama", tok, eos_token_id=[tok.eos_token_id, end])
    with open(root / "prompts.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"messages": CHATS[i % len(CHATS)], "answer": "good"}) + "\n")
        f.write(json.dumps({"prompt": "a plain prompt", "answer": "bad"}) + "\n")
    return {"root": root, "policy": str(root / "policy"), "prompts": str(root / "prompts.jsonl"), "end": end}


def ending_policy(path, tok, end: int):
    """The tiny Llama with a bias towards both end tokens (so responses end within a few tokens, at either)."""
    policy = load_causal_lm(path)
    head = torch.nn.Linear(policy.lm_head.in_features, policy.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(policy.lm_head.weight)
        head.bias.zero_()
        head.bias[end], head.bias[tok.eos_token_id] = 5.0, 4.5
    policy.lm_head = head
    return policy


def test_chat_rows_are_rendered_with_the_template(chat_world):
    tok = load_tokenizer(chat_world["policy"])
    rows = load_prompt_rows(chat_world["prompts"], tokenizer=tok)
    for row, messages in zip(rows, CHATS * 3):
        assert row.text == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert row.text.endswith("<|assistant|>")  # the generation prompt: the response is the assistant's turn
        assert row.fields == {"messages": messages, "answer": "good"}  # reward functions may take `messages`
    assert rows[1].text == "<|system|> be good <|end|> <|user|> a dog runs on the mat <|end|> <|assistant|>"
    assert rows[-1].text == "a plain prompt" and rows[-1].messages is None


def test_chat_rows_need_a_template(chat_world, tmp_path):
    plain = make_tokenizer(tmp_path / "plain")
    with pytest.raises(DataError, match=r"prompts.jsonl row 0: a chat prompt \('messages'\), but the tokenizer .* has no chat template") as err:
        load_prompt_rows(chat_world["prompts"], tokenizer=plain)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="none was given"):
        load_prompt_rows(chat_world["prompts"])


@pytest.mark.parametrize("record, problem", [
    ({"messages": []}, "non-empty list"),
    ({"messages": "hi"}, "non-empty list"),
    ({"messages": [{"content": "hi"}]}, "message 0 must be an object with a string 'role'"),
    ({"messages": [{"role": "user", "content": 3}]}, "message 0 content must be a string"),
])
def test_malformed_chat_rows(tmp_path, record, problem):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"p.jsonl:1: .*{problem}"):
        load_prompt_rows(str(path))


def test_template_bos_is_not_doubled(tmp_path):
    """A template that writes BOS itself (Llama's) and a tokenizer that adds BOS: the prompt gets one BOS."""
    from tokenizers import processors

    tok = make_chat_tokenizer(tmp_path / "tok")
    tok.add_special_tokens({"bos_token": "<s>"})
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    text = render_chat(CHATS[0], tok, "row 0")
    ids = tok(text)["input_ids"]
    assert ids[0] == bos and ids.count(bos) == 1
    assert tok.decode(ids) == tok.apply_chat_template(CHATS[0], tokenize=False, add_generation_prompt=True)


def test_end_of_turn_ids(chat_world):
    tok = load_tokenizer(chat_world["policy"])
    policy = load_causal_lm(chat_world["policy"])
    assert end_of_turn_ids(policy, tok) == [tok.eos_token_id, chat_world["end"]]
    policy.generation_config.eos_token_id = chat_world["end"]  # an int, not a list
    assert end_of_turn_ids(policy, tok) == [tok.eos_token_id, chat_world["end"]]
    policy.generation_config.eos_token_id = [tok.eos_token_id, len(tok) + 5]
    with pytest.raises(ModelError, match=rf"generation_config.eos_token_id names {len(tok) + 5}, which is not a token of the tokenizer \({len(tok)} tokens\)"):
        end_of_turn_ids(policy, tok)


def test_truncate_after_any_end_of_turn_token():
    ids = torch.tensor([[5, 9, 7, 1], [5, 6, 7, 8], [1, 9, 9, 9], [4, 4, 9, 1]])
    out, mask, has_eos = truncate_after_eos(ids, [1, 9], pad_token_id=0)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    assert out.tolist() == [[5, 9, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0], [4, 4, 9, 0]]
    assert has_eos.tolist() == [True, False, True, True]


def test_responses_end_at_any_end_of_turn_token(chat_world):
    tok = load_tokenizer(chat_world["policy"])
    end = chat_world["end"]
    policy = ending_policy(chat_world["policy"], tok, end)
    prompts = [row.text for row in load_prompt_rows(chat_world["prompts"], tokenizer=tok)]
    cfg = RolloutConfig(batch_size=len(prompts), max_new_tokens=24, temperature=1.0)
    ro = generate_rollout(PolicyAndCritic(policy), freeze(policy), tok, prompts, cfg, 48, torch.Generator().manual_seed(0))
    last = [int(ro.response_ids[i, n - 1]) for i, n in enumerate(ro.lengths.tolist())]
    assert ro.has_eos.all()
    assert set(last) == {end, tok.eos_token_id}  # both end tokens ended some turn
    for i, n in enumerate(ro.lengths.tolist()):  # nothing before the end token is an end token
        assert not set(ro.response_ids[i, : n - 1].tolist()) & {end, tok.eos_token_id}
    assert ro.response_ids.shape[1] < cfg.max_new_tokens  # the sampler stopped once every row had ended
    assert not any(END in r for r in ro.responses)  # a special token: not part of the response text
    with torch.no_grad():  # the logprobs kept while sampling still equal a fresh pass over the kept tokens
        fresh = logprobs_from_logits(response_logits(policy, ro.input_ids, ro.attention_mask, ro.response_ids.shape[1]), ro.response_ids, 1.0)
    mask = ro.response_mask.bool()
    torch.testing.assert_close(ro.logprobs[mask], fresh[mask], atol=1e-4, rtol=0)


def test_training_and_analysis_on_chat_prompts(chat_world, tmp_path):
    """A short run on chat rows: the prompts it samples, the fixed-prompt samples and the reward function's
    `messages` field are the rendered chats; responses that end at <|end|> count as ended (no missing-EOS penalty)."""
    from policyshift import PPOTrainer

    tok = load_tokenizer(chat_world["policy"])
    policy = ending_policy(chat_world["policy"], tok, chat_world["end"])
    cfg = PPOConfig.from_dict({
        "model": {"policy": chat_world["policy"]}, "data": {"prompts": chat_world["prompts"], "max_prompt_length": 40},
        "reward": {"function": "test_chat:ends_and_sees_messages", "missing_eos_penalty": 100.0},
        "rollout": {"batch_size": 4, "max_new_tokens": 16}, "analysis": {"every": 1, "num_prompts": 2},
        "train": {"steps": 2, "output_dir": str(tmp_path / "run"), "save_every": 0, "seed": 0},
    })
    history = PPOTrainer(cfg, policy=policy).train()
    assert [r["reward/score_mean"] for r in history] == [1.0, 1.0]  # no row penalized: a turn ended by <|end|> has ended
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    chats = [s for s in samples if s["prompt"].startswith("<|")]
    assert chats and all(s["prompt"].endswith("<|assistant|>") for s in chats)


def ends_and_sees_messages(prompts, responses, messages):
    for p, m in zip(prompts, messages):
        assert (m is None) == (not p.startswith("<|")), (p, m)  # each row's messages arrive beside its rendering
    return [1.0 for _ in responses]


def test_compare_on_chat_prompts(chat_world, tmp_path):
    from policyshift.analysis.compare import compare_checkpoints

    result = compare_checkpoints(chat_world["policy"], chat_world["policy"], chat_world["prompts"], str(tmp_path / "cmp"),
                                 max_new_tokens=4, batch_size=8)
    prompts = [s["prompt"] for s in result["samples"]]
    assert prompts[0] == "<|user|> the cat sits <|end|> <|assistant|>" and prompts[-1] == "a plain prompt"


def test_cli_chat_prompts_for_a_tokenizer_without_template(chat_world, tiny_world, tmp_path, capsys):
    from test_cli_errors import error_line, run_args

    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", data__prompts=chat_world["prompts"]))
    assert message.startswith(f"{chat_world['prompts']} row 0: a chat prompt ('messages'), but the tokenizer")


def test_cli_chat_prompt_longer_than_the_context(chat_world, tmp_path, capsys):
    """The tiny Llama has 64 positions: 56 new tokens leave 8 for the prompt, fewer than the chats need."""
    from test_cli_errors import error_line, run_args

    args = run_args({"policy": chat_world["policy"], "prompts": chat_world["prompts"]}, tmp_path / "run", rollout__max_new_tokens="56")
    message = error_line(capsys, args)
    tok = load_tokenizer(chat_world["policy"])
    lengths = [len(tok(row.text)["input_ids"]) for row in load_prompt_rows(chat_world["prompts"], tokenizer=tok) if row.messages]
    n = sum(k > 8 for k in lengths)
    assert 0 < n < len(lengths)  # the short chats fit; those that do not are counted
    assert message.startswith(f"{chat_world['prompts']}: {n} chat prompt(s) are longer than the 8-token prompt budget (the longest: {max(lengths)} tokens)")


def test_cli_end_of_turn_id_the_tokenizer_does_not_know(tiny_world, tmp_path, capsys):
    import shutil

    from test_cli_errors import error_line, run_args
    from transformers import GenerationConfig

    policy = tmp_path / "policy"
    shutil.copytree(tiny_world["policy"], policy)
    n = len(load_tokenizer(str(policy)))
    GenerationConfig(eos_token_id=[1, n + 3]).save_pretrained(policy)
    message = error_line(capsys, run_args(tiny_world, tmp_path / "run", model__policy=str(policy)))
    assert message == f"generation_config.eos_token_id names {n + 3}, which is not a token of the tokenizer ({n} tokens); fix generation_config.json or the tokenizer"
