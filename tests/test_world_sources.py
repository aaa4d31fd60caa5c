"""The tiny world's training sources (lmm.world.sources) and its question generators (lmm.world.questions): the
carve finds every source by rule, every record is one LLaVA trains on, every answer is the ground truth's (checked by
an independent reading of the questions), and the same seed writes the same bytes."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lmm.data.formats import CAPTION, MULTIPLE_CHOICE, REGION_TO_BOX, REGION_TO_TEXT, SHORT_ANSWER
from lmm.data.records import parse_record, record_problem, repair_record
from lmm.data.sources.carve import SOURCES, classify
from lmm.world import questions as Q
from lmm.world.knowledge import FACTS, fact_sentences, split_facts
from lmm.world.lm_text import pretraining_text
from lmm.world.scenes import COLORS, KINDS, SIZES, WORDS, Obj, Scene, box_text, sample_scene
from lmm.world.sources import MIX_JSON, OKVQA_IDS, POOLS, PRETRAIN_JSON, Images, build_sources

SIZES_SMALL = {"lcs558k": 12, "llava_instruct": 12, "sharegpt": 6, "vqav2": 10, "okvqa": 8, "gqa": 10, "ocrvqa": 8,
               "aokvqa": 10, "textcaps": 6, "refcoco": 10, "vg": 8}
TRAIN, HELD = split_facts(0)


def _build(root: Path, sizes: dict[str, int] = SIZES_SMALL, seed: int = 0) -> dict:
    return build_sources(root, sizes, seed, TRAIN, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    _build(root)
    return root


def _mix(root: Path) -> list[dict]:
    return json.loads((root / MIX_JSON).read_text())


def _by_source(root: Path) -> dict[str, list[dict]]:
    ids = set((root / OKVQA_IDS).read_text().split())
    out: dict[str, list[dict]] = {s: [] for s in SOURCES}
    for r in _mix(root):
        out[classify(r, ids)].append(r)
    return out


def _scene_of(rel: str, seed: int = 0) -> Scene:
    """The ground truth of a written image, from its path (an image is a function of seed, pool and index)."""
    pool = next(p for p, (folder, _) in POOLS.items() if rel.startswith(folder + "/") and p != "lcs")
    return Images(Path("."), seed).scene(pool, int(Path(rel).stem))


def _pairs(rec: dict) -> list[tuple[str, str]]:
    turns = rec["conversations"]
    return [(turns[k]["value"].replace("<image>", "").strip(), turns[k + 1]["value"]) for k in range(0, len(turns), 2)]


# --- an independent reading of the questions: what a phrase denotes, and what the right answer is ---------------
_PHRASE = re.compile(rf"the (?:({'|'.join(SIZES)}) )?(?:({'|'.join(COLORS)}) )?(\w+)"
                     r"(?: (on the left|on the right|at the top|at the bottom))?")
_APART = {"on the left": lambda a, b: a[2] <= b[0], "on the right": lambda a, b: a[0] >= b[2],
          "at the top": lambda a, b: a[3] <= b[1], "at the bottom": lambda a, b: a[1] >= b[3]}


def denotes(scene: Scene, phrase: str) -> list[int]:
    """The objects a referring phrase fits, read from the boxes (not from lmm.world.questions)."""
    m = re.fullmatch(r"the (\w+|object) inside (.+)", phrase)
    if m:
        return [i for i, j in scene.inside.items() if [j] == denotes(scene, m[2]) and m[1] in ("object",
                                                                                                scene.objects[i].kind)]
    m = re.fullmatch(_PHRASE, phrase)
    assert m, phrase
    size, colour, kind, direction = m.groups()
    fits = [i for i, o in enumerate(scene.objects) if (size in (None, o.size)) and (colour in (None, o.colour))
            and kind in ("object", o.kind)]
    if direction:
        fits = [i for i in fits if all(_APART[direction](scene.objects[i].box, scene.objects[j].box)
                                       for j in fits if j != i)]
    return fits


def _apart(scene: Scene, i: int, rel: str, j: int) -> bool:
    return _APART[_SIDE[rel]](scene.objects[i].box, scene.objects[j].box)


_SIDE = {"left of": "on the left", "right of": "on the right", "above": "at the top", "below": "at the bottom"}
_ORDER = list(SIZES)
_PLURALS = {"balls": "ball", "boxes": "box", "tents": "tent", "kites": "kite", "rings": "ring", "pills": "pill",
            "badges": "badge", "nuts": "nut", "buckets": "bucket", "bowls": "bowl"}


def _idx(scene: Scene, phrase: str) -> int:
    found = denotes(scene, phrase)
    assert len(found) == 1, f"{phrase!r} picks out {found}, not one object"
    return found[0]


def one(scene: Scene, phrase: str) -> Obj:
    return scene.objects[_idx(scene, phrase)]


def _in_relation(scene: Scene, rel: str, phrase: str) -> Obj:
    a = _idx(scene, phrase)
    found = [i for i in range(len(scene.objects)) if i != a and _apart(scene, i, rel, a)]
    assert len(found) == 1, (rel, phrase, found)
    return scene.objects[found[0]]


def oracle(scene: Scene, q: str) -> str | None:
    """The ground-truth answer of a question this reading understands (None for the others), from the scene's
    objects and boxes alone."""
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    obj = lambda p: one(scene, p)  # noqa: E731
    size = lambda p: _ORDER.index(obj(p).size)  # noqa: E731
    word = scene.signs[0].word if scene.signs else ""
    for prop, templates in Q.KNOWLEDGE_QUESTIONS.items():
        for t in templates:
            m = re.fullmatch(re.escape(t).replace(re.escape("{ref}"), "(.+)"), q)
            if m:
                return FACTS[obj(m[1]).kind][prop]
    rules = [
        (r"Is there a sign in the image\?", lambda m: yes(scene.signs)),
        (r"What colour is the background\?", lambda m: scene.background),
        (r"How many objects are there\?", lambda m: str(len(scene.objects))),
        (r"How many (\w+) objects are there\?", lambda m: str(scene.count(colour=m[1]))),
        (r"How many (\w+) are there\?", lambda m: str(scene.count(_PLURALS[m[1]]))),
        (r"Is there an? (\w+)(?: in the image)?\?", lambda m: yes(scene.count(m[1]))),
        (r"Is there an? (\w+) (\w+)\?", lambda m: yes(scene.count(m[2], m[1]))),
        (r"Is there an? (\w+) (left of|right of|above|below) (the .+)\?", lambda m: yes(any(
            _apart(scene, i, m[2], _idx(scene, m[3])) for i, o in enumerate(scene.objects) if o.kind == m[1]))),
        (r"Is there anything inside (the .+)\?", lambda m: yes(_idx(scene, m[1]) in scene.inside.values())),
        (r"What is inside (the .+)\?", lambda m: next(scene.objects[i].kind for i, j in scene.inside.items()
                                                      if j == _idx(scene, m[1]))),
        (r"What is (the .+) inside of\?", lambda m: scene.objects[scene.inside[_idx(scene, m[1])]].kind),
        (r"What colour is the object (left of|right of|above|below) (the .+)\?",
         lambda m: _in_relation(scene, m[1], m[2]).colour),
        (r"What kind of object is (left of|right of|above|below) (the .+)\?",
         lambda m: _in_relation(scene, m[1], m[2]).kind),
        (r"What (?:colour is|is the colour of) (the .+)\?", lambda m: obj(m[1]).colour),
        (r"What size is (the .+)\?", lambda m: obj(m[1]).size),
        (r"What is the first letter of the word on the sign\?", lambda m: word[0].lower()),
        (r"How many letters does the word on the sign have\?", lambda m: str(len(word))),
        (r"Does the sign say (\w+)\?", lambda m: yes(m[1] == word)),
        (r"Is the sign's text printed in large or small letters\?", lambda m: scene.signs[0].print),
        (r"What word is written on the sign\?|What does the sign say\?|What is written on the sign\?",
         lambda m: word.lower()),
        (r"What (?:kind of object )?is (the .+)\?", lambda m: obj(m[1]).kind),
        (r"Is (the .+) (left of|right of|above|below) (the .+)\?",
         lambda m: yes(_apart(scene, _idx(scene, m[1]), m[2], _idx(scene, m[3])))),
        (r"Is (the .+) (bigger|smaller) than (the .+)\?",
         lambda m: yes((size(m[1]) - size(m[3])) * (1 if m[2] == "bigger" else -1) > 0)),
        (r"Which is bigger, (the .+) or (the .+)\?",
         lambda m: obj(m[1]).kind if size(m[1]) > size(m[2]) else obj(m[2]).kind),
        (r"Are (the .+) and (the .+) the same colour\?", lambda m: yes(obj(m[1]).colour == obj(m[2]).colour)),
        (r"Are there both an? (\w+) and an? (\w+)\?", lambda m: yes(scene.count(m[1]) and scene.count(m[2]))),
    ]
    for pattern, answer in rules:
        m = re.fullmatch(pattern, q)
        if m:
            return answer(m)
    return None


# --- the question generators against hand-built scenes and the oracle ----------------------------------------------
def _scene(*objs: tuple[str, str, str, tuple], signs: tuple = (), inside: dict | None = None) -> Scene:
    return Scene(192, 192, "white", [Obj(*o) for o in objs], list(signs), inside or {})


def test_relations_and_counts_of_a_hand_built_scene():
    """A red ball left of a large blue box (with a kite inside), two more balls: the answers are the scene's."""
    scene = _scene(("ball", "red", "small", (0.05, 0.4, 0.2, 0.55)), ("box", "blue", "large", (0.5, 0.3, 0.9, 0.7)),
                   ("kite", "pink", "small", (0.62, 0.42, 0.78, 0.58)),
                   ("ball", "green", "medium", (0.1, 0.75, 0.3, 0.95)),
                   ("ball", "red", "medium", (0.3, 0.02, 0.45, 0.2)), inside={2: 1})
    rel = dict(Q.relation_questions(scene, random.Random(0)))
    expected = {"What is inside the box?": "kite", "What is the kite inside of?": "box",
                "What colour is the object below the small red ball?": "green",
                "What kind of object is above the kite?": "ball", "Is there a box left of the small red ball?": "no",
                "Is there a box right of the small red ball?": "yes", "Is the box bigger than the kite?": "yes",
                "Is the small red ball smaller than the box?": "yes", "Which is bigger, the kite or the box?": "box",
                "Is the kite right of the green ball?": "yes", "Is the small red ball right of the kite?": "no",
                "Are the small red ball and the medium red ball the same colour?": "yes"}
    assert {q: rel.get(q) for q in expected} == expected
    attr = dict(Q.attribute_questions(scene, random.Random(1)))
    expected = {"How many balls are there?": "3", "How many red objects are there?": "2", "Is there a tent?": "no",
                "How many tents are there?": "0", "What size is the red ball on the left?": "small",
                "What colour is the ball on the right?": "red", "What is the pink object?": "kite",
                "How many objects are there?": "5", "Is there a yellow box?": "no"}
    assert {q: attr.get(q) for q in expected} == expected
    assert Q.referring_expression(scene, 0) == "the small red ball"
    assert Q.object_reference(scene, 2) == "the pink object"
    two = _scene(("ball", "red", "small", (0.05, 0.4, 0.2, 0.55)), ("box", "blue", "large", (0.5, 0.3, 0.9, 0.7)))
    rel = dict(Q.relation_questions(two, random.Random(2)))
    assert rel["What colour is the object left of the box?"] == "red"
    assert rel["What kind of object is right of the ball?"] == "box"
    assert {a for q, a in rel.items() if q.startswith("Which is bigger")} == {"box"}
    same = _scene(("ball", "red", "small", (0.05, 0.4, 0.2, 0.55)), ("ball", "red", "small", (0.6, 0.4, 0.75, 0.55)))
    assert [Q.referring_expression(same, i) for i in (0, 1)] == ["the ball on the left", "the ball on the right"]


