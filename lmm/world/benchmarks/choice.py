"""The multiple-choice analogs: ScienceQA-IMG, MMBench (+ MMBench-CN, circular) and SEED-Bench, in their real files
(spec/eval.md 4.4, 4.8, 4.9). Questions come from questions.choice_question; a quarter ask about an object's
held-out fact (A-OKVQA style), which the LLM must know from pretraining.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from lmm.data.formats import MULTIPLE_CHOICE
from lmm.world.benchmarks.common import Built, png_base64, save_scene, scene_with, until, write_json, write_jsonl
from lmm.world.knowledge import FACTS, PROPERTIES
from lmm.world.questions import KNOWLEDGE_QUESTIONS, choice_question, plural
from lmm.world.scenes import COLORS, KINDS, NUMBER_WORDS, SIZES, Scene

LETTERS = "ABCDE"
Facts = set[tuple[str, str]]
Choice = tuple[str, list[str], int]


def answer_topic(gold: str) -> str:
    """What a choice question asks about, read off its gold option: colour, kind, size, number or a fact."""
    if gold in COLORS:
        return "colour"
    if gold in KINDS:
        return "kind"
    if gold in SIZES:
        return "size"
    if gold.isdigit():
        return "number"
    for prop in PROPERTIES:
        if gold in {FACTS[k][prop] for k in KINDS}:
            return prop
    return "other"


def _choice(rng: random.Random, facts: Facts | None) -> tuple[Scene, Choice]:
    def make(r: random.Random) -> tuple[Scene, Choice] | None:
        scene = scene_with(r)
        found = choice_question(scene, r, facts)
        return None if found is None else (scene, found)

    return until(rng, make)


def _trim(options: list[str], gold: int, keep: int, rng: random.Random) -> tuple[list[str], int]:
    """`keep` of the options, the gold one among them, in their order (real sets have 2-5 options)."""
    drop = set(rng.sample([k for k in range(len(options)) if k != gold], len(options) - keep))
    kept = [o for k, o in enumerate(options) if k not in drop]
    return kept, kept.index(options[gold])


# ------------------------------------------------------------------------------------------------------ ScienceQA
def _text_only(i: int, rng: random.Random, facts: Facts) -> tuple[str, list[str], int]:
    """A question without an image: a small sum, or a held-out fact about a named kind (the LLM alone)."""
    if i % 2 == 0:
        x, y = rng.randint(0, 5), rng.randint(0, 4)
        gold = NUMBER_WORDS[x + y]
        pool = [w for w in NUMBER_WORDS if w != gold]
        question = f"What is {NUMBER_WORDS[x]} plus {NUMBER_WORDS[y]}?"
    else:
        kind, prop = rng.choice(sorted(facts))
        gold = FACTS[kind][prop]
        pool = sorted({FACTS[k][prop] for k in KINDS} - {gold})
        question = rng.choice(KNOWLEDGE_QUESTIONS[prop]).format(ref=f"a {kind}")
    choices = [gold, *rng.sample(pool, rng.choice([1, 2, 3]))]
    rng.shuffle(choices)
    return question, choices, choices.index(gold)


def build_scienceqa(d: Path, n: int, rng: random.Random, facts: Facts) -> Built:
    """ScienceQA test: llava_test_CQM-A.json + problems.json; three items in four have an image (SQA-IMG), with
    2-4 choices; the rest are text-only."""
    records, problems, images = [], {}, 0
    for i in range(n):
        pid = str(1000 + i)
        hint = rng.choice(["", "", "Look at the picture."])
        if i % 4 == 3:
            question, choices, gold = _text_only(i // 4, rng, facts)
            image, hint = None, ""
        else:
            scene, (question, options, gold) = _choice(rng, facts if i % 4 == 2 else None)
            choices, gold = _trim(options, gold, rng.choice([2, 3, 4]), rng)
            image = f"{pid}/image.png"
            save_scene(scene, d / "images" / "test" / image)
            images += 1
        value = (f"Context: {hint}\n" if hint else "") + question + "".join(
            f"\n{LETTERS[k]}. {c}" for k, c in enumerate(choices))
        record = {"id": pid, "conversations": [{"from": "human", "value": ("<image>\n" + value) if image else value},
                                               {"from": "gpt", "value": LETTERS[gold]}]}
        if image:
            record["image"] = image
        records.append(record)
        problems[pid] = {"question": question, "choices": choices, "answer": gold, "hint": hint,
                         "image": "image.png" if image else None, "task": "closed choice", "split": "test"}
    write_json(d / "llava_test_CQM-A.json", records)
    write_json(d / "problems.json", problems)
    return {"questions": n, "images": images}


# ------------------------------------------------------------------------------------------------------ MMBench
# (L3 category, L2 category) by what is asked; MMBench's names where it has the ability, the world's otherwise
MMBENCH_CATEGORIES = {
    "kind": ("object_recognition", "coarse_perception"),
    "colour": ("attribute_recognition", "fine-grained_perception (single-instance)"),
    "size": ("attribute_comparison", "fine-grained_perception (cross-instance)"),
    "number": ("object_counting", "fine-grained_perception (cross-instance)"),
    "used for": ("function_reasoning", "attribute_reasoning"),
    "made of": ("physical_property_reasoning", "attribute_reasoning"),
    "found in": ("place_reasoning", "attribute_reasoning"),
    "other": ("other", "reasoning"),
}
MMBENCH_HEADER = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "source",
                  "split", "comment", "image")
_CN_WORDS = {
    **{"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
       "brown": "棕色", "pink": "粉色"},
    **{"small": "小", "medium": "中等大小的", "large": "大"},
    **{"ball": "球", "box": "盒子", "tent": "帐篷", "kite": "风筝", "ring": "戒指", "pill": "药丸", "badge": "徽章",
       "nut": "螺母", "bucket": "水桶", "bowl": "碗", "object": "物体"},
}
_SINGULAR = {plural(k): k for k in KINDS}
_CN_WHERE = {"on the left": "左边的", "on the right": "右边的", "at the top": "上面的", "at the bottom": "下面的"}
_REF = re.compile(r"^(?:the|a) (?P<words>[a-z ]+?)(?: (?P<where>on the left|on the right|at the top|at the bottom))?"
                  r"(?: inside (?P<container>the [a-z ]+))?$")


def _cn_ref(ref: str) -> str | None:
    """An English referring phrase of lmm.world.questions in Chinese ("the red ball on the left" -> 左边的红色球)."""
    m = _REF.match(ref)
    if not m or not all(w in _CN_WORDS for w in m["words"].split()):
        return None
    inside = ""
    if m["container"]:
        container = _cn_ref(m["container"])
        if container is None:
            return None
        inside = container + "里面的"
    return inside + _CN_WHERE.get(m["where"] or "", "") + "".join(_CN_WORDS[w] for w in m["words"].split())


_CN_QUESTIONS = (  # (English template as a regex, Chinese template)
    (r"What kind of object is (?P<ref>.+)\?", "{ref}是什么物体？"),
    (r"What colour is (?P<ref>.+)\?", "{ref}是什么颜色？"),
    (r"What size is (?P<ref>.+)\?", "{ref}有多大？"),
    (r"How many (?P<kinds>[a-z]+) are there\?", "图中有几个{kind}？"),
    (r"(?:What is (?P<ref>.+) used for|What do people use (?P<ref2>.+) for|What is the purpose of (?P<ref3>.+))\?",
     "{ref}有什么用途？"),
    (r"(?:Where is (?P<ref>.+) usually found|Where would you usually find (?P<ref2>.+)|Where might you see "
     r"(?P<ref3>.+))\?", "通常在哪里可以找到{ref}？"),
    (r"(?:What is (?P<ref>.+) made of|What material is (?P<ref2>.+) made of|What is (?P<ref3>.+) usually made "
     r"from)\?", "{ref}是用什么做的？"),
)


def to_chinese(question: str) -> str | None:
    """The question in Chinese when its template and phrase are known (None otherwise)."""
    for pattern, template in _CN_QUESTIONS:
        m = re.fullmatch(pattern, question)
        if not m:
            continue
        groups = m.groupdict()
        if groups.get("kinds"):
            kind = _SINGULAR.get(groups["kinds"])
            return None if kind is None else template.format(kind=_CN_WORDS[kind])
        ref = next(v for k, v in groups.items() if k.startswith("ref") and v)
        cn = _cn_ref(ref)
        return None if cn is None else template.format(ref=cn)
    return None


def build_mmbench(d: Path, n: int, rng: random.Random, facts: Facts, lang: str = "en") -> Built:
    """MMBench dev TSV: n base questions with 2-4 options, each followed by its circularly rotated copies (index +
    k * 1e6), base64 PNGs. CN: the question and hint in Chinese, the options left in English (the world's LLM knows
    no Chinese, so translated options would leave only chance to measure), and rotated rows naming the base row's
    image (VLMEvalKit's compact form)."""
    rows = ["\t".join(MMBENCH_HEADER)]
    for i in range(n):
        scene, (question, options, gold) = _choice(rng, facts if i % 4 == 3 else None)
        options, gold = _trim(options, gold, rng.choice([2, 3, 4, 4, 4]), rng)
        category, l2 = MMBENCH_CATEGORIES[answer_topic(options[gold])]
        hint = rng.choice(["", "", "The image shows objects on a plain background."])
        if lang == "cn":
            question = to_chinese(question) or question
            hint = "图中是纯色背景上的物体。" if hint else ""
        image = png_base64(scene)
        for k in range(len(options)):  # rotation k moves option j to position (j - k) mod len
            rot = options[k:] + options[:k]
            cells = {"index": str(i + k * 1_000_000), "question": question, "hint": hint or "nan",
                     "answer": LETTERS[rot.index(options[gold])], "category": category, "l2-category": l2,
                     "source": "tiny-world", "split": "dev", "comment": "nan",
                     "image": image if (k == 0 or lang == "en") else str(i)}
            cells.update({LETTERS[j]: (rot[j] if j < len(rot) else "nan") for j in range(4)})
            rows.append("\t".join(cells[c] for c in MMBENCH_HEADER))
    name = "mmbench_dev_20230712.tsv" if lang == "en" else "mmbench_dev_cn_20231003.tsv"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"questions": len(rows) - 1, "images": n}


