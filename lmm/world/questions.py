"""Every question and answer the tiny world asks about a scene, each determined by the scene's ground truth.

The training sources (lmm.world.sources) and the benchmark analogs (lmm.world.benchmarks) both draw from here, so
that a benchmark asks the same kinds of question a source teaches, about other scenes. Rules every generator keeps:
- only objects that a phrase picks out are asked about (`referring_expression`, `object_reference`), so no answer
  depends on which of two look-alike objects the asker meant;
- answers are VQA-style: lower case, a single word or short phrase, numbers as digits; words read off a sign are
  answered in lower case too (VQA answer normalisation lower-cases anyway);
- a knowledge question names its object without its kind ("the red object"), so the kind must be seen in the
  picture and the fact recalled by the LLM;
- randomness only from the `random.Random` passed in: the same seed gives the same text.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from lmm.world.knowledge import FACTS, PROPERTIES
from lmm.world.scenes import BACKGROUNDS, COLORS, KINDS, NUMBER_WORDS, SIZES, WORDS, Scene, position, relations

QA = tuple[str, str]  # (question without any format prompt, short answer)
HAS_SIGN = "Is there a sign in the image?"
ORDER = list(SIZES)  # small < medium < large
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
DIRECTIONS = {"left of": "on the left", "right of": "on the right", "above": "at the top", "below": "at the bottom"}
# What a kind looks like in the picture (reasoning answers and descriptions explain a recognition with it).
OUTLINES = {"ball": "round", "box": "square", "tent": "triangular", "kite": "diamond-shaped", "ring": "ring-shaped",
            "pill": "capsule-shaped", "badge": "star-shaped", "nut": "hexagonal", "bucket": "bucket-shaped",
            "bowl": "half-round"}
KNOWLEDGE_QUESTIONS = {
    "used for": ("What is {ref} used for?", "What do people use {ref} for?", "What is the purpose of {ref}?"),
    "found in": ("Where is {ref} usually found?", "Where would you usually find {ref}?",
                 "Where might you see {ref}?"),
    "made of": ("What is {ref} made of?", "What material is {ref} made of?", "What is {ref} usually made from?"),
}


def plural(kind: str, n: int = 2) -> str:
    """The kind's noun for n of them ("box" -> "boxes")."""
    if n == 1:
        return kind
    return kind + ("es" if kind.endswith("x") else "s")


def article(phrase: str) -> str:
    """ "a red ball", "an orange tent"."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def count_word(n: int) -> str:
    """The number in words up to ten (captions and sentences spell counts out; short answers use digits)."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def where(pos: str) -> str:
    """position() in a phrase: "on the left", "at the top right", "in the center"."""
    if pos in ("left", "right"):
        return f"on the {pos}"
    return "in the center" if pos == "center" else f"at the {pos}"


def _phrase(scene: Scene, i: int, fields: tuple[str, ...], noun: str | None) -> str:
    """ "the <fields of i> <noun>" when it picks i out alone, else with a direction when i lies that way of every
    other object matching the same fields ("the ball on the left"); "" when neither does. noun None = the kind."""
    o = scene.objects[i]
    same = [j for j, p in enumerate(scene.objects) if all(getattr(p, f) == getattr(o, f) for f in fields)]
    words = " ".join([getattr(o, f) for f in fields if f != "kind"] + [noun or o.kind])
    if same == [i]:
        return f"the {words}"
    rels = set(relations(scene))
    for rel, suffix in DIRECTIONS.items():
        if all((i, rel, j) in rels for j in same if j != i):
            return f"the {words} {suffix}"
    return ""


def referring_expression(scene: Scene, i: int) -> str:
    """A phrase that picks object i out: `unique(i)`, else one with a direction or the container it is in; ""
    when none exists."""
    found = scene.unique(i)
    if found:
        return found
    if i in scene.inside and scene.unique(scene.inside[i]):
        return f"the {scene.objects[i].kind} inside {scene.unique(scene.inside[i])}"
    for fields in (("kind",), ("colour", "kind"), ("size", "colour", "kind")):
        found = _phrase(scene, i, fields, None)
        if found:
            return found
    return ""


def object_reference(scene: Scene, i: int) -> str:
    """A phrase that picks object i out WITHOUT naming its kind ("the red object", "the object on the left", "the
    object inside the box"), for questions whose answer is the kind or a fact about it; "" when none exists."""
    for fields in ((), ("colour",), ("size",), ("size", "colour")):
        found = _phrase(scene, i, fields, "object")
        if found:
            return found
    if i in scene.inside and scene.unique(scene.inside[i]):
        return f"the object inside {scene.unique(scene.inside[i])}"
    return ""


