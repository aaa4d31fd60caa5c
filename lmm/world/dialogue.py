"""The world's long-answer text: LLaVA-Instruct's three kinds (conversation, detailed description, complex reasoning)
about a scene, and ShareGPT-like text-only dialogues.

These are the sources whose answers are sentences rather than VQA words, so a model trained on them learns to talk;
the format prompts of the short-answer sources are what teach it when not to (rung 2 of the ladder). Knowledge asked
about a scene uses only the (kind, property) pairs it is given (the training half); the text-only dialogues state
every fact, as the LMs' pretraining text does, since text is where the held-out half is learnt.
"""

from __future__ import annotations

import random

from lmm.world.knowledge import FACTS
from lmm.world.questions import (
    OUTLINES,
    article,
    count_word,
    listing,
    object_reference,
    plural,
    reference_without,
    referring_expression,
    where,
)
from lmm.world.scenes import KINDS, SIZES, WORDS, Scene, position, relations

Long = tuple[str, str]  # (question, answer in sentences)

# Stage-1 instructions (spec §2.1: a brief-description request with <image> before or after it); our own wording.
BRIEF = ("Give a short description of this picture.", "Describe the image in a few words.",
         "Summarize what this picture shows.", "What is in this image? Answer briefly.",
         "Write a brief caption for the picture.", "Tell me concisely what the image contains.",
         "Offer a quick summary of the scene.", "Sum up the contents of this image in one line.")
DETAIL = ("Describe this image in detail.", "Give a thorough description of the picture.",
          "Explain everything you can see in this image.", "What does this picture show? Be detailed.",
          "Write a detailed account of the scene in the image.", "Walk me through the contents of this image.")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def existence(scene: Scene, rng: random.Random) -> Long:
    """"Is there a {kind} in the image?" about a kind present or absent, even odds (when both exist), so that the
    answer is the picture's and not the question's: asked only about absent kinds, the question taught "no" as a
    prior to every model trained on it (experiments/world.md, ninth measurement)."""
    present, absent = scene.kinds()
    if present and (not absent or rng.random() < 0.5):
        kind = rng.choice(present)
        n = scene.count(kind)
        found = (f"there is {article(next(o.name for o in scene.objects if o.kind == kind))}" if n == 1
                 else f"there are {count_word(n)} {plural(kind, n)}")
        return f"Is there {article(kind)} in the image?", f"Yes, {found} in the image."
    kind = rng.choice(absent)
    return f"Is there {article(kind)} in the image?", f"No, there is no {kind} in the image."


def conversation(scene: Scene, rng: random.Random, facts: set[tuple[str, str]], turns: int = 4) -> list[Long]:
    """A multi-turn chat about the scene (LLaVA-Instruct "conversation"): questions answered in full sentences."""
    objs = scene.objects
    pool: list[Long] = []
    if objs:
        pool.append((rng.choice(("What objects can you see in the image?", "What is in this picture?")),
                     f"I can see {listing(scene, rng)} on a plain {scene.background} background."))
    for i, o in enumerate(objs):
        ref = reference_without(scene, i, "colour")
        if ref:
            pool.append((f"What colour is {ref}?", f"{_cap(ref)} is {o.colour}."))
        ref = referring_expression(scene, i)
        if ref:
            others = [j for j in range(len(objs)) if j != i and referring_expression(scene, j)]
            answer = f"{_cap(ref)} is {where(position(o.box))} of the image."
            rels = [(r, j) for (a, r, j) in relations(scene) if a == i and j in others and r in ("left of", "right of",
                                                                                                    "inside")]
            if rels:
                r, j = rng.choice(rels)
                answer += f" It is {'to the ' + r if r != 'inside' else 'inside'} {referring_expression(scene, j)}."
            pool.append((f"Where is {ref} in the picture?", answer))
        kref = object_reference(scene, i)
        if kref and (o.kind, "used for") in facts:
            use = FACTS[o.kind]["used for"]
            pool.append((f"What could {kref} be used for?", f"{_cap(kref)} is {article(o.kind)}, judging by its "
                         f"{OUTLINES[o.kind]} outline. {_cap(article(o.kind))} is used for {use}."))
    for kind in sorted({o.kind for o in objs}):
        n = scene.count(kind)
        verb = "is" if n == 1 else "are"
        pool.append((f"How many {plural(kind)} are in the picture?",
                     f"There {verb} {count_word(n)} {plural(kind, n)} in the picture."))
    pool.append(existence(scene, rng))
    for s in scene.signs:
        pool.append((rng.choice(("What does the sign say?", "Can you read the sign?")),
                     f"The sign says {s.word}. It is printed in {s.print} letters."))
    for i, j in scene.inside.items():
        pool.append((f"What is inside the {objs[j].kind}?",
                     f"There is a {objs[i].size} {objs[i].colour} {objs[i].kind} inside the {objs[j].kind}."))
    rng.shuffle(pool)
    seen, out = set(), []
    for q, a in pool:
        if q not in seen and len(out) < turns:
            seen.add(q)
            out.append((q, a))
    return out


