"""A synthetic review corpus for the demo: nothing can be downloaded, so the demo writes its own data.

Every text is a short review: a header that names the item ("review of the blender :"), an optional neutral
context sentence, two or three sentences that judge aspects of the item, and an optional closing sentence:

    review of the blender : i use it every morning . the motor is really strong and the jar is sturdy .
    i think the blades are dull . i would buy it again .

What varies, and why:
  * topic (8 items, each with its own aspects): the gold scorer checks that a response stays on topic.
  * sentiment (positive / negative / mixed, drawn per text): what the gold preference actually wants.
  * style: an "enthusiastic" text puts "really"/"truly" in front of its adjectives, a plain one sometimes
    "very"/"quite"/"pretty". The intensifier is drawn independently of the sentiment, so in the corpus it
    carries no information about quality. It is the *spurious cue*: the labeler that makes the preference
    pairs gives it a small bonus (see gold.py), the gold scorer does not.
  * templates, hedges ("to be honest ,") and context/closing sentences, so that a small LM has something to learn.

Everything is lowercase with spaced punctuation, which keeps the vocabulary small (a few hundred words).
A prompt is a text's opening (header, sometimes with the context sentence); the response continues it.
"""

import json
import random
from pathlib import Path

# topic -> aspects: (noun, is_plural, positive adjectives, negative adjectives).
# Each adjective has ONE polarity across all topics (checked below): the gold scorer uses them as its lexicon.
TOPICS = {
    "blender": [
        ("motor", False, ["strong", "powerful"], ["weak", "noisy"]),
        ("jar", False, ["sturdy", "spotless"], ["leaky", "fragile"]),
        ("blades", True, ["sharp", "durable"], ["dull", "rusty"]),
        ("lid", False, ["tight", "sturdy"], ["loose", "leaky"]),
        ("price", False, ["fair", "reasonable"], ["steep", "outrageous"]),
    ],
    "headphones": [
        ("sound", False, ["clear", "rich"], ["muddy", "tinny"]),
        ("bass", False, ["deep", "punchy"], ["weak", "boomy"]),
        ("cushions", True, ["soft", "comfortable"], ["stiff", "itchy"]),
        ("case", False, ["sturdy", "compact"], ["flimsy", "bulky"]),
        ("cable", False, ["durable", "flexible"], ["fragile", "tangled"]),
    ],
    "laptop": [
        ("screen", False, ["bright", "sharp"], ["dim", "blurry"]),
        ("keyboard", False, ["responsive", "quiet"], ["mushy", "noisy"]),
        ("battery", False, ["reliable", "durable"], ["weak", "unreliable"]),
        ("fan", False, ["quiet", "efficient"], ["loud", "noisy"]),
        ("hinge", False, ["solid", "smooth"], ["wobbly", "loose"]),
    ],
    "backpack": [
        ("straps", True, ["comfortable", "padded"], ["thin", "scratchy"]),
        ("zipper", False, ["smooth", "durable"], ["stiff", "flimsy"]),
        ("fabric", False, ["durable", "waterproof"], ["flimsy", "scratchy"]),
        ("pockets", True, ["roomy", "handy"], ["cramped", "useless"]),
    ],
    "coffee maker": [
        ("coffee", False, ["rich", "smooth"], ["bitter", "watery"]),
        ("carafe", False, ["sturdy", "elegant"], ["fragile", "leaky"]),
        ("timer", False, ["handy", "reliable"], ["confusing", "unreliable"]),
        ("buttons", True, ["intuitive", "responsive"], ["confusing", "stiff"]),
    ],
    "hotel": [
        ("room", False, ["spacious", "clean"], ["cramped", "dirty"]),
        ("staff", False, ["friendly", "helpful"], ["rude", "slow"]),
        ("bed", False, ["comfortable", "soft"], ["lumpy", "stiff"]),
        ("breakfast", False, ["delicious", "fresh"], ["bland", "stale"]),
        ("location", False, ["central", "convenient"], ["remote", "noisy"]),
    ],
    "restaurant": [
        ("food", False, ["delicious", "fresh"], ["bland", "greasy"]),
        ("service", False, ["quick", "attentive"], ["slow", "careless"]),
        ("waiter", False, ["friendly", "polite"], ["rude", "careless"]),
        ("portions", True, ["generous", "hearty"], ["tiny", "stingy"]),
        ("dessert", False, ["delicious", "creamy"], ["stale", "bland"]),
    ],
    "phone": [
        ("camera", False, ["sharp", "impressive"], ["grainy", "blurry"]),
        ("battery", False, ["reliable", "durable"], ["weak", "unreliable"]),
        ("screen", False, ["vivid", "bright"], ["dim", "grainy"]),
        ("speaker", False, ["clear", "powerful"], ["tinny", "muffled"]),
        ("charger", False, ["fast", "compact"], ["slow", "bulky"]),
    ],
}
# adjectives that fit any aspect, so the same aspect is not always described the same way
GENERIC_POSITIVE = ["great", "excellent", "good", "nice", "fantastic", "wonderful", "lovely", "perfect"]
GENERIC_NEGATIVE = ["bad", "poor", "terrible", "awful", "disappointing", "mediocre", "horrible", "lousy"]

