"""Chat prompts and end-of-turn tokens.

A prompt row `{"messages": [{"role": "user", "content": "..."}, ...]}` is rendered once, where the prompts are
loaded with the policy's tokenizer (data.load_prompt_rows), by the tokenizer's own chat template with the
generation prompt added (the assistant header the response continues). From then on the rendered text is the
prompt everywhere: sampling, rewards, fixed-prompt analysis, compare, the report.

A response ends at the first of the model's end-of-turn tokens: chat models stop at a token of their own
(Llama 3's <|eot_id|>, Qwen's <|im_end|>, Phi-3's <|end|>), which `generation_config.eos_token_id` lists next to
(or instead of) the tokenizer's EOS. Stopping only at `tokenizer.eos_token_id` would let such a model run past
its turn into a made-up next one, and the missing-EOS penalty would hit every answer that ended properly.
"""

from __future__ import annotations

from policyshift.errors import DataError, ModelError

CHAT_FIELD = "messages"  # the prompt-row field that holds chat messages


def check_messages(messages, where: str) -> tuple:
    """The messages of a chat row as a tuple of {"role", "content"} dicts, or a DataError naming the row."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}: '{CHAT_FIELD}' must be a non-empty list of {{\"role\", \"content\"}} objects")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise DataError(f"{where}: message {k} must be an object with a string 'role' and a 'content'")
        if not isinstance(m["content"], (str, list)):
            raise DataError(f"{where}: message {k} content must be a string (or a list of parts), got {type(m['content']).__name__}")
    return tuple(dict(m) for m in messages)


def render_chat(messages, tokenizer, where: str, add_generation_prompt: bool = True) -> str:
    """The text of `messages` in the tokenizer's chat template. A template that writes the BOS token itself
    would get a second one when the text is tokenized with special tokens (as every prompt is): the leading
    BOS is dropped from the text when the tokenizer adds it anyway."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: a chat prompt ('{CHAT_FIELD}'), but the tokenizer {tokenizer.name_or_path or ''} has no chat template; "
                        "give plain-text prompts or a tokenizer with a chat_template")
    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja2 TemplateError, a template's raise_exception ("System role not supported")...
        raise DataError(f"{where}: the chat template failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def check_chat_fits(rows, tokenizer, budget: int, source: str) -> None:
    """A chat prompt longer than the prompt budget (data.max_prompt_length, shrunk to the model's context less
    max_new_tokens) is an error, not a cut: prompts are cut from the left, which would drop the system message and
    the template's start and leave a conversation the model never saw."""
    chats = [row for row in rows if getattr(row, "messages", None) is not None]
    if not chats:
        return
    lengths = [len(ids) for ids in tokenizer([row.text for row in chats], add_special_tokens=True)["input_ids"]]
    too_long = [n for n in lengths if n > budget]
    if too_long:
        raise DataError(f"{source}: {len(too_long)} chat prompt(s) are longer than the {budget}-token prompt budget (the longest: {max(too_long)} "
                        "tokens); cutting would drop the start of the conversation: raise data.max_prompt_length (within the model's "
                        "context less rollout.max_new_tokens) or shorten them")


def adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and each id of the model's
    `generation_config.eos_token_id` (an int or a list), in that order, without repeats. An id the tokenizer
    does not know (outside its vocabulary) is an error: it would never be sampled as that token, or decode as
    nothing, and the responses would silently never end."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    configured = [configured] if isinstance(configured, int) else list(configured or [])
    n = len(tokenizer)
    for token in configured:
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < n:
            raise ModelError(f"generation_config.eos_token_id names {token!r}, which is not a token of the tokenizer "
                                 f"({n} tokens); fix generation_config.json or the tokenizer")
    return list(dict.fromkeys(ids + configured))
