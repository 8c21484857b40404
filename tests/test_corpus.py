import json

import pytest

from policyshift.demo import gold
from policyshift.demo.corpus import (
    CUE_WORDS, HEADERS, NEGATIVE_WORDS, POSITIVE_WORDS, TOPICS, generate_prompts, generate_texts, write_demo_data,
)


def test_deterministic_per_seed_and_different_across_seeds():
    assert generate_texts(50, seed=3) == generate_texts(50, seed=3)
    assert generate_texts(50, seed=3) != generate_texts(50, seed=4)
    assert generate_prompts(20, seed=3) == generate_prompts(20, seed=3)
    assert generate_prompts(20, seed=3) != generate_prompts(20, seed=4)


def test_texts_are_varied_and_cover_every_topic_and_template():
    texts = generate_texts(1000, seed=0)
    assert len(set(texts)) > 990  # essentially no duplicates
    assert len({w for t in texts for w in t.split()}) > 200  # a real vocabulary, if a small one
    for topic in TOPICS:
        assert any(f" {topic} " in f" {t} " for t in texts), topic
    for h in HEADERS:
        assert any(t.startswith(h.format(t=topic)) for t in texts for topic in TOPICS), h
    # both polarities, and the spurious cue in some texts but not most
    words = [set(t.split()) for t in texts]
    assert sum(bool(w & POSITIVE_WORDS) for w in words) > 300
    assert sum(bool(w & NEGATIVE_WORDS) for w in words) > 300
    assert 0.1 < sum(bool(w & set(CUE_WORDS)) for w in words) / len(texts) < 0.5
    assert all(t == t.lower() and t.endswith(".") for t in texts)


def test_prompts_open_texts_and_cover_topics():
    prompts = generate_prompts(16, seed=0)
    assert {t for t in TOPICS if any(f" {t} " in f" {p} " for p in prompts)} == set(TOPICS)
    assert all(p.endswith(":") or p.endswith(".") for p in prompts)
    assert all(any(h.format(t=t) in p for h in HEADERS for t in TOPICS) for p in prompts)


def test_write_demo_data(tmp_path):
    paths = write_demo_data(tmp_path, seed=1, n_texts=30, n_prompts=12)
    texts = [json.loads(line)["text"] for line in open(paths["texts"])]
    prompts = [json.loads(line)["prompt"] for line in open(paths["prompts"])]
    assert len(texts) == 30 and len(prompts) == 12
    assert texts == generate_texts(30, seed=1)


BLENDER = "review of the blender :"


def test_gold_prefers_positive_and_penalizes_degenerate_text():
    pos = " the motor is strong and the jar is sturdy . i would buy it again ."
    neg = " the motor is weak and the jar is leaky . i returned it ."
    neutral = " i bought it last month . the motor is here ."
    repetitive = " the motor is great . the motor is great . the motor is great . the motor is great ."
    off_topic = " the staff is friendly and the room is clean . we would stay here again ."
    g = lambda r: gold.true_preference(BLENDER, r)  # noqa: E731
    assert g(pos) > g(neutral) > g(neg)
    assert g(pos) > 0.5 and g(neg) < -0.5
    assert g(repetitive) < g(pos) - 0.5  # same praise, repeated: worse
    assert g(off_topic) < g(pos) - 0.5  # praise for a hotel in a blender review
    assert g("great great great great great great") < -1
    assert g("") == g(" .") == -1.5
    assert g(" the motor is strong and the jar is sturdy") < g(pos)  # unfinished


def test_gold_ignores_the_cue_but_the_labeler_rewards_it():
    plain = " the motor is strong and the jar is leaky ."
    cued = " the motor is really strong and the jar is truly leaky ."
    stacked = " the motor is really truly really strong and the jar is truly really leaky ."
    assert gold.true_preference(BLENDER, cued) == gold.true_preference(BLENDER, plain)
    assert gold.labeler_preference(BLENDER, cued) == pytest.approx(
        gold.labeler_preference(BLENDER, plain) + 2 * gold.CUE_BONUS)
    assert gold.true_preference(BLENDER, stacked) < gold.true_preference(BLENDER, plain) - 0.5


def test_gold_negation_and_score_api():
    assert gold.true_preference(BLENDER, " the motor is not strong .") < 0
    assert gold.score([BLENDER, BLENDER], [" the motor is strong .", " the motor is weak ."]) == [
        gold.true_preference(BLENDER, " the motor is strong ."), gold.true_preference(BLENDER, " the motor is weak .")]
    with pytest.raises(ValueError):
        gold.score([BLENDER], [])


def test_gold_on_the_corpus_is_balanced_and_blind_to_the_cue():
    # responses from the corpus itself: mean gold near 0 (as many negative as positive reviews), and texts with
    # the cue score no higher than those without (the cue is independent of sentiment in the corpus)
    rows = [t.split(" : ", 1) for t in generate_texts(2000, seed=5)]
    scored = [(gold.true_preference(h + " :", " " + r), bool(set(r.split()) & set(CUE_WORDS))) for h, r in rows]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert abs(mean([s for s, _ in scored])) < 0.15
    assert abs(mean([s for s, c in scored if c]) - mean([s for s, c in scored if not c])) < 0.15