# "really" / "truly" are the spurious cue (see module docstring); "very" / "quite" / "pretty" are ordinary
CUE_WORDS = ("really", "truly")
PLAIN_INTENSIFIERS = ("very", "quite", "pretty")
HEDGES = ("i think ", "to be honest , ", "overall , ", "honestly , ", "in my opinion , ", "i feel like ")

PRODUCT_CONTEXT = ["i bought it last month .", "i have had it for a year .", "it was a gift .",
                   "i use it every day .", "i got it on sale ."]
CONTEXT = {
    "blender": PRODUCT_CONTEXT + ["i use it every morning .", "i make smoothies with it ."],
    "headphones": PRODUCT_CONTEXT + ["i wear them on the train .", "i use them at the gym ."],
    "laptop": PRODUCT_CONTEXT + ["i use it for work .", "i take it to school ."],
    "backpack": PRODUCT_CONTEXT + ["i carry it to work .", "i took it on a trip ."],
    "coffee maker": PRODUCT_CONTEXT + ["i make coffee every morning .", "we use it at the office ."],
    "hotel": ["we stayed here for two nights .", "we came for a weekend .", "i stayed here for work .",
              "we stayed here last summer ."],
    "restaurant": ["we came here for dinner .", "i went with friends .", "we had lunch here .",
                   "we came for a birthday ."],
    "phone": PRODUCT_CONTEXT + ["i switched from an older model .", "i use it for photos ."],
}
_PRODUCT_CLOSERS = {
    "pos": ["i would buy it again .", "highly recommended .", "five stars .", "i love it .", "worth every penny ."],
    "neg": ["i would not buy it again .", "i returned it .", "not recommended .", "one star .",
            "a waste of money ."],
    "mixed": ["it is okay overall .", "three stars .", "mixed feelings .", "it does the job ."],
}
CLOSERS = {t: _PRODUCT_CLOSERS for t in TOPICS}
CLOSERS["hotel"] = {
    "pos": ["we would stay here again .", "highly recommended .", "five stars .", "we loved it ."],
    "neg": ["we would not stay here again .", "not recommended .", "one star .", "never again ."],
    "mixed": ["it is okay overall .", "three stars .", "mixed feelings .", "fine for one night ."],
}
CLOSERS["restaurant"] = {
    "pos": ["we will be back .", "highly recommended .", "five stars .", "we loved it ."],
    "neg": ["we will not be back .", "not recommended .", "one star .", "never again ."],
    "mixed": ["it is okay overall .", "three stars .", "mixed feelings .", "fine for a snack ."],
}
# one polarity per closing sentence, for the gold scorer (a "mixed" closer is neutral)
CLOSER_POLARITY = {c: {"pos": 1, "neg": -1, "mixed": 0}[p] for t in CLOSERS for p, cs in CLOSERS[t].items() for c in cs}

HEADERS = ("review of the {t} :", "my review of the {t} :", "{t} review :", "a short review of the {t} :")

POSITIVE_WORDS = set(GENERIC_POSITIVE) | {a for asp in TOPICS.values() for _, _, pos, _ in asp for a in pos}
NEGATIVE_WORDS = set(GENERIC_NEGATIVE) | {a for asp in TOPICS.values() for _, _, _, neg in asp for a in neg}
assert not POSITIVE_WORDS & NEGATIVE_WORDS, POSITIVE_WORDS & NEGATIVE_WORDS


def _prompt(rng: random.Random, topic: str) -> str:
    header = rng.choice(HEADERS).format(t=topic)
    if rng.random() < 0.5:  # half the texts open with a neutral context sentence, part of the prompt
        header += " " + rng.choice(CONTEXT[topic])
    return header