def reference_without(scene: Scene, i: int, attr: str) -> str:
    """A referring phrase for object i that does not give away `attr` (colour or size)."""
    for fields in (("kind",), *[(f, "kind") for f in ("size", "colour") if f != attr]):
        found = _phrase(scene, i, fields, None)
        if found:
            return found
    return ""


def _dedup(qas: list[QA], rng: random.Random, balance: bool = False) -> list[QA]:
    """Distinct questions (first answer kept), shuffled; with `balance` no more "no" than "yes" answers nor the other
    way round (at least one of each kept), so that a yes/no prior cannot answer them."""
    seen: dict[str, str] = {}
    for q, a in qas:
        seen.setdefault(q, a)
    out = list(seen.items())
    rng.shuffle(out)
    if not balance:
        return out
    n = {a: sum(x == a for _, x in out) for a in ("yes", "no")}
    cap = {"yes": max(1, n["no"]), "no": max(1, n["yes"])}
    kept = []
    for q, a in out:
        if a in cap:
            if cap[a] == 0:
                continue
            cap[a] -= 1
        kept.append((q, a))
    return kept


def listing(scene: Scene, rng: random.Random) -> str:
    """ "two red balls, a blue box and a green kite" (groups of colour and kind, in a random order)."""
    groups = Counter((o.colour, o.kind) for o in scene.objects)
    parts = [f"{count_word(n)} {c} {plural(k, n)}" if n > 1 else article(f"{c} {k}") for (c, k), n in groups.items()]
    rng.shuffle(parts)
    return join(parts)


def join(parts: list[str]) -> str:
    """ "a, b and c"."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene, rng: random.Random) -> str:
    """A brief caption (the BLIP-caption analog): the objects with their colours and counts, the sign's word."""
    things = listing(scene, rng)
    bg = scene.background
    if not things:
        text = rng.choice((f"an empty {bg} background", article(f"plain {bg} picture")))
    else:
        text = rng.choice((f"{things} on a {bg} background", article(f"{bg} background with {things}"), things,
                           f"a picture of {things}", f"{things} against a plain {bg} backdrop"))
    if scene.inside and rng.random() < 0.5:
        i, j = next(iter(scene.inside.items()))
        text += f", with {article(scene.objects[i].kind)} inside the {scene.objects[j].kind}"
    for s in scene.signs:
        text += rng.choice((f" and a sign that says {s.word}", f", with a sign that says {s.word}",
                            f" next to a sign reading {s.word}"))
    return text


def contrast_caption(text: str, rng: random.Random) -> str:
    """A hard negative for CLIP's pretraining: the caption with one thing it names changed (the sign's word, or one
    kind for a kind it does not name; a colour when it names neither, as an empty scene's caption). Within a batch of
    random scenes the colours and the background already tell captions apart; these negatives are told apart only
    by outline or print (NegCLIP's swapped captions, for the same failure)."""
    words = [w for w in WORDS if re.search(rf"\b{w}\b", text)]
    named = [k for k in KINDS if re.search(rf"\b{k}(e?s)?\b", text)]
    unnamed = [k for k in KINDS if k not in named]
    choices = [("word", w) for w in words] + ([("kind", k) for k in named] if unnamed else [])
    if not choices:
        colours = [c for c in [*COLORS, *BACKGROUNDS] if re.search(rf"\b{c}\b", text)]
        if not colours:
            raise ValueError(f"nothing to change in the caption {text!r}")
        old = rng.choice(colours)
        return re.sub(rf"\b{old}\b", rng.choice([c for c in COLORS if c not in colours]), text)
    what, old = rng.choice(choices)
    if what == "word":
        return re.sub(rf"\b{old}\b", rng.choice([w for w in WORDS if w != old]), text)
    new = rng.choice(unnamed)
    return re.sub(rf"\b{old}(e?s)?\b", lambda m: plural(new) if m.group(1) else new, text)


def detailed_description(scene: Scene) -> str:
    """Several sentences (the LLaVA-Instruct "detail" analog): every object and where it is, the relations between
    the nameable ones, what is inside what, and the sign."""
    objs = scene.objects
    n = len(objs)
    out = [f"The image shows {count_word(n)} object{'s' if n != 1 else ''} on a plain {scene.background} "
           "background."]
    order = sorted(range(n), key=lambda k: (objs[k].box[0], objs[k].box[1]))
    for k in order:
        o = objs[k]
        if k in scene.inside:
            c = objs[scene.inside[k]]
            out.append(f"A {o.size} {o.colour} {o.kind} sits inside the {c.size} {c.colour} {c.kind}.")
        else:
            out.append(f"There is a {o.size} {o.colour} {o.kind} {where(position(o.box))} of the image.")
    counts = Counter(o.kind for o in objs)
    for kind, c in sorted(counts.items()):
        if c > 1:
            out.append(f"There are {count_word(c)} {plural(kind)} in total.")
    for a, b in zip(order, order[1:], strict=False):
        ra, rb = referring_expression(scene, a), referring_expression(scene, b)
        if ra and rb and (a, "left of", b) in set(relations(scene)):
            out.append(f"{ra[0].upper()}{ra[1:]} is to the left of {rb}.")
    for s in scene.signs:
        out.append(f"A white sign {where(position(s.box))} reads {s.word} in {s.print} letters.")
    return " ".join(out)