def test_textured_kinds_show_in_one_patch_and_add_no_colour():
    """Drawn with textures, an object's pixels are its colour or the background's, never a third; every 8 x 8 patch
    of a 64-px square shows each patterned kind differently (so one patch tells the kind); untextured is solid."""
    import numpy as np

    from lmm.world.scenes import BACKGROUNDS, render, texture

    scene = Scene(192, 192, "white", [Obj("box", "red", "large", (0.2, 0.2, 0.8, 0.8))])
    inner = (slice(45, 147), slice(45, 147))
    solid, textured = np.array(render(scene)), np.array(render(scene, textured=True))
    assert (solid[inner] == COLORS["red"]).all()
    red, blank = (textured[inner] == COLORS["red"]).all(-1), (textured[inner] == BACKGROUNDS["white"]).all(-1)
    assert (red | blank).all() and 0.3 < red.mean() < 0.7
    assert (red == red[:, :1]).all()  # the box's stripes run across: each row all colour or all background
    nested = Scene(192, 192, "white", [Obj("box", "red", "large", (0.2, 0.2, 0.8, 0.8)),
                                       Obj("tent", "blue", "small", (0.4, 0.4, 0.6, 0.6))], inside={1: 0})
    tent = np.array(render(nested, textured=True))[105:113, 90:102]  # inside the tent, near its base
    blue, white = (tent == COLORS["blue"]).all(-1), (tent == BACKGROUNDS["white"]).all(-1)
    assert (blue | white).all() and blue.any() and white.any()  # cut through to the background, not the box
    patterned = [k for k in KINDS if k not in ("ball", "ring")]
    assert texture("ball", 64, 64).all() and texture("ring", 64, 64).all()
    grids = {k: texture(k, 64, 64) for k in patterned}
    for r in range(0, 64, 8):
        for c in range(0, 64, 8):
            patches = {grids[k][r:r + 8, c:c + 8].tobytes() for k in patterned}
            assert len(patches) == len(patterned), (r, c)


