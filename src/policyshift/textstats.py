"""Text statistics over generated responses: repetition, diversity, and cross-prompt sameness.

Pure functions on token lists / strings. Tokens may be anything hashable (token ids from the
trainer, decoded token strings from samples.jsonl, or words), so the trainer and the analysis
share one definition of every number they both log.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Hashable, Sequence

# Words and single punctuation marks: punctuation runs ("!!!", "...") are a typical signature of
# degenerate outputs, so they must count as tokens rather than vanish with the whitespace.
_WORD_RE = re.compile(r"\w+|[^\w\s]")


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
    """All contiguous n-grams of `tokens`, in order (empty when the sequence is shorter than n)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_rate(tokens: Sequence[Hashable], n: int = 3) -> float:
    """Fraction of the n-grams in `tokens` that already appeared earlier in the same sequence.

    0.0 for a sequence with no repeats (or shorter than n); approaches 1.0 for a response stuck in
    a loop. Counting *earlier* occurrences (not duplicates overall) makes the first copy of a phrase
    free, so one quoted repetition barely registers while a loop grows linearly with its length.
    """
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    seen: set[tuple] = set()
    repeats = 0
    for gram in grams:
        if gram in seen:
            repeats += 1
        else:
            seen.add(gram)
    return repeats / len(grams)


def distinct_n(sequences: Sequence[Sequence[Hashable]], n: int = 2) -> float:
    """Unique n-grams / total n-grams, pooled across all sequences (distinct-n, Li et al. 2016).

    Pooling across the batch (rather than averaging per sequence) is what makes it catch a policy
    that gives *every* prompt the same answer. 1.0 when there are no n-grams at all: an empty batch
    is not evidence of low diversity.
    """
    unique: set[tuple] = set()
    total = 0
    for sequence in sequences:
        grams = ngrams(sequence, n)
        total += len(grams)
        unique.update(grams)
    return 1.0 if total == 0 else len(unique) / total


def word_tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: a tokenizer-independent view of a response."""
    return _WORD_RE.findall(text.lower())


def _shingles(text: str, n: int) -> frozenset[tuple]:
    words = word_tokens(text)
    if len(words) < n:
        # Too short for an n-gram: the whole response is its one shingle, so two identical short
        # answers ("Yes.") still count as identical and two different ones as disjoint.
        return frozenset([tuple(words)])
    return frozenset(ngrams(words, n))


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are identical (1.0)."""
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


def mode_collapse_score(responses: Sequence[str], n: int = 3) -> float:
    """Mean pairwise Jaccard similarity of word n-gram sets of responses to *different* prompts.

    1.0 = every response is the same text; near 0 for a healthy policy, whose answers to different
    prompts share few word 3-grams. Pass one response per prompt: two samples for the same prompt
    are expected to be similar and would inflate the score. Fewer than two responses → 0.0 (there
    is no pair to compare, so no evidence of collapse).
    """
    shingle_sets = [_shingles(text, n) for text in responses]
    pairs = list(itertools.combinations(shingle_sets, 2))
    if not pairs:
        return 0.0
    return sum(jaccard(a, b) for a, b in pairs) / len(pairs)