def reasoning(scene: Scene, rng: random.Random, facts: set[tuple[str, str]]) -> Long | None:
    """One complex-reasoning question (LLaVA-Instruct "complex reasoning"): counting after a change, recognising a
    kind from its outline and recalling a fact, comparing sizes, why a sign is hard to read."""
    objs = scene.objects
    cands: list[Long] = []
    for i, o in enumerate(objs):
        ref = referring_expression(scene, i)
        if ref and len(objs) > 1:
            n = len(objs) - 1
            cands.append((f"If {ref} were taken away, how many objects would be left in the image?",
                          f"The image has {count_word(len(objs))} objects: {listing(scene, rng)}. Taking away {ref} "
                          f"leaves {count_word(n)} object{'s' if n != 1 else ''}."))
        kref = object_reference(scene, i)
        for prop, q, tail in (("used for", "What might someone do with {}?", "so someone might use it for {}."),
                              ("found in", "Where would {} most likely belong?", "so it likely belongs in the {}.")):
            if kref and (o.kind, prop) in facts:
                cands.append((q.format(kref), f"{_cap(kref)} has a {OUTLINES[o.kind]} outline, so it is "
                              f"{article(o.kind)}. {_cap(article(o.kind))} is {prop} "
                              f"{'the ' if prop == 'found in' else ''}{FACTS[o.kind][prop]}, "
                              + tail.format(FACTS[o.kind][prop])))
    order = list(SIZES)
    biggest = max((order.index(o.size) for o in objs), default=-1)
    top = [i for i, o in enumerate(objs) if order.index(o.size) == biggest]
    if len(objs) > 1 and len(top) == 1 and referring_expression(scene, top[0]):
        o = objs[top[0]]
        cands.append(("Which object is the biggest, and where is it?",
                      f"The biggest object is {referring_expression(scene, top[0])}: it is {o.size}, while the others "
                      f"are smaller. It is {where(position(o.box))} of the image."))
    for s in scene.signs:
        cands.append(("Would the sign be easy to read from far away? Why?",
                      f"The sign reads {s.word}. Its letters are {s.print}, so it would be "
                      f"{'easy' if s.print == 'large' else 'hard'} to read from far away."))
    return rng.choice(cands) if cands else None


def _knowledge_dialogue(rng: random.Random) -> list[Long]:
    kind = rng.choice(KINDS)
    f = FACTS[kind]
    turns = [(rng.choice((f"Tell me about {plural(kind)}.", f"What do you know about {plural(kind)}?")),
              f"{_cap(article(kind))} is used for {f['used for']}. It is usually found in the {f['found in']}, "
              f"and it is made of {f['made of']}."),
             (f"What is {article(kind)} made of?", f"{_cap(article(kind))} is made of {f['made of']}."),
             (f"Where would I find {article(kind)}?", f"You would usually find {article(kind)} in the "
                                                       f"{f['found in']}."),
             ("And what is it used for?", f"It is used for {f['used for']}.")]
    k = rng.randint(1, len(turns))
    return [turns[0], *rng.sample(turns[1:3], k=min(k - 1, 2))] + ([turns[3]] if k == 4 else [])


def _arithmetic_dialogue(rng: random.Random) -> list[Long]:
    out = []
    for _ in range(rng.randint(1, 3)):
        a, b = rng.randint(0, 5), rng.randint(0, 5)
        kind = rng.choice(KINDS)
        if rng.random() < 0.5:
            out.append((f"What is {count_word(a)} plus {count_word(b)}?",
                        f"{_cap(count_word(a))} plus {count_word(b)} is {count_word(a + b)}, that is {a + b}."))
        elif a >= b:
            out.append((f"I have {count_word(a)} {plural(kind, a)} and give away {count_word(b)}. How many are left?",
                        f"You have {count_word(a - b)} {plural(kind, a - b)} left, because {a} minus {b} is "
                        f"{a - b}."))
        else:
            out.append((f"If I have {count_word(a)} {plural(kind, a)} and get {count_word(b)} more, how many do I "
                        "have?", f"You would have {count_word(a + b)} {plural(kind, a + b)}: {a} plus {b} is "
                                 f"{a + b}."))
    return out


def _spelling_dialogue(rng: random.Random) -> list[Long]:
    word = rng.choice(WORDS)
    turns = [(f"How do you spell the word {word.lower()}?",
              f"It is spelled {'-'.join(word)}. In capital letters it is written {word}."),
             (f"How many letters are in {word}?", f"The word {word} has {count_word(len(word))} letters."),
             (f"What is the first letter of {word}?", f"The first letter of {word} is {word[0]}.")]
    return turns[: rng.randint(1, 3)]


CHAT = (("Hello! How are you today?", "Hello! I am doing well, thank you. How can I help you?"),
        ("Can you help me describe a picture?", "Of course. Show me the picture and I will describe the objects "
                                                "in it, their colours and where they are."),
        ("What kinds of questions can you answer?", "I can answer questions about the objects in a picture, their "
                                                    "colours, sizes and positions, read the words on signs, and "
                                                    "tell you what common objects are used for."),
        ("Thank you for your help!", "You are welcome! Let me know if there is anything else I can do."),
        ("What is your favourite colour?", "I do not have favourites, but many people like blue or green."),
        ("Can you count?", "Yes. I can count the objects in a picture, and I can add and subtract small numbers."))


def text_dialogue(rng: random.Random) -> list[Long]:
    """A ShareGPT-like text-only conversation: facts of the world (all of them), arithmetic in words, spelling the
    sign words, chit-chat."""
    first = rng.choice((_knowledge_dialogue, _arithmetic_dialogue, _spelling_dialogue, _knowledge_dialogue))(rng)
    if rng.random() < 0.4:
        first = [rng.choice(CHAT[:3]), *first]
    if rng.random() < 0.3:
        first.append(CHAT[3])
    return first