def test_drawing_sets_how_render_draws_until_it_ends():
    import numpy as np

    from lmm.world.scenes import drawing, render

    scene = Scene(192, 192, "white", [Obj("box", "red", "large", (0.2, 0.2, 0.8, 0.8))])
    plain, textured = (np.array(render(scene, textured=t)) for t in (False, True))
    assert (plain != textured).any()
    with drawing(True):
        assert (np.array(render(scene)) == textured).all()
        assert (np.array(render(scene, textured=False)) == plain).all()  # an explicit flag wins
        with drawing(False):
            assert (np.array(render(scene)) == plain).all()
        assert (np.array(render(scene)) == textured).all()  # the outer setting is back
    assert (np.array(render(scene)) == plain).all()


def test_patch_objects_follow_the_square_the_tower_sees():
    """A 3:2 picture, an object at its far left: padded to a square (LLaVA) it is in the left column of patches at
    the middle rows; centre-cropped (CLIP's processor) it is cut off; the container's inner object wins its patch."""
    from lmm.world.scenes import patch_objects

    left = Obj("ball", "red", "medium", (0.0, 0.3, 0.15, 0.7))
    box, inner = Obj("box", "blue", "large", (0.3, 0.2, 0.7, 0.8)), Obj("nut", "green", "small", (0.45, 0.4, 0.55, 0.6))
    scene = Scene(240, 160, "white", [left, inner, box], inside={1: 2})  # the inner nut listed before its box
    pad = patch_objects(scene, 4, "pad")  # a 240-px square, the picture in its rows 40..200; cells of 60 px
    assert [pad[4 * r] for r in range(4)] == [None, left, left, None]
    assert [pad[4 * r + c] for r in (1, 2) for c in (1, 2)] == [box] * 4 and pad[1] is None
    crop = patch_objects(scene, 4, "crop")  # the picture's middle 160 x 160 (x 40..200); cells of 40 px
    assert left not in crop and [crop[4 * r + c] for r in (1, 2) for c in (1, 2)] == [box] * 4
    fine = patch_objects(scene, 8, "crop")  # cells of 20 px: centres at x 110, 130 and y 70, 90 fall on the nut
    assert [fine[8 * r + c] for r in (3, 4) for c in (3, 4)] == [inner] * 4  # drawn on top of its box, so it wins
    assert fine[8 * 2 + 3] is box
    with pytest.raises(ValueError, match="aspect"):
        patch_objects(scene, 4, "stretch")


