"""Old import path (0.1): the text statistics are policyshift.textstats (the trainer's metrics read them too)."""

from policyshift.textstats import distinct_n, mode_collapse_score, ngrams, repeated_ngram_rate, word_tokens  # noqa: F401
