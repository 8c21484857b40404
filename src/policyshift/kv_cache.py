"""The KV cache handed from one decoding step to the next, under the keyword the installed transformers takes."""

from __future__ import annotations


def cache_kwargs(out) -> dict:
    """{keyword: cache} for the next forward call from a forward output run with use_cache=True.
    transformers 5 renamed `past_key_values` to `cache` (input and output; the old name warns and goes away in
    5.40); earlier releases know only `past_key_values`. The output's own field name says which one the model
    takes, whatever the version, and a PeftModel passes either through to its base model."""
    for name in ("cache", "past_key_values"):
        if name in out and out[name] is not None:  # ModelOutput keys hold only the fields that were set
            return {name: out[name]}
    raise ValueError(f"{type(out).__name__} holds no KV cache (was the forward run with use_cache=True?)")