# ------------------------------------------------------------------------------------------------------ SEED
SEED_DIMENSIONS = {"Instance Identity": 2, "Instance Attributes": 3, "Instances Counting": 5, "Visual Reasoning": 8,
                   "Action Recognition": 10}
_SEED_DIMENSION = {"kind": 2, "colour": 3, "size": 3, "number": 5}  # facts and anything else: Visual Reasoning


def build_seed(d: Path, n: int, rng: random.Random, facts: Facts) -> Built:
    """SEED-Bench: LLaVA's question file + SEED-Bench.json, four options; one item in five stands for a video
    question (dimension 10, its "middle frame" under SEED-Bench-video-image/)."""
    rows, items = [], []
    for i in range(n):
        video = i % 5 == 4
        scene, (q, options, gold) = _choice(rng, facts if i % 4 == 1 else None)
        image = f"SEED-Bench-video-image/v{i:05d}.png" if video else f"SEED-Bench-image/{i:06d}.png"
        save_scene(scene, d / image)
        dim = 10 if video else _SEED_DIMENSION.get(answer_topic(options[gold]), 8)
        qid = str(50000 + i)
        listed = "".join(f"\n{LETTERS[k]}. {o}" for k, o in enumerate(options))
        rows.append({"question_id": qid, "image": image, "category": "video" if video else "image",
                     "text": f"{q}{listed}\n{MULTIPLE_CHOICE}"})
        items.append({"question_id": qid, "question": q, "answer": LETTERS[gold], "question_type_id": dim,
                      "data_id": image, "data_type": "video" if video else "image",
                      **{f"choice_{LETTERS[k].lower()}": o for k, o in enumerate(options)}})
    write_jsonl(d / "llava-seed-bench.jsonl", rows)
    write_json(d / "SEED-Bench.json", {"questions": items, "question_type": SEED_DIMENSIONS})
    return {"questions": n, "images": n}