def attribute_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """VQAv2 analog: colour and size of an object, counts, presence (with real negatives), the kind of object at a
    place, the background colour."""
    qas: list[QA] = [("What colour is the background?", scene.background)]
    for i, o in enumerate(scene.objects):
        ref = reference_without(scene, i, "colour")
        if ref:
            qas.append((rng.choice(("What colour is {}?", "What is the colour of {}?")).format(ref), o.colour))
        ref = reference_without(scene, i, "size")
        if ref:
            qas.append((f"What size is {ref}?", o.size))
        ref = object_reference(scene, i)
        if ref:
            qas.append((rng.choice(("What kind of object is {}?", "What is {}?")).format(ref), o.kind))
    present, absent = scene.kinds()
    asked = present + rng.sample(absent, k=min(2, len(absent)))
    for kind in asked:
        qas.append((f"How many {plural(kind)} are there?", str(scene.count(kind))))
        qas.append((rng.choice(("Is there {} in the image?", "Is there {}?")).format(article(kind)),
                    "yes" if kind in present else "no"))
    for colour in sorted({o.colour for o in scene.objects}):
        qas.append((f"How many {colour} objects are there?", str(scene.count(colour=colour))))
    for o in rng.sample(scene.objects, k=min(2, len(scene.objects))):
        other = rng.choice([c for c in COLORS if c != o.colour])
        qas.append((f"Is there {article(other + ' ' + o.kind)}?", "yes" if scene.count(o.kind, other) else "no"))
        qas.append((f"Is there {article(o.colour + ' ' + o.kind)}?", "yes"))
    if not scene.signs:
        qas.append(("How many objects are there?", str(len(scene.objects))))
    return _dedup(qas, rng, balance=True)


def relation_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """GQA analog: compositional questions over relations (what is left of X, is X bigger than Y, what is inside X,
    are there both X and Y), answers from the relations' ground truth."""
    rels = set(relations(scene))
    objs = scene.objects
    names = {i: referring_expression(scene, i) for i in range(len(objs))}
    named = [i for i, r in names.items() if r]
    qas: list[QA] = []
    for a in named:
        for rel in DIRECTIONS:
            targets = [i for i in range(len(objs)) if (i, rel, a) in rels]
            if len(targets) == 1:
                t = objs[targets[0]]
                qas.append((f"What colour is the object {rel} {names[a]}?", t.colour))
                qas.append((f"What kind of object is {rel} {names[a]}?", t.kind))
            for kind in sorted({o.kind for o in objs} - {objs[a].kind}):
                these = [i for i, o in enumerate(objs) if o.kind == kind]
                if any((i, rel, a) in rels for i in these):
                    qas.append((f"Is there a {kind} {rel} {names[a]}?", "yes"))
                elif all((i, OPPOSITE[rel], a) in rels for i in these):  # "no" only when plainly the other way
                    qas.append((f"Is there a {kind} {rel} {names[a]}?", "no"))
    for a in named:
        for b in named:
            if a >= b:
                continue
            for rel, back in (("left of", "right of"), ("above", "below")):
                if (a, rel, b) in rels or (a, back, b) in rels:  # apart along the axis: yes or no is certain
                    asked = rng.choice((rel, back))
                    qas.append((f"Is {names[a]} {asked} {names[b]}?", "yes" if (a, asked, b) in rels else "no"))
            if objs[a].size != objs[b].size:  # from the sizes: relations() leaves them out for what is inside
                bigger = ORDER.index(objs[a].size) > ORDER.index(objs[b].size)
                asked = rng.choice(("bigger than", "smaller than"))
                answer = "yes" if bigger == (asked == "bigger than") else "no"
                qas.append((f"Is {names[a]} {asked} {names[b]}?", answer))
                if objs[a].kind != objs[b].kind:
                    big = a if bigger else b
                    first, second = rng.sample([a, b], 2)
                    qas.append((f"Which is bigger, {names[first]} or {names[second]}?", objs[big].kind))
            qas.append((f"Are {names[a]} and {names[b]} the same colour?",
                        "yes" if objs[a].colour == objs[b].colour else "no"))
    for i, j in scene.inside.items():
        if names[j]:
            qas.append((f"What is inside {names[j]}?", objs[i].kind))
            qas.append((f"What colour is the object inside {names[j]}?", objs[i].colour))
        if names[i]:
            qas.append((f"What is {names[i]} inside of?", objs[j].kind))
    for c in named:
        if objs[c].kind in ("box", "bucket", "bowl") and c not in scene.inside.values():
            qas.append((f"Is there anything inside {names[c]}?", "no"))
        elif c in scene.inside.values():
            qas.append((f"Is there anything inside {names[c]}?", "yes"))
    kinds = sorted({o.kind for o in objs})
    others = [k for k in KINDS if k not in kinds]
    for _ in range(2):
        pair = rng.sample(kinds + rng.sample(others, k=min(2, len(others))), 2) if len(kinds) + len(others) > 1 else []
        if pair:
            both = all(scene.count(k) for k in pair)
            qas.append((f"Are there both a {pair[0]} and a {pair[1]}?", "yes" if both else "no"))
    return _dedup(qas, rng, balance=True)


