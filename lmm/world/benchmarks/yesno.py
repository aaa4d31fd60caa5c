"""The yes/no analogs: POPE (object hallucination, three negative samplings) and MME (paired questions per image),
in their real files (spec/eval.md 4.6, 4.7).

Every "no" is checked against the scene's ground truth: a POPE negative is a kind with no object in the image, an
MME "no" names a count, colour, word, relation or sum that the image does not hold.
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import combinations
from pathlib import Path

from lmm.data.formats import SHORT_ANSWER, YES_NO_SUFFIX
from lmm.world.benchmarks.common import Built, arithmetic_scene, save_scene, scene_with, until, write_jsonl
from lmm.world.questions import plural, referring_expression
from lmm.world.scenes import COLORS, KINDS, NUMBER_WORDS, WORDS, Scene, relations

POPE_SPLITS = ("adversarial", "popular", "random")  # the question file's order
POPE_ID_BASE = {"adversarial": 1, "random": 10000001, "popular": 20000001}  # LLaVA's question ids (eval.md 4.6)
# Kinds whose outlines are alike (round; pointed; box-like): the adversarial split's hardest negatives
_FAMILIES = (("ball", "ring", "nut", "bowl"), ("tent", "kite", "badge"), ("box", "pill", "bucket"))
LOOKALIKE = {k: tuple(x for fam in _FAMILIES if k in fam for x in fam if x != k) for k in KINDS}


def kinds_in(scene: Scene) -> list[str]:
    """The kinds with at least one object in the scene, in KINDS order."""
    return [k for k in KINDS if scene.count(k)]


def _pair(a: str, b: str) -> tuple[str, str]:
    """A co-occurrence key: the two kinds in KINDS order (as combinations() of kinds_in() yields them)."""
    return (a, b) if KINDS.index(a) < KINDS.index(b) else (b, a)


def pope_negatives(split: str, present: list[str], k: int, rng: random.Random, popular: list[str],
                   cooccur: Counter) -> list[str]:
    """k kinds absent from the image, drawn as POPE draws them: at random, the dataset's most frequent kinds first
    (popular), or the kinds most like and most often seen with the present ones first (adversarial)."""
    absent = [c for c in KINDS if c not in present]
    if split == "random":
        return rng.sample(absent, k)
    if split == "popular":
        return [c for c in popular if c in absent][:k]
    if split == "adversarial":
        def closeness(c: str) -> tuple[int, int, int]:
            return (-sum(c in LOOKALIKE[p] for p in present), -sum(cooccur[_pair(c, p)] for p in present),
                    KINDS.index(c))

        return sorted(absent, key=closeness)[:k]
    raise ValueError(f"unknown POPE split {split!r}")


def build_pope(d: Path, n: int, rng: random.Random) -> Built:
    """POPE: n questions over the three splits (n/3 each, half yes), up to three present kinds asked per image (the
    same ones in every split, as POPE does), with as many negatives; one question file, a label file per split."""
    pairs = max(1, n // 6)  # positives per split
    images: list[tuple[str, Scene, list[str]]] = []
    while sum(len(p) for _, _, p in images) < pairs:
        scene = scene_with(rng)
        present = kinds_in(scene)
        k = min(len(present), 3, pairs - sum(len(p) for _, _, p in images))
        name = f"COCO_val2014_{500 + len(images):012d}.png"
        images.append((name, scene, rng.sample(present, k)))
        save_scene(scene, d / "val2014" / name)
    freq = Counter(k for _, s, _ in images for k in kinds_in(s))
    popular = sorted(KINDS, key=lambda c: (-freq[c], KINDS.index(c)))
    cooccur = Counter(pair for _, s, _ in images for pair in combinations(kinds_in(s), 2))
    rows = []
    for split in POPE_SPLITS:
        labels = []
        for name, scene, positives in images:
            negatives = pope_negatives(split, kinds_in(scene), len(positives), rng, popular, cooccur)
            asked = [(p, "yes") for p in positives] + [(c, "no") for c in negatives]
            rng.shuffle(asked)
            for kind, label in asked:
                q = f"Is there a {kind} in the image?"
                rows.append({"question_id": POPE_ID_BASE[split] + len(labels), "image": name,
                             "text": f"{q}\n{SHORT_ANSWER}", "category": split})
                labels.append({"question_id": len(labels) + 1, "image": name, "text": q, "label": label})
        write_jsonl(d / "coco" / f"coco_pope_{split}.json", labels)
    write_jsonl(d / "llava_pope_test.jsonl", rows)
    return {"questions": len(rows), "images": len(images)}


# ------------------------------------------------------------------------------------------------------ MME
Pair = tuple[Scene, str, str]  # the scene, its "yes" question, its "no" question


def _existence(rng: random.Random) -> Pair:
    scene = scene_with(rng)
    present = kinds_in(scene)
    return (scene, f"Is there a {rng.choice(present)} in this image?",
            f"Is there a {rng.choice([k for k in KINDS if k not in present])} in this image?")


def _count_question(kind: str, n: int) -> str:
    if n == 1:
        return f"Is there exactly one {kind} in the image?"
    return f"Are there exactly {NUMBER_WORDS[n]} {plural(kind)} in the image?"


def _count(rng: random.Random) -> Pair:
    scene = scene_with(rng)
    kind = rng.choice(kinds_in(scene))
    n = scene.count(kind)
    wrong = rng.choice([m for m in (n - 1, n + 1, n + 2) if m >= 1])
    return scene, _count_question(kind, n), _count_question(kind, wrong)


_SAID = {"left of": "on the left of", "right of": "on the right of", "above": "above", "below": "below"}
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _position(rng: random.Random) -> Pair:
    def make(r: random.Random) -> Pair | None:
        scene = scene_with(r, lambda s: len(s.objects) >= 2)
        names = [referring_expression(scene, i) for i in range(len(scene.objects))]
        found = [(i, rel, j) for i, rel, j in relations(scene) if rel in _SAID and names[i] and names[j]]
        if not found:
            return None
        i, rel, j = r.choice(found)
        return (scene, f"Is {names[i]} {_SAID[rel]} {names[j]}?",
                f"Is {names[i]} {_SAID[_OPPOSITE[rel]]} {names[j]}?")

    return until(rng, make)


def _color(rng: random.Random) -> Pair:
    scene = scene_with(rng)
    o = rng.choice(scene.objects)
    other = rng.choice([c for c in COLORS if not scene.count(o.kind, c)])
    return scene, f"Is there a {o.colour} {o.kind} in this image?", f"Is there a {other} {o.kind} in this image?"


def _ocr(rng: random.Random) -> Pair:
    scene = scene_with(rng, lambda s: len(s.signs) == 1, sign_rate=1.0)
    word = scene.signs[0].word
    other = rng.choice([w for w in WORDS if w != word])
    return scene, f'Is the word "{word}" written in the image?', f'Is the word "{other}" written in the image?'


def _numerical(rng: random.Random) -> Pair:
    scene, x, y = arithmetic_scene(rng)
    wrong = rng.choice([v for v in (x + y - 2, x + y - 1, x + y + 1, x + y + 2) if v > 0])
    ask = "Is the answer to the arithmetic question in the image {}?"
    return scene, ask.format(x + y), ask.format(wrong)


MME_PAIRS = {"existence": _existence, "count": _count, "position": _position, "color": _color, "OCR": _ocr,
             "numerical_calculation": _numerical}  # five perception subtasks and one cognition subtask
_SPLIT_LAYOUT = ("color", "OCR")  # images/ + questions_answers_YN/ (the release has both layouts)


def build_mme(d: Path, n: int, rng: random.Random) -> Built:
    """MME: n questions, two per image (one "Yes", one "No", in random order) over six subtasks; the ground-truth
    txt files in the official release's layouts, LLaVA's question file with the short-answer prompt."""
    release = d / "MME_Benchmark_release_version"
    per_subtask = max(1, n // (2 * len(MME_PAIRS)))
    rows = []
    for category, make in MME_PAIRS.items():
        split = category in _SPLIT_LAYOUT
        for i in range(per_subtask):
            stem = f"{i:04d}"
            scene, yes_q, no_q = make(rng)
            image = f"{category}/images/{stem}.png" if split else f"{category}/{stem}.png"
            save_scene(scene, release / image)
            pair = [(yes_q, "Yes"), (no_q, "No")]
            rng.shuffle(pair)
            # the official files are inconsistent: some put two spaces before "Please"
            sep = YES_NO_SUFFIX if i % 3 else " " + YES_NO_SUFFIX
            txt = release / category / ("questions_answers_YN" if split else "") / f"{stem}.txt"
            txt.parent.mkdir(parents=True, exist_ok=True)
            txt.write_text("".join(f"{q}{sep}\t{a}\n" for q, a in pair), encoding="utf-8")
            rows += [{"question_id": f"{category}/{stem}.png", "image": image, "text": f"{q}\n{SHORT_ANSWER}",
                      "category": category} for q, _ in pair]
    write_jsonl(d / "llava_mme.jsonl", rows)
    return {"questions": len(rows), "images": len(rows) // 2}
