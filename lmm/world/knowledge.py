"""What the world knows that its pictures do not show: what each kind of object is for, where it is found and what it
is made of.

These facts reach a model only through text: the LMs of the zoo are pretrained on `fact_sentences` (lmm.world.zoo),
and the OKVQA / A-OKVQA analogs ask about them. To answer "What is the object on the left used for?" a model must
recognise the object in the image (vision) and recall the fact (the LLM). The instruction data asks about one half of
the (kind, property) pairs and the benchmarks about the other half (`split_facts`), so that a right answer on a
benchmark comes from the LLM's knowledge, not from a memorised training answer.
"""

from __future__ import annotations

import random

from lmm.world.scenes import KINDS

PROPERTIES = ("used for", "found in", "made of")
FACTS: dict[str, dict[str, str]] = {
    "ball": {"used for": "playing", "found in": "park", "made of": "rubber"},
    "box": {"used for": "storing", "found in": "attic", "made of": "cardboard"},
    "tent": {"used for": "camping", "found in": "forest", "made of": "canvas"},
    "kite": {"used for": "flying", "found in": "beach", "made of": "paper"},
    "ring": {"used for": "wearing", "found in": "bedroom", "made of": "gold"},
    "pill": {"used for": "healing", "found in": "pharmacy", "made of": "powder"},
    "badge": {"used for": "identifying", "found in": "office", "made of": "tin"},
    "nut": {"used for": "fastening", "found in": "garage", "made of": "steel"},
    "bucket": {"used for": "carrying", "found in": "farm", "made of": "plastic"},
    "bowl": {"used for": "eating", "found in": "kitchen", "made of": "clay"},
}
assert set(FACTS) == set(KINDS)

# Ways the pretraining text states a fact; {k} the kind, {v} the value.
_PHRASINGS = {
    "used for": ("A {k} is used for {v}.", "People use a {k} for {v}.", "The {k} is a thing for {v}.",
                 "What is a {k} used for? It is used for {v}."),
    "found in": ("A {k} is usually found in the {v}.", "You can find a {k} in the {v}.",
                 "Where is a {k} found? In the {v}.", "Most {k}s are kept in the {v}."),
    "made of": ("A {k} is made of {v}.", "The {k} is made from {v}.", "What is a {k} made of? It is made of {v}.",
                "Every {k} is made of {v}."),
}


def value(kind: str, prop: str) -> str:
    return FACTS[kind][prop]


def split_facts(seed: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(train, held out): every (kind, property) pair in exactly one half; each kind has properties in both halves
    where possible, so that both halves cover every kind."""
    rng = random.Random(f"facts-{seed}")
    train, held = set(), set()
    for kind in KINDS:
        props = list(PROPERTIES)
        rng.shuffle(props)
        held.add((kind, props[0]))
        train.update((kind, p) for p in props[1:])
    return train, held


def fact_sentences(rng: random.Random, repeats: int = 8) -> list[str]:
    """The knowledge text the LMs are pretrained on: every fact, in every phrasing, `repeats` times, shuffled."""
    out = [tmpl.format(k=kind, v=FACTS[kind][prop]) for kind in KINDS for prop in PROPERTIES
           for tmpl in _PHRASINGS[prop]] * repeats
    rng.shuffle(out)
    return out
