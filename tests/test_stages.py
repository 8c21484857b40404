import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from policyshift.demo import gold
from policyshift.demo.corpus import generate_prompts, write_demo_data
from policyshift.stages.reward_model import (
    RewardModelConfig, bradley_terry_loss, load_pairs, make_preference_pairs, run_reward_model, save_pairs,
)
from policyshift.stages.sft import SFTConfig, _collate, _encode, load_sft_rows, run_sft, train_tokenizer

TINY = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64, seq_len=64, vocab_size=400, batch_size=16,
            lr=3e-3, log_every=0)


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def test_bradley_terry_hand_computed():
    # r_c − r_r = [1, 0]: −log σ(1) = log(1 + e^−1) = 0.313262, −log σ(0) = log 2 = 0.693147; mean = 0.503204
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.503204, abs=1e-6)
    # stable at large margins (logsigmoid, not log(sigmoid)): ~0 when right, = margin when badly wrong
    assert bradley_terry_loss(torch.tensor([100.0]), torch.tensor([-100.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([100.0])).item() == pytest.approx(200.0)


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    paths = write_demo_data(d / "data", seed=0, n_texts=300, n_prompts=16)
    metrics = run_sft(SFTConfig(data=paths["texts"], output_dir=str(d / "model"), steps=30, **TINY))
    return d, metrics


def test_tiny_sft_lowers_loss_and_saves_a_loadable_model(tiny_sft):
    d, m = tiny_sft
    assert m["eval_loss"] < m["eval_loss_initial"] - 0.5
    assert m["train_loss_last"] < m["train_loss_first"]
    assert json.load(open(d / "model" / "sft_metrics.json"))["eval_loss"] == pytest.approx(m["eval_loss"])
    tok = AutoTokenizer.from_pretrained(d / "model")
    model = AutoModelForCausalLM.from_pretrained(d / "model")
    assert tok.eos_token_id is not None and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.n_layer == 1 and model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    enc = tok(["review of the blender :"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_tokenizer_roundtrip_and_eos_padding_masks():
    tok = train_tokenizer(["review of the blender : the motor is strong ."] * 5, vocab_size=300)
    text = "review of the blender : the motor is really strong ."
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE: exact round trip, no unknowns
    ids, n_prompt, truncated = _encode(tok, "review of the blender :", " the motor is strong .", seq_len=64)
    assert ids[-1] == tok.eos_token_id and n_prompt == len(tok("review of the blender :")["input_ids"]) and not truncated
    batch = _collate([(ids, n_prompt), ([5, 6, tok.eos_token_id], 0)], tok.pad_token_id, "cpu")
    assert batch["labels"][0, :n_prompt].eq(-100).all()  # prompt: no loss
    assert batch["labels"][0, -1] == tok.eos_token_id  # EOS is learned
    assert batch["labels"][1, 3:].eq(-100).all() and batch["attention_mask"][1, 3:].eq(0).all()  # padding


def test_tiny_reward_model_on_hand_written_pairs(tiny_sft, tmp_path):
    d, _ = tiny_sft
    rows = [{"prompt": "review of the blender :", "chosen": " the motor is strong .", "rejected": " the motor is weak ."},
            {"prompt": "review of the hotel :", "chosen": " the staff is friendly .", "rejected": " the staff is rude ."},
            {"prompt": "phone review :", "chosen": " the camera is sharp . five stars .", "rejected": " the camera"},
            {"prompt": "review of the laptop :", "chosen": " the screen is bright .", "rejected": " the screen is dim ."}] * 3
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    m = run_reward_model(RewardModelConfig(pairs=pairs, base_model=str(d / "model"), output_dir=str(tmp_path / "rm"),
                                           steps=15, batch_size=4, lr=3e-3, eval_fraction=0.25, log_every=0))
    assert m["train_loss_last"] < m["train_loss_first"] and 0 <= m["eval_accuracy"] <= 1 and m["n_eval"] == 3
    assert json.load(open(tmp_path / "rm" / "rm_metrics.json"))["eval_accuracy"] == m["eval_accuracy"]
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    enc = tok(["review of the blender : the motor is strong .", "phone review : ok"], return_tensors="pt", padding=True)
    assert rm(**enc).logits.shape == (2, 1)


def test_make_preference_pairs_from_the_sft_model(tiny_sft, tmp_path):
    d, _ = tiny_sft
    prompts = generate_prompts(6, seed=0)
    pairs = make_preference_pairs(str(d / "model"), prompts, gold.labeler_preference, n_pairs=10, seed=0,
                                  max_new_tokens=12, batch_size=4)
    assert len(pairs) == 10 and all(p["prompt"] in prompts for p in pairs)
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert all(gold.labeler_preference(p["prompt"], p["chosen"]) == p["chosen_score"] for p in pairs)
    again = make_preference_pairs(str(d / "model"), prompts, gold.labeler_preference, n_pairs=10, seed=0,
                                  max_new_tokens=12, batch_size=4)
    assert again == pairs  # seeded
    assert load_pairs(save_pairs(pairs, str(tmp_path / "p.jsonl")))[0]["chosen"] == pairs[0]["chosen"]


def test_sft_from_an_existing_model_on_prompt_response_data(tmp_path):
    # the user-data path: {"prompt","response"} rows and an HF model dir (here a tiny GPT-2 whose tokenizer,
    # like many, has no pad token: SFT falls back to pad = eos and must still learn the EOS)
    tok = train_tokenizer(["question : what is two plus two ? answer : four ."] * 3, vocab_size=300)
    tok.pad_token = None
    base = tmp_path / "base"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                               eos_token_id=tok.eos_token_id)).save_pretrained(base)
    tok.save_pretrained(base)
    rows = [{"prompt": f"question : what is {a} plus {b} ?", "response": f"answer : {a + b} ."}
            for a in range(6) for b in range(6)]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    assert load_sft_rows(data)[0] == ("question : what is 0 plus 0 ?", " answer : 0 .")  # joined with one space
    m = run_sft(SFTConfig(data=data, output_dir=str(tmp_path / "out"), model=str(base), steps=30, batch_size=8,
                          lr=3e-3, seq_len=64, eval_fraction=0.2, log_every=0))
    assert m["eval_loss"] < m["eval_loss_initial"]
    out_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert out_tok.pad_token_id == out_tok.eos_token_id
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.n_embd == 32


@pytest.mark.parametrize("lines, match", [
    (['{"text": "a b c ."}', '{"text": "ok"}', '{"text": broken'], r":3: malformed JSON"),
    (['{"text": "a"}', '{"prompt": "p"}'], r":2: expected"),
    (['["a list"]'], r":1: expected"),
    (['', '   '], r"no rows"),
])
def test_sft_bad_data_errors(tmp_path, lines, match):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=match):
        load_sft_rows(path)
    with pytest.raises(ValueError, match="not found"):
        load_sft_rows(str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("lines, match", [
    (['{"prompt": "p", "chosen": "a", "rejected": "b"}', '{"prompt": "p", "chosen": "a"}'], r":2: missing .*'rejected'"),
    (['{"prompt": "p", "chosen": "a", "rejected": "b"}', 'nope'], r":2: malformed JSON"),
    (['{"prompt": "p", "chosen": 3, "rejected": "b"}'], r":1: missing or non-string 'chosen'"),
    ([''], r"no pairs"),
])
def test_reward_model_bad_pairs_errors(tmp_path, lines, match):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=match):
        load_pairs(path)
    with pytest.raises(ValueError, match="not found"):
        run_reward_model(RewardModelConfig(pairs=str(tmp_path / "missing.jsonl"), base_model="x", output_dir="y"))