def test_every_answer_agrees_with_the_ground_truth():
    """Over many random scenes, every question has the answer the independent reading gives (a new question form
    must be taught to `oracle`), every answer is VQA-style, and every referring phrase picks out its object only."""
    for s in range(300):
        rng = random.Random(s)
        scene = sample_scene(rng)
        qas = (Q.attribute_questions(scene, rng) + Q.relation_questions(scene, rng) + Q.reading_questions(scene, rng)
               + Q.knowledge_questions(scene, rng, TRAIN | HELD))
        for q, a in qas:
            assert a == oracle(scene, q), (q, a, scene)
            assert a == a.lower() and a.strip() == a and len(a.split()) <= 2, a
        for i in range(len(scene.objects)):
            for phrase in (Q.referring_expression(scene, i), Q.object_reference(scene, i)):
                assert not phrase or denotes(scene, phrase) == [i], (phrase, scene)


def test_knowledge_questions_use_only_the_given_facts_and_hide_the_kind():
    scene = _scene(("ball", "red", "small", (0.05, 0.4, 0.2, 0.55)), ("tent", "blue", "large", (0.5, 0.3, 0.9, 0.7)))
    qas = Q.knowledge_questions(scene, random.Random(0), {("ball", "used for")})
    assert [a for _, a in qas] == ["playing"] and all("ball" not in q and "tent" not in q for q, _ in qas)
    for s in range(200):
        rng = random.Random(s)
        scene = sample_scene(rng)
        for q, a in Q.knowledge_questions(scene, rng, TRAIN):
            assert any(FACTS[k][p] == a for k, p in TRAIN) and not any(k in q for k in KINDS), q
        mc = Q.choice_question(scene, rng, TRAIN)
        if mc is not None:
            q, options, gold = mc
            assert len(set(options)) == 4 and oracle(scene, q) == options[gold]
            assert any(FACTS[k][p] == options[gold] for k, p in TRAIN)


