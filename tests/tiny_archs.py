"""Tiny Llama, Qwen2, Mistral, Gemma and Phi-3 models built from their configs (2 layers, hidden size 32,
grouped-query attention where the architecture has it) and saved with save_pretrained, so the tests load them
through from_pretrained like any hub checkpoint. Their tokenizer is a byte-level BPE trained here with
`tokenizers` (as Llama 3, Qwen2 and GPT-2 use): transformers 5 loads a Qwen2 directory's tokenizer with its own
Qwen2Tokenizer class, which rebuilds a BPE from vocab and merges, so a word-level tokenizer saved there reads
every word as <unk>. A chat tokenizer adds role and end-of-turn special tokens and a Jinja chat template."""

from __future__ import annotations

from pathlib import Path

import torch

from tiny import corpus

ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma", "phi3")
# Role markers and the end-of-turn token of the chat tokenizer (ChatML-like, as Qwen and Phi-3 use).
USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _classes(arch: str):
    import transformers as T

    return {
        "llama": (T.LlamaConfig, T.LlamaForCausalLM, T.LlamaForSequenceClassification, {}),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, T.Qwen2ForSequenceClassification, {}),
        "mistral": (T.MistralConfig, T.MistralForCausalLM, T.MistralForSequenceClassification, {"sliding_window": None}),
        "gemma": (T.GemmaConfig, T.GemmaForCausalLM, T.GemmaForSequenceClassification, {"head_dim": 8}),
        "phi3": (T.Phi3Config, T.Phi3ForCausalLM, T.Phi3ForSequenceClassification, {}),
    }[arch]


def make_arch_model(out_dir: Path, arch: str, tokenizer, head: str = "causal", seed: int = 0, eos_token_id=None):
    """A randomly initialised `arch` model (head "causal" or "reward": one-logit sequence classifier) saved with
    its tokenizer. `eos_token_id` (an id or a list of end-of-turn ids) goes into config and generation_config."""
    config_cls, causal_cls, seqcls_cls, extra = _classes(arch)
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=eos, **extra,
    )
    torch.manual_seed(seed)
    if head == "causal":
        model = causal_cls(config)
        model.generation_config.eos_token_id = eos
    else:
        config.num_labels = 1
        model = seqcls_cls(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def make_bpe_tokenizer(out_dir: Path, vocab_size: int = 300, seed: int = 0):
    """A byte-level BPE trained on tests/tiny.py's corpus (`seed` picks the corpus: another seed or size gives
    another vocabulary), with <pad>, <eos>, <unk> specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(seed=seed), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out_dir)
    return fast


def make_chat_tokenizer(out_dir: Path):
    """The byte-level BPE with <|user|>, <|assistant|> and <|end|> as special tokens and a chat template
    whose turns end in <|end|> (the model's end-of-turn token besides <eos>)."""
    tok = make_bpe_tokenizer(out_dir)
    tok.add_special_tokens({"additional_special_tokens": [USER, ASSISTANT, END, "<|system|>"]})
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok
