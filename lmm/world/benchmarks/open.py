"""The open-ended analogs: MM-Vet (capabilities mixed, ground truth with <AND>/<OR>) and LLaVA-Bench-in-the-Wild
(conv / detail / complex against reference answers), in their real files (spec/eval.md 4.10, 4.11), graded by
lmm's judge (the deterministic RuleJudge offline).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from lmm.world.benchmarks.common import (
    Built,
    arithmetic_scene,
    pick,
    save_scene,
    scene_with,
    until,
    write_json,
    write_jsonl,
)
from lmm.world.benchmarks.yesno import kinds_in
from lmm.world.questions import (
    attribute_questions,
    detailed_description,
    knowledge_questions,
    plural,
    reading_questions,
    relation_questions,
)
from lmm.world.scenes import Scene

Facts = set[tuple[str, str]]
Item = tuple[Scene, str, str, list[str]]  # scene, question, ground truth, MM-Vet capabilities


def _from(gen: Callable[[Scene, random.Random], list], caps: list[str], want: str | None = None,
          **scene_kwargs: object) -> Callable[[random.Random], Item | None]:
    """An item maker asking one of gen's questions (of answer type `want` when there is one)."""

    def make(r: random.Random) -> Item | None:
        scene = scene_with(r, **scene_kwargs)
        qas = gen(scene, r)
        qa = pick(qas, r, want) or pick(qas, r)
        return None if qa is None else (scene, qa[0], qa[1], caps)

    return make


def _reading(r: random.Random) -> Item | None:
    scene = scene_with(r, lambda s: len(s.signs) == 1, sign_rate=1.0)
    q, a = r.choice([qa for qa in reading_questions(scene, r) if qa[0] != "Is there a sign in the image?"])
    return scene, q, a, (["ocr", "math"] if a.isdigit() else ["ocr"])


def _sum_on_sign(r: random.Random) -> Item:
    scene, x, y = arithmetic_scene(r)
    return scene, r.choice(("What is the result of the sum on the sign?", "Solve the sum written in the image.")), \
        str(x + y), ["ocr", "math"]


def _counting(r: random.Random) -> Item | None:
    scene = scene_with(r, lambda s: len(s.objects) >= 2)
    kinds = kinds_in(scene)
    if len(kinds) >= 2 and r.random() < 0.5:
        a, b = r.sample(kinds, 2)
        return (scene, f"How many {plural(a)} and {plural(b)} are there altogether?",
                str(scene.count(a) + scene.count(b)), ["rec", "math"])
    if r.random() < 0.5:
        return scene, "How many objects are there in the image in total?", str(len(scene.objects)), ["rec", "math"]
    qa = pick(attribute_questions(scene, r), r, "number")
    return None if qa is None else (scene, qa[0], qa[1], ["rec", "math"])


def _all_kinds(r: random.Random) -> Item:
    scene = scene_with(r, lambda s: len(kinds_in(s)) >= 2)
    return scene, r.choice(("Which kinds of objects are in the image?", "What objects can you see in the image?")), \
        "<AND>".join(kinds_in(scene)), ["rec"]


def _any_colour(r: random.Random) -> Item:
    scene = scene_with(r)
    colours = sorted({o.colour for o in scene.objects})
    return scene, "Name one colour of an object in the image.", "<OR>".join(colours), ["rec"]


def _describe(r: random.Random) -> Item:
    scene = scene_with(r, lambda s: 2 <= len(s.objects) <= 4)
    things = sorted({f"{o.colour} {o.kind}" for o in scene.objects})
    return scene, r.choice(("Describe the objects in the image.", "Write a sentence about what the picture shows.")), \
        "<AND>".join(things), ["rec", "gen"]


def mmvet_makers(facts: Facts) -> list[Callable[[random.Random], Item | None]]:
    """A cycle of 20 item makers: recognition 5, spatial 3, knowledge 3, OCR 4 (one a sum), counting 3, language
    generation 2; MM-Vet's own mix leans on recognition, OCR, knowledge and spatial awareness likewise."""
    rec = _from(attribute_questions, ["rec"], "other")
    spat = _from(relation_questions, ["rec", "spat"], None, ok=lambda s: len(s.objects) >= 2)
    know = _from(lambda s, r: knowledge_questions(s, r, facts), ["rec", "know"])
    return [rec, spat, know, _reading, _counting, _all_kinds, _describe, know, spat, rec, _sum_on_sign, _counting,
            _any_colour, _reading, know, spat, rec, _describe, _reading, _counting]


def build_mmvet(d: Path, n: int, rng: random.Random, facts: Facts) -> Built:
    """MM-Vet: llava-mm-vet.jsonl (raw questions, no format prompt) + mm-vet.json ({"v1_<id>": imagename,
    capability, question, answer}); one image per question. Knowledge items use the held-out facts."""
    makers = mmvet_makers(facts)
    rows, gt = [], {}
    for i in range(n):
        scene, q, a, caps = until(rng, makers[i % len(makers)])
        image = f"v1_{i}.png"
        save_scene(scene, d / "images" / image)
        rows.append({"question_id": i, "image": image, "text": q})
        gt[f"v1_{i}"] = {"imagename": image, "capability": caps, "question": q, "answer": a}
    write_jsonl(d / "llava-mm-vet.jsonl", rows)
    write_json(d / "mm-vet.json", gt)
    return {"questions": n, "images": n}


def _sentence(answer: str) -> str:
    return answer[:1].upper() + answer[1:] + "."


def build_llava_bench(d: Path, n: int, rng: random.Random, facts: Facts) -> Built:
    """LLaVA-Bench-in-the-Wild: n questions, three per image in turn (conv: an attribute question; detail: a full
    description; complex: a held-out fact), each image's detailed description as its caption (context.jsonl), and
    reference answers (answers_gpt4.jsonl)."""
    rows, contexts, refs = [], [], []
    for qid in range(n):
        k, category = qid // 3, ("conv", "detail", "complex")[qid % 3]
        image = f"{k:03d}.png"
        if qid % 3 == 0:
            def make(r: random.Random) -> tuple[Scene, tuple[str, str]] | None:
                scene = scene_with(r, lambda s: len(s.objects) >= 2)
                conv = pick(attribute_questions(scene, r), r, "other")
                know = pick(knowledge_questions(scene, r, facts), r)
                return None if conv is None or know is None else (scene, (conv, know))

            scene, (conv, know) = until(rng, make)
            save_scene(scene, d / "images" / image)
            contexts.append({"id": k, "image": image, "caption": detailed_description(scene)})
        if category == "conv":
            q, a = conv
        elif category == "detail":
            q, a = rng.choice(("Describe the image in detail.", "What is in this photo? Describe it.")), \
                detailed_description(scene)
        else:
            q, a = know
        rows.append({"question_id": qid, "image": image, "text": q, "category": category})
        refs.append({"question_id": qid, "text": a if category == "detail" else _sentence(a), "category": category,
                     "model_id": "gpt-4-0314", "metadata": {}})
    write_jsonl(d / "questions.jsonl", rows)
    write_jsonl(d / "context.jsonl", contexts)
    write_jsonl(d / "answers_gpt4.jsonl", refs)
    return {"questions": n, "images": len(contexts)}