def test_choice_questions_put_the_gold_answer_at_the_gold_index():
    for s in range(200):
        rng = random.Random(s)
        scene = sample_scene(rng)
        mc = Q.choice_question(scene, rng)
        if mc is not None:
            q, options, gold = mc
            truth = oracle(scene, q)
            assert len(set(options)) == 4 and options[gold] == truth, (q, options, gold)


# --- the written sources --------------------------------------------------------------------------------------------
def test_the_carve_finds_every_source_and_okvqa_by_its_ids(world):
    mix = _mix(world)
    ids = (world / OKVQA_IDS).read_text().split()
    assert len(ids) == SIZES_SMALL["okvqa"] == len(set(ids))
    assert Counter(classify(r, set(ids)) for r in mix) == Counter({s: SIZES_SMALL[s] for s in SOURCES})
    start = 0  # the file holds the sources one after the other: each record is classified as the one it was written as
    for s in SOURCES:
        assert {classify(r, set(ids)) for r in mix[start:start + SIZES_SMALL[s]]} == {s}
        start += SIZES_SMALL[s]
    without = Counter(classify(r) for r in mix)
    assert without["vqav2"] == SIZES_SMALL["vqav2"] + SIZES_SMALL["okvqa"] and "okvqa" not in without


def test_every_record_is_one_llava_trains_on(world):
    pretrain = json.loads((world / PRETRAIN_JSON).read_text())
    assert len(pretrain) == SIZES_SMALL["lcs558k"]
    for records, root in ((pretrain, world / "LLaVA-Pretrain" / "images"), (_mix(world), world)):
        assert len({r["id"] for r in records}) == len(records)
        for k, raw in enumerate(records):
            rec, repairs = repair_record(parse_record(raw, "world", k))
            assert not repairs and record_problem(rec, root) is None, (raw, record_problem(rec, root))
            if rec.image is not None:
                assert re.fullmatch(r"<image>\n.+|.+\n<image>", rec.conversations[0].value, re.S)
                with Image.open(root / rec.image) as img:
                    img.verify()
    assert all(re.fullmatch(r"\d{5}/\d{9}\.png", r["image"]) and r["image"][:5] == r["id"][:5] for r in pretrain)


