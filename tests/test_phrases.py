"""What the policy learned to say: the log-odds z against a hand computation, the planted "really"
stacking ranked first on demo-like text (a once-seen word does not outrank it), the favoured tokens."""

import math
import random
import re
from collections import Counter

import pytest

from policyshift.analysis.phrases import favoured_tokens, learned_phrases, log_odds_z, rank_phrases


def test_log_odds_z_by_hand():
    # n_p = n_r = 4, α_0 = 0.5·8 = 4, α_a = α_b = 4·4/8 = 2
    z = log_odds_z(Counter(a=3, b=1), Counter(a=1, b=3))
    delta = math.log(5 / 3) - math.log(3 / 5)
    assert z["a"] == pytest.approx((delta / math.sqrt(1 / 5 + 1 / 3), delta))
    assert z["b"] == pytest.approx((-delta / math.sqrt(1 / 5 + 1 / 3), -delta))
    assert log_odds_z(Counter(a=2), Counter(a=5)) == {}  # the only n-gram of both sides: odds undefined, nothing to rank


def _reviews(n, seed, stack):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        food, service = rng.choice(["good", "fine", "tasty", "warm"]), rng.choice(["quick", "kind", "slow", "polite"])
        adverb = rng.choice(["really ", "truly really ", "really really "]) if stack else ""
        out.append(f"The food was {adverb}{food} and the staff were {adverb}{service}.")
    return out


def test_planted_stacking_ranks_first_and_rare_noise_does_not():
    reference = _reviews(40, 0, stack=False)
    policy = _reviews(40, 1, stack=True)
    policy[3] += " Zebra."  # said once: a raw log-odds ratio would rank it high (never in the reference)
    rose, fell = rank_phrases(policy, reference)
    assert rose[0].text == "really"
    assert rose[0].count_reference == 0 and rose[0].share_policy == 1.0 and "really" in rose[0].example
    assert "truly really" in [p.text for p in rose]
    assert all(p.text != "zebra" for p in rose[:5])
    assert fell and all(p.z < 0 for p in fell)  # what "really" displaced: "was good", "were kind", ...
    assert fell[0].count_policy == 0 and re.search(r"\b(was|were) (good|fine|tasty|warm|quick|kind|slow|polite)\b", fell[0].text)


def test_learned_phrases_reads_samples_rows_and_favoured_tokens():
    samples = [{"step": 0, "model": "reference", "response": r} for r in _reviews(20, 0, False)]
    samples += [{"step": 5, "model": "policy", "response": r, "tokens": ["really", "good", "really"], "token_log_ratio": [2.0, 0.1, 1.0]}
                for r in _reviews(20, 2, True)]
    summary = learned_phrases(samples)
    assert summary["step"] == 5 and summary["rose"][0].text == "really"
    assert summary["tokens"][0] == ("really", pytest.approx(1.5), 40)
    assert favoured_tokens(samples[-2:], min_count=3) == [("really", pytest.approx(1.5), 4)]  # "good" seen twice: left out
    assert learned_phrases([s for s in samples if s["model"] == "policy"]) is None  # no reference to compare with


def _samples(stack: bool, n: int = 20):
    rows = [{"step": 0, "model": "reference", "prompt_id": i, "response": r} for i, r in enumerate(_reviews(n, 0, False))]
    return rows + [{"step": 10, "model": "policy", "prompt_id": i, "response": r} for i, r in enumerate(_reviews(n, 3, stack))]


def test_new_phrase_detector_fires_on_stacking_and_stays_silent_when_healthy():
    from policyshift.analysis.detectors import run_detectors

    fired = [f for f in run_detectors([], _samples(stack=True)) if f.detector == "new_phrase"]
    assert len(fired) == 1 and fired[0].severity == "warning" and fired[0].step == 10
    assert fired[0].evidence["phrases"][0]["text"] == "really" and "“really” (0% → 100% of responses)" in fired[0].message
    assert not [f for f in run_detectors([], _samples(stack=False)) if f.detector == "new_phrase"]  # same words, other draws
    assert not [f for f in run_detectors([], _samples(stack=True, n=6)) if f.detector == "new_phrase"]  # too few responses to judge
