"""The short-answer analogs: VQAv2 (attributes), GQA (relations), VizWiz (with unanswerable questions) and TextVQA
(reading, with OCR tokens in the prompt), each in its real files (spec/eval.md 4.1-4.3, 4.5).

One question per image, so that questions are independent (a paired test between two models treats them so).
Answer types are dealt in a fixed cycle and yes/no answers by a fair coin (common.pick), so no analog can be passed
by a prior ("yes", "2") the way an unbalanced set could.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from lmm.data.formats import SHORT_ANSWER, UNANSWERABLE
from lmm.world.benchmarks.common import (
    Built,
    answer_type,
    human_answers,
    pick,
    save_scene,
    scene_with,
    until,
    write_json,
    write_jsonl,
)
from lmm.world.questions import QA, attribute_questions, reading_questions, relation_questions
from lmm.world.scenes import KINDS, Scene

# VQAv2 val's answer types are ~38% yes/no, ~12% number, ~50% other; this cycle deals 3 / 1 / 4 of every 8.
TYPE_CYCLE = ("other", "yes/no", "number", "other", "yes/no", "other", "yes/no", "other")
_KIND_WORD = re.compile(r"\b(" + "|".join(KINDS) + r")\b")
_SIGN_CHECK = "Is there a sign in the image?"  # every reading list has it; TextVQA asks about signs that are there


def _attribute_qa(rng: random.Random, want: str | None) -> tuple[Scene, QA]:
    def make(r: random.Random) -> tuple[Scene, QA] | None:
        scene = scene_with(r)
        qa = pick(attribute_questions(scene, r), r, want)
        return None if qa is None else (scene, qa)

    return until(rng, make)


def _question_type(question: str) -> str:
    """VQAv2's question_type: the question's opening words ("what colour", "how many", "is there")."""
    return " ".join(question.lower().rstrip("?").split()[:2])


def build_vqav2(d: Path, n: int, rng: random.Random) -> Built:
    """VQAv2 val2014 proxy: the official questions + annotations JSONs (ten human answers), COCO-style images."""
    questions, anns = [], []
    for i in range(n):
        image_id = 100 + i
        scene, (q, a) = _attribute_qa(rng, TYPE_CYCLE[i % len(TYPE_CYCLE)])
        save_scene(scene, d / "val2014" / f"COCO_val2014_{image_id:012d}.png")
        qid = image_id * 1000 + 1
        questions.append({"image_id": image_id, "question": q, "question_id": qid})
        anns.append({"question_id": qid, "image_id": image_id, "answer_type": answer_type(a),
                     "question_type": _question_type(q), "multiple_choice_answer": a,
                     "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": k + 1}
                                 for k, x in enumerate(human_answers(a, rng))]})
    write_json(d / "v2_OpenEnded_mscoco_val2014_questions.json",
               {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014", "questions": questions})
    write_json(d / "v2_mscoco_val2014_annotations.json", {"data_subtype": "val2014", "annotations": anns})
    return {"questions": n, "images": n}


def build_gqa(d: Path, n: int, rng: random.Random) -> Built:
    """GQA testdev-balanced: LLaVA's question file (string ids) + testdev_balanced_questions.json. Half the
    questions are open (query), half yes/no (verify), their answers balanced."""
    rows, gt = [], {}
    for i in range(n):
        want = "yes/no" if i % 2 else "other"

        def make(r: random.Random, want: str = want) -> tuple[Scene, QA] | None:
            scene = scene_with(r, lambda s: len(s.objects) >= 2)
            qas = relation_questions(scene, r)
            qa = pick(qas, r, want) or pick(qas, r)
            return None if qa is None else (scene, qa)

        scene, (q, a) = until(rng, make)
        image_id = f"n{100000 + i}"
        save_scene(scene, d / "data" / "images" / f"{image_id}.png")
        qid = str(20000000 + i)
        rows.append({"question_id": qid, "image": f"{image_id}.png", "text": f"{q}\n{SHORT_ANSWER}",
                     "category": "default"})
        gt[qid] = {"imageId": image_id, "question": q, "answer": a, "isBalanced": True,
                   "types": {"structural": "verify" if a in ("yes", "no") else "query"}}
    write_jsonl(d / "llava_gqa_testdev_balanced.jsonl", rows)
    write_json(d / "data" / "testdev_balanced_questions.json", gt)
    return {"questions": n, "images": n}


def _unanswerable(scene: Scene, rng: random.Random) -> str | None:
    """An attribute question about an object kind the image does not hold ("What colour is the kite?" without a
    kite): the wording of an answerable question, nothing in the picture to answer it with."""
    absent = [k for k in KINDS if not scene.count(k)]
    for q, a in attribute_questions(scene, rng):
        kinds = set(_KIND_WORD.findall(q))
        if answer_type(a) == "other" and len(kinds) == 1 and absent:
            return _KIND_WORD.sub(rng.choice(absent), q)
    return None


def build_vizwiz(d: Path, n: int, rng: random.Random) -> Built:
    """VizWiz val: LLaVA-style question file + the official val.json; one question in five is unanswerable."""
    rows, anns = [], []
    for i in range(n):
        image = f"VizWiz_val_{i:08d}.png"
        if i % 5 == 2:
            def make(r: random.Random) -> tuple[Scene, str] | None:
                scene = scene_with(r)
                q = _unanswerable(scene, r)
                return None if q is None else (scene, q)

            scene, q = until(rng, make)
            a, kind, answerable = "unanswerable", "unanswerable", 0
            answers = ["unanswerable"] * 10
            for k in rng.sample(range(1, 10), rng.randint(0, 2)):
                answers[k] = "unsuitable"
        else:
            scene, (q, a) = _attribute_qa(rng, TYPE_CYCLE[i % len(TYPE_CYCLE)])
            kind, answerable, answers = answer_type(a), 1, human_answers(a, rng)
        save_scene(scene, d / "val" / image)
        rows.append({"question_id": i, "image": image, "text": f"{q}\n{UNANSWERABLE}\n{SHORT_ANSWER}"})
        anns.append({"image": image, "question": q, "answerable": answerable, "answer_type": kind,
                     "answers": [{"answer": x, "answer_confidence": "yes"} for x in answers]})
    write_jsonl(d / "llava_val.jsonl", rows)
    write_json(d / "val.json", anns)
    return {"questions": n, "images": n}


# what an OCR engine makes of some outlines: real OCR tokens hold such false readings too
_GLYPHS = {"ball": "O", "ring": "O", "nut": "O", "tent": "A", "pill": "I", "kite": "V"}


def ocr_tokens(scene: Scene, rng: random.Random) -> list[str]:
    """A simulated OCR engine's tokens, in reading order (left to right): large print is read, small print is read
    half the time, otherwise misread by a letter or missed (so the OCR line does not replace reading the image at
    the higher resolution); some outlines are read as letters."""
    found: list[tuple[float, str]] = []
    for s in scene.signs:
        if s.print == "large" or rng.random() < 0.5:
            found.append((s.box[0], s.word))
        elif rng.random() < 0.5:
            k = rng.randrange(len(s.word))
            found.append((s.box[0], s.word[:k] + rng.choice("ILOEC") + s.word[k + 1:]))
    for o in scene.objects:
        if o.kind in _GLYPHS and rng.random() < 0.3:
            found.append((o.box[0], _GLYPHS[o.kind]))
    return [t for _, t in sorted(found)]


def build_textvqa(d: Path, n: int, rng: random.Random) -> Built:
    """TextVQA val: LLaVA's question file with the "Reference OCR token:" line, the official annotation JSON keyed
    by image id (question_id is the image id, as in LLaVA's file); half the questions ask for the sign's word."""
    rows, data = [], []
    for i in range(n):
        scene = scene_with(rng, lambda s: len(s.signs) == 1, sign_rate=1.0)
        qas = [qa for qa in reading_questions(scene, rng) if qa[0] != _SIGN_CHECK]
        word, want_word = scene.signs[0].word.lower(), rng.random() < 0.5
        pool = [qa for qa in qas if (qa[1] == word) == want_word] or qas
        q, a = rng.choice(pool)
        image_id = f"{rng.getrandbits(64):016x}"
        save_scene(scene, d / "train_images" / f"{image_id}.png")
        tokens = ocr_tokens(scene, rng)
        rows.append({"question_id": image_id, "image": f"{image_id}.png",
                     "text": f"{q}\nReference OCR token: {', '.join(tokens)}\n{SHORT_ANSWER}"})
        data.append({"image_id": image_id, "question": q, "question_id": i, "ocr_tokens": tokens,
                     "image_classes": [], "set_name": "val", "answers": human_answers(a, rng, max_disagree=2),
                     "sign_print": scene.signs[0].print})  # not in the real file: lets a report split by print size
    write_jsonl(d / "llava_textvqa_val_v051_ocr.jsonl", rows)
    write_json(d / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "dataset_version": "0.5.1",
                                              "dataset_split": "val", "data": data})
    return {"questions": n, "images": n}