def test_each_source_has_its_folder_prompts_and_answers(world):
    by = _by_source(world)
    folders = {"llava_instruct": "coco/train2017/", "vqav2": "coco/train2017/", "okvqa": "coco/train2017/",
               "aokvqa": "coco/train2017/", "refcoco": "coco/train2017/", "gqa": "gqa/images/",
               "ocrvqa": "ocr_vqa/images/", "textcaps": "textvqa/train_images/", "vg": "vg/VG_100K/"}
    for s, recs in by.items():
        for r in recs:
            assert (s == "sharegpt") == ("image" not in r) and r.get("image", "").startswith(folders.get(s, ""))
            humans = [t["value"] for t in r["conversations"][::2]]
            if s in ("vqav2", "okvqa", "gqa", "ocrvqa"):
                assert all(h.endswith("\n" + SHORT_ANSWER) for h in humans)
            if s == "aokvqa":
                assert len(humans) == 1 and humans[0].endswith("\n" + MULTIPLE_CHOICE)
            if s == "textcaps":
                assert humans == ["<image>\n" + CAPTION]
                assert _scene_of(r["image"]).signs[0].word in r["conversations"][1]["value"]
            if s in ("refcoco", "vg"):
                assert all(h.replace("<image>\n", "").startswith((REGION_TO_BOX, REGION_TO_TEXT)) for h in humans)
                assert len(r["conversations"]) < 10 if s == "refcoco" else len(humans) <= 10
    for s in ("vqav2", "gqa", "okvqa", "ocrvqa"):  # the short answers are the ground truth's
        for r in by[s]:
            scene = _scene_of(r["image"])
            for q, a in _pairs(r):
                truth = oracle(scene, q.removesuffix("\n" + SHORT_ANSWER))
                assert truth == a, (s, q, a, truth)
    okvqa_answers = {a for r in by["okvqa"] for _, a in _pairs(r)}
    assert okvqa_answers and okvqa_answers <= {FACTS[k][p] for k, p in TRAIN}


def test_region_answers_are_the_boxes_of_the_objects(world):
    by = _by_source(world)
    asked = 0
    for source in ("refcoco", "vg"):
        for r in by[source]:
            scene = _scene_of(r["image"])
            boxes = {box_text(o.box): i for i, o in enumerate(scene.objects)}
            for q, a in _pairs(r):
                if q.startswith(REGION_TO_BOX):
                    phrase = q.removeprefix(REGION_TO_BOX).strip().removesuffix(".")
                    sign = re.fullmatch(r"the sign that says (\w+)", phrase)
                    assert a == (box_text(scene.signs[0].box) if sign else box_text(one(scene, phrase).box)), (q, a)
                    continue
                box = q.removeprefix(REGION_TO_TEXT).strip().removesuffix(".")
                if box not in boxes:
                    assert box == box_text(scene.signs[0].box) and a == f"a sign that says {scene.signs[0].word}"
                elif source == "refcoco":  # the expression, which picks the boxed object out
                    assert denotes(scene, "the " + a) == [boxes[box]], (q, a)
                else:  # what is there
                    o = scene.objects[boxes[box]]
                    assert a == Q.article(f"{o.size} {o.colour} {o.kind}"), (q, a)
                asked += 1
    assert asked >= SIZES_SMALL["refcoco"]