def _adjective(rng: random.Random, positive: bool, aspect, style: str) -> str:
    _, _, pos, neg = aspect
    words = pos if positive else neg
    generic = GENERIC_POSITIVE if positive else GENERIC_NEGATIVE
    adj = rng.choice(words) if rng.random() < 0.7 else rng.choice(generic)
    # the intensifier is independent of the polarity: in the corpus it says nothing about quality
    if style == "enthusiastic" and rng.random() < 0.6:
        adj = rng.choice(CUE_WORDS) + " " + adj
    elif style == "plain" and rng.random() < 0.2:
        adj = rng.choice(PLAIN_INTENSIFIERS) + " " + adj
    return adj


def _sentence(rng: random.Random, aspects: list, polarities: list, style: str) -> str:
    """One judging sentence about one or two aspects (consumed from the front of `aspects`)."""
    a = aspects.pop()
    pa = polarities.pop()
    j = _adjective(rng, pa, a, style)
    be, was = ("are", "were") if a[1] else ("is", "was")
    if aspects and rng.random() < 0.4:  # two aspects in one sentence
        b = aspects.pop()
        pb = polarities.pop()
        k = _adjective(rng, pb, b, style)
        be2, was2 = ("are", "were") if b[1] else ("is", "was")
        join = " and " if pb == pa else " , but "  # "but" only where the judgement turns
        if rng.random() < 0.5:
            s = f"the {a[0]} {be} {j}{join}the {b[0]} {be2} {k} ."
        else:
            s = f"the {a[0]} {was} {j}{join}the {b[0]} {was2} {k} ."
    else:
        s = rng.choice([
            f"the {a[0]} {be} {j} .",
            f"the {a[0]} {was} {j} .",
            f"i found the {a[0]} {j} .",
            f"the {a[0]} {'seem' if a[1] else 'seems'} {j} .",
            f"the {a[0]} felt {j} .",
        ])
    if rng.random() < 0.2:
        s = rng.choice(HEDGES) + s
    return s


def _text(rng: random.Random) -> str:
    topic = rng.choice(list(TOPICS))
    sentiment = rng.choices(["pos", "neg", "mixed"], weights=[0.4, 0.4, 0.2])[0]
    style = "enthusiastic" if rng.random() < 0.35 else "plain"
    n_aspects = rng.randint(2, 4)
    aspects = rng.sample(TOPICS[topic], n_aspects)
    if sentiment == "mixed":
        polarities = [rng.random() < 0.5 for _ in aspects]
    else:  # a mostly-positive review can still have one complaint (and vice versa)
        polarities = [(sentiment == "pos") != (rng.random() < 0.1) for _ in aspects]
    parts = [_prompt(rng, topic)]
    while aspects:
        parts.append(_sentence(rng, aspects, polarities, style))
    if rng.random() < 0.7:
        parts.append(rng.choice(CLOSERS[topic][sentiment]))
    return " ".join(parts)


def generate_texts(n: int, seed: int) -> list[str]:
    """n review texts (prompt + body), deterministic for a seed."""
    rng = random.Random(seed)
    return [_text(rng) for _ in range(n)]


def generate_prompts(n: int, seed: int) -> list[str]:
    """n review openings ("review of the hotel :" or "... : we came for a weekend ."), deterministic for a seed.
    Topics are cycled so every topic appears once n >= 8."""
    rng = random.Random(seed)
    topics = list(TOPICS)
    rng.shuffle(topics)
    return [_prompt(rng, topics[i % len(topics)]) for i in range(n)]


def write_demo_data(out_dir, seed: int = 0, n_texts: int = 4000, n_prompts: int = 512) -> dict:
    """Write texts.jsonl ({"text"} rows, SFT data) and prompts.jsonl ({"prompt"} rows, PPO/pair prompts).
    Prompts use a different seed stream from the texts so they are not just the texts' openings."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"texts": out / "texts.jsonl", "prompts": out / "prompts.jsonl"}
    with open(paths["texts"], "w") as f:
        for t in generate_texts(n_texts, seed):
            f.write(json.dumps({"text": t}) + "\n")
    with open(paths["prompts"], "w") as f:
        for p in generate_prompts(n_prompts, seed + 1_000_003):
            f.write(json.dumps({"prompt": p}) + "\n")
    return {k: str(v) for k, v in paths.items()}
