import pytest

from policyshift.textstats import distinct_n, mode_collapse_score, ngrams, repeated_ngram_rate, word_tokens


def test_ngrams_in_order_and_empty_when_short():
    assert ngrams([1, 2, 3, 4], 3) == [(1, 2, 3), (2, 3, 4)]
    assert ngrams([1, 2], 3) == []
    with pytest.raises(ValueError):
        ngrams([1], 0)


def test_repeated_ngram_rate_counts_later_copies_only():
    assert repeated_ngram_rate([1, 2, 3, 4, 5], 3) == 0.0
    # a b c a b c: 4 trigrams (abc, bca, cab, abc) and only the last one was seen before
    assert repeated_ngram_rate(list("abcabc"), 3) == pytest.approx(1 / 4)
    # a loop: every trigram after the first is a repeat
    assert repeated_ngram_rate(["x"] * 12, 3) == pytest.approx(9 / 10)


def test_repeated_ngram_rate_short_sequences_are_zero():
    assert repeated_ngram_rate([], 3) == 0.0
    assert repeated_ngram_rate(["a", "a"], 3) == 0.0


def test_distinct_n_pools_across_sequences():
    assert distinct_n([[1, 2, 3], [4, 5, 6]], 2) == 1.0
    # the same response twice: half the bigrams are duplicates
    assert distinct_n([[1, 2, 3], [1, 2, 3]], 2) == pytest.approx(0.5)
    assert distinct_n([], 2) == 1.0
    assert distinct_n([[1], [2]], 2) == 1.0  # no bigrams at all


def test_mode_collapse_score_extremes():
    same = ["the answer is always this one sentence"] * 4
    assert mode_collapse_score(same) == pytest.approx(1.0)
    different = [
        "paris is the capital of france",
        "water boils at one hundred degrees",
        "the mitochondria powers the cell today",
        "seven times eight equals fifty six",
    ]
    assert mode_collapse_score(different) < 0.05


def test_mode_collapse_score_partial_overlap_and_edge_cases():
    a = "I love this movie so much"
    b = "I love this movie a lot"
    score = mode_collapse_score([a, b])
    assert 0.0 < score < 1.0
    assert mode_collapse_score(["only one"]) == 0.0
    assert mode_collapse_score([]) == 0.0
    assert mode_collapse_score(["Yes.", "yes ."]) == 1.0  # short responses compare whole, case-insensitively
    assert mode_collapse_score(["Yes.", "No."]) == 0.0


def test_word_tokens_keeps_punctuation():
    assert word_tokens("Hi!! You, there.") == ["hi", "!", "!", "you", ",", "there", "."]