def test_the_aokvqa_letter_is_the_gold_option_in_every_shuffle(world):
    recs = _by_source(world)["aokvqa"]
    groups: dict[str, list[tuple[list[str], str]]] = {}
    for r in recs:
        (q, letter), = _pairs(r)
        lines = q.removesuffix("\n" + MULTIPLE_CHOICE).split("\n")
        options = [line[3:] for line in lines[1:]]
        assert [line[:3] for line in lines[1:]] == ["A. ", "B. ", "C. ", "D. "]
        truth = oracle(_scene_of(r["image"]), lines[0])
        assert options["ABCD".index(letter)] == truth, (q, letter, truth)
        groups.setdefault(r["image"] + lines[0], []).append((options, letter))
    for copies in groups.values():
        golds = {opts["ABCD".index(letter)] for opts, letter in copies}
        assert len(golds) == 1 and len({frozenset(o) for o, _ in copies}) == 1
        assert sorted(letter for _, letter in copies) == list("ABCD")[: len(copies)] or len(copies) < 4
    assert sum(len(c) == 4 for c in groups.values()) >= 2


def test_a_source_that_no_image_suits_fails_instead_of_looping(tmp_path):
    with pytest.raises(ValueError, match="okvqa"):
        build_sources(tmp_path, {"okvqa": 2}, 0, set(), progress=False)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_seed_writes_the_same_bytes_and_sources_are_independent(world, tmp_path):
    again = tmp_path / "again"
    _build(again)
    assert _hashes(again) == _hashes(world)
    other = tmp_path / "other"
    _build(other, seed=1)
    assert _hashes(other) != _hashes(world)
    resized = tmp_path / "resized"
    _build(resized, {**SIZES_SMALL, "vqav2": 3, "gqa": 15})
    a, b = _by_source(world), _by_source(resized)
    assert len(b["vqav2"]) == 3 and len(b["gqa"]) == 15
    for s in SOURCES:
        if s not in ("vqav2", "gqa"):
            assert a[s] == b[s], s
    ha, hb = _hashes(world), _hashes(resized)
    assert all(ha[p] == hb[p] for p in ha.keys() & hb.keys() if not p.endswith(".json"))
    assert {p for p in ha if not p.startswith(("gqa/", "coco/", MIX_JSON))} == \
        {p for p in hb if not p.startswith(("gqa/", "coco/", MIX_JSON))}


def test_stage1_and_stage2_images_are_distinct_scenes_and_images_are_shared(world):
    pretrain = json.loads((world / PRETRAIN_JSON).read_text())
    lcs = {(world / PRETRAIN_JSON).parent / "images" / r["image"] for r in pretrain}
    stage2 = {world / r["image"] for r in _mix(world) if "image" in r}
    assert not {hashlib.sha256(p.read_bytes()).digest() for p in lcs} & {hashlib.sha256(p.read_bytes()).digest()
                                                                        for p in stage2}
    per_image = Counter(r["image"] for r in _mix(world) if "image" in r)
    assert len(stage2) == len(per_image) < sum(per_image.values())


def test_pretraining_text_holds_every_fact_and_no_image_placeholder():
    texts = pretraining_text(random.Random(7), 600)
    assert texts == pretraining_text(random.Random(7), 600) and len(texts) == 600
    assert all(isinstance(t, str) and t and "<image>" not in t for t in texts)
    joined = " ".join(texts)
    assert set(fact_sentences(random.Random(0), repeats=1)) <= set(texts)  # both halves: knowledge lives in text
    assert all(k in joined for k in KINDS)
    assert sum(w in joined for w in WORDS) > len(WORDS) // 2  # the signs' words (captions, spelling dialogues)