def knowledge_questions(scene: Scene, rng: random.Random, facts: set[tuple[str, str]]) -> list[QA]:
    """OKVQA analog: what an object is used for / made of / where it is found, only for (kind, property) pairs in
    `facts`, naming the object without its kind (so the picture must say what it is)."""
    qas: list[QA] = []
    for i, o in enumerate(scene.objects):
        ref = object_reference(scene, i)
        if not ref:
            continue
        for prop in PROPERTIES:
            if (o.kind, prop) in facts:
                qas.append((rng.choice(KNOWLEDGE_QUESTIONS[prop]).format(ref=ref), FACTS[o.kind][prop]))
    return _dedup(qas, rng)


def reading_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """OCRVQA / TextVQA analog: the sign's word (answered in lower case), yes/no on a word (a real negative half of
    the time), its length and first letter; "Is there a sign?" for every scene."""
    qas: list[QA] = [(HAS_SIGN, "yes" if scene.signs else "no")]
    if len(scene.signs) == 1:
        word = scene.signs[0].word
        qas.append((rng.choice(("What word is written on the sign?", "What does the sign say?",
                                "What is written on the sign?")), word.lower()))
        asked = word if rng.random() < 0.5 else rng.choice([w for w in WORDS if w != word])
        qas.append((f"Does the sign say {asked}?", "yes" if asked == word else "no"))
        qas.append(("How many letters does the word on the sign have?", str(len(word))))
        qas.append(("What is the first letter of the word on the sign?", word[0].lower()))
        qas.append(("Is the sign's text printed in large or small letters?", scene.signs[0].print))
    return _dedup(qas, rng)


def choice_question(scene: Scene, rng: random.Random,
                    facts: set[tuple[str, str]] | None = None) -> tuple[str, list[str], int] | None:
    """A-OKVQA / MMBench analog: (question, 4 options, gold index), distractors of the same type. With `facts` the
    question is about a fact of an object (only pairs in `facts`), otherwise about what the picture shows. None
    when the scene allows no such question."""
    cands: list[tuple[str, str, list[str]]] = []
    for i, o in enumerate(scene.objects):
        ref = object_reference(scene, i)
        if facts is not None:
            for prop in PROPERTIES:
                if ref and (o.kind, prop) in facts:
                    pool = sorted({FACTS[k][prop] for k in KINDS} - {FACTS[o.kind][prop]})
                    cands.append((rng.choice(KNOWLEDGE_QUESTIONS[prop]).format(ref=ref), FACTS[o.kind][prop], pool))
            continue
        if ref:
            cands.append((f"What kind of object is {ref}?", o.kind, [k for k in KINDS if k != o.kind]))
        ref = reference_without(scene, i, "colour")
        if ref:
            cands.append((f"What colour is {ref}?", o.colour, [c for c in COLORS if c != o.colour]))
        ref = reference_without(scene, i, "size")
        if ref:
            cands.append((f"What size is {ref}?", o.size, [s for s in SIZES if s != o.size] + ["tiny"]))
    if facts is None:
        for kind in sorted({o.kind for o in scene.objects}):
            n = scene.count(kind)
            cands.append((f"How many {plural(kind)} are there?", str(n), [str(k) for k in range(7) if k != n]))
    if not cands:
        return None
    q, gold, pool = rng.choice(cands)
    options = [gold, *rng.sample(pool, 3)]
    rng.shuffle(options)
    return q, options, options.index(gold)