def singular(word: str) -> str:
    """A kind's noun from its plural ("boxes" -> "box", "balls" -> "ball"); other words unchanged."""
    for cut in ("es", "s"):
        if word.endswith(cut) and word.removesuffix(cut) in KINDS:
            return word.removesuffix(cut)
    return word


def test_contrast_caption_changes_exactly_one_named_thing():
    """CLIP's hard negatives: the sign's word for another word, or one kind for a kind the caption does not name;
    a colour when neither is named. Never the caption itself (a negative equal to its positive teaches nothing)."""
    rng = random.Random(3)
    seen = Counter()
    for k in range(300):
        scene = sample_scene(random.Random(f"neg-{k}"), sign_rate=0.5)
        text = Q.caption(scene, rng)
        wrong = Q.contrast_caption(text, rng)
        a, b = text.split(" "), wrong.split(" ")
        changed = {(x.strip(","), y.strip(",")) for x, y in zip(a, b, strict=True) if x != y}
        assert len(a) == len(b) and changed, (text, wrong)
        olds = {singular(x) for x, _ in changed}
        assert len(olds) == 1, (text, wrong)  # one thing: every mention of one kind, in the singular or plural
        old, new = sorted(changed)[0]
        if old in WORDS:
            assert new in WORDS and new != old
            seen["word"] += 1
        elif singular(old) in KINDS:
            assert singular(new) in KINDS and not re.search(rf"\b{singular(new)}(e?s)?\b", text)
            assert (old in KINDS) == (new in KINDS)  # the number is kept: "two balls" -> "two tents"
            seen["kind"] += 1
        else:
            assert not scene.objects and not scene.signs and old in [*COLORS, "white", "gray", "black", "beige"]
            seen["colour"] += 1
    assert seen["word"] > 30 and seen["kind"] > 150, seen
    empty = Q.contrast_caption("an empty gray background", rng)
    assert empty.startswith("an empty ") and empty.split()[2] in COLORS  # no kind, no word: a colour changes


def test_hard_negatives_for_the_clip_build_are_seeded_and_optional():
    from lmm.world.build import hard_negatives

    captions = ["two red balls and a sign that says STOP", "an empty gray background"]
    assert hard_negatives(captions, 0, seed=0) is None
    negs = hard_negatives(captions, 3, seed=0)
    assert [len(n) for n in negs] == [3, 3] and all(c not in n for c, n in zip(captions, negs, strict=True))
    assert negs == hard_negatives(captions, 3, seed=0) != hard_negatives(captions, 3, seed=1)


def test_existence_in_conversations_is_asked_both_ways_and_answered_truly():
    """LLaVA-Instruct's "Is there a ...?" is asked about present and absent kinds alike (asked only about absent ones,
    it taught every model "no" as a prior), and each answer is the scene's: "Yes" with the right count and, for one
    object, its colour; "No" only for a kind the scene lacks."""
    from lmm.world.dialogue import conversation, existence

    answers = []
    for s in range(400):
        rng = random.Random(s)
        scene = sample_scene(rng)
        q, a = existence(scene, rng)
        truth = oracle(scene, q)
        assert a.startswith("Yes, ") == (truth == "yes") and a.startswith("No, ") == (truth == "no"), (q, a, scene)
        kind = re.fullmatch(r"Is there an? (\w+) in the image\?", q)[1]
        n = scene.count(kind)
        if n == 1:
            name = next(o.name for o in scene.objects if o.kind == kind)
            assert a == f"Yes, there is {Q.article(name)} in the image."
        elif n > 1:
            assert a == f"Yes, there are {Q.count_word(n)} {Q.plural(kind, n)} in the image."
        answers.append(truth)
    assert 0.4 < answers.count("yes") / len(answers) < 0.6
    chats = [a for s in range(200) for q, a in conversation(sample_scene(random.Random(s)), random.Random(s), TRAIN)
             if q.startswith("Is there")]
    assert any(a.startswith("Yes") for a in chats) and any(a.startswith("No") for a in chats)
