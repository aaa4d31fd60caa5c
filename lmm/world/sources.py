"""The tiny world's training data, written in LLaVA's real layout so the paper-scale data path reads it unchanged.

Under the world's data root (the paper preset's `paths.data_root` layout, spec §2):
    LLaVA-Pretrain/blip_laion_cc_sbu_558k.json, LLaVA-Pretrain/images/<5-digit shard>/<id>.png   stage 1 (captions)
    llava_v1_5_mix665k.json     the ten stage-2 sources in ONE list, without a source field, each with the real
                                image folder and prompts, so lmm.data.sources.carve separates them by rule (spec §9)
    okvqa_ids.txt               the OKVQA record ids (the rules cannot tell OKVQA from VQAv2; `--okvqa-ids`)
    coco/train2017/, gqa/images/, ocr_vqa/images/, textvqa/train_images/, vg/VG_100K/   the stage-2 images

An image is a function of (seed, pool, index) only and is written once; COCO images are shared by the sources that
use COCO (LLaVA-Instruct, VQAv2, OKVQA, A-OKVQA, RefCOCO), as in the real data. Each source draws from its own seeded
stream, so changing one source's size leaves every other source's records and images byte-identical; stage-1 and
stage-2 images are scenes of different pools. Which knowledge pairs the image sources may ask about is `facts` (the
training half of lmm.world.knowledge.split_facts); ShareGPT's text states every fact.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmm.data.formats import CAPTION, MULTIPLE_CHOICE, REGION_TO_BOX, REGION_TO_TEXT, SHORT_ANSWER
from lmm.data.sources.carve import SOURCES
from lmm.world import dialogue, questions
from lmm.world.scenes import Scene, box_text, render, sample_scene

PRETRAIN_JSON = "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
PRETRAIN_IMAGES = "LLaVA-Pretrain/images"
MIX_JSON = "llava_v1_5_mix665k.json"
OKVQA_IDS = "okvqa_ids.txt"
# Records per source: stage 2 in the paper's proportions (spec §2.2) scaled to ~12K, and conf/world/tiny.yaml's.
DEFAULT_SIZES = {"lcs558k": 10000, "llava_instruct": 2800, "vqav2": 1500, "okvqa": 300, "ocrvqa": 1400,
                 "aokvqa": 1200, "textcaps": 400, "refcoco": 850, "vg": 1500, "gqa": 1300, "sharegpt": 700}
# image pool -> (folder under the data root, probability of a sign); the reading pools always have one
POOLS = {"lcs": (PRETRAIN_IMAGES, 0.35), "coco": ("coco/train2017", 0.35), "gqa": ("gqa/images", 0.35),
         "ocr": ("ocr_vqa/images", 1.0), "textvqa": ("textvqa/train_images", 1.0), "vg": ("vg/VG_100K", 0.35)}
SOURCE_POOL = {"llava_instruct": "coco", "vqav2": "coco", "okvqa": "coco", "aokvqa": "coco", "refcoco": "coco",
               "gqa": "gqa", "ocrvqa": "ocr", "textcaps": "textvqa", "vg": "vg"}
LETTERS = "ABCDEFGH"
Turns = list[dict[str, str]]


class Images:
    """The scenes of the image pools, each rendered and written once however many records use it."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root, self.seed, self.written = root, seed, 0
        self._done: set[tuple[str, int]] = set()

    def scene(self, pool: str, j: int) -> Scene:
        return sample_scene(random.Random(f"{self.seed}-{pool}-{j}"), sign_rate=POOLS[pool][1])

    def rel(self, pool: str, j: int) -> str:
        """The path of image j of a pool, relative to the data root."""
        if pool == "lcs":  # LCS-558K's layout: a 5-digit shard folder, the id's first 5 digits
            name = f"{j:09d}"
            return f"{PRETRAIN_IMAGES}/{name[:5]}/{name}.png"
        return f"{POOLS[pool][0]}/{j:012d}.png"

    def use(self, pool: str, j: int) -> tuple[Scene, str]:
        """Image j of the pool (written on first use) and its path relative to the data root."""
        scene, rel = self.scene(pool, j), self.rel(pool, j)
        if (pool, j) not in self._done:
            buf = io.BytesIO()  # encoding in memory then writing is ~4x faster than PIL saving to a path
            render(scene).save(buf, format="PNG")
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buf.getvalue())
            self._done.add((pool, j))
            self.written += 1
        return scene, rel


def _candidates(rng: random.Random, n: int) -> Iterator[int]:
    """Image indices for a source of n records: a seeded walk over the first 2n + 16 images of its pool (so that
    sources sharing a pool share images), then onwards."""
    cap = 2 * n + 16
    yield from rng.sample(range(cap), cap)
    yield from itertools.count(cap)


def _id(seed: int, source: str, k: int) -> str:
    """A COCO-like 12-digit record id that does not reveal the source (the carve must not need it)."""
    return f"{int(hashlib.sha1(f'{seed}-{source}-{k}'.encode()).hexdigest(), 16) % 10**12:012d}"


def _turns(pairs: list[tuple[str, str]], rng: random.Random | None = None, prompt: str | None = None) -> Turns:
    """LLaVA turns from (question, answer) pairs: the prompt appended to every question ("{q}\\n{prompt}"), <image>
    in the first human turn (before it, or after it when `rng` is given and says so: LLaVA-Instruct has both)."""
    out: Turns = []
    for k, (q, a) in enumerate(pairs):
        text = f"{q}\n{prompt}" if prompt else q
        if k == 0:
            text = f"{text}\n<image>" if rng is not None and rng.random() < 0.5 else f"<image>\n{text}"
        out += [{"from": "human", "value": text}, {"from": "gpt", "value": a}]
    return out


def _options(question: str, options: list[str]) -> str:
    return question + "".join(f"\n{LETTERS[k]}. {o}" for k, o in enumerate(options))


def _regions(scene: Scene, rng: random.Random, referring: bool) -> list[tuple[str, str]]:
    """Region pairs in both of LLaVA's formats, one direction per region: an expression -> its box only when the
    expression picks the region out; a box -> a short description (RefCOCO: the expression, VG: what is there)."""
    out = []
    for i, o in enumerate(scene.objects):
        expr = questions.referring_expression(scene, i)
        text = expr.removeprefix("the ") if referring else questions.article(f"{o.size} {o.colour} {o.kind}")
        if referring and not expr:
            continue
        if expr and rng.random() < 0.5:
            out.append((f"{REGION_TO_BOX} {expr}.", box_text(o.box)))
        else:
            out.append((f"{REGION_TO_TEXT} {box_text(o.box)}.", text))
    if not referring and len(scene.signs) == 1:
        s = scene.signs[0]
        out.append(rng.choice(((f"{REGION_TO_BOX} the sign that says {s.word}.", box_text(s.box)),
                               (f"{REGION_TO_TEXT} {box_text(s.box)}.", f"a sign that says {s.word}"))))
    rng.shuffle(out)
    return out


def _pairs(source: str, scene: Scene, rng: random.Random, facts: set[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The conversations (lists of pairs) one image gives a source; [] when the image suits it not."""
    if source == "vqav2":
        qas = questions.attribute_questions(scene, rng)
        return [qas[: rng.randint(3, 6)]]
    if source == "gqa":
        qas = questions.relation_questions(scene, rng)
        return [qas[: rng.randint(3, 6)]] if len(scene.objects) >= 2 else []  # GQA's scenes have relations
    if source == "okvqa":
        qas = questions.knowledge_questions(scene, rng, facts)
        return [qas[: rng.randint(1, 2)]] if qas else []
    if source == "ocrvqa":
        qas = [qa for qa in questions.reading_questions(scene, rng) if qa[0] != questions.HAS_SIGN]  # always one
        return [qas[: rng.randint(2, 4)]]
    if source == "textcaps":
        text = questions.caption(scene, rng)
        return [[(CAPTION, text[:1].upper() + text[1:] + ".")]]
    if source in ("refcoco", "vg"):
        regions = _regions(scene, rng, referring=source == "refcoco")
        return [regions[: 4 if source == "refcoco" else 10]] if regions else []  # RefCOCO: < 10 turns
    if source == "aokvqa":  # knowledge questions mostly, visual ones too (A-OKVQA has both); k shuffled copies
        mc = questions.choice_question(scene, rng, facts if rng.random() < 0.7 else None)
        if mc is None:
            return []
        q, options, gold = mc
        out = []
        for pos in rng.sample(range(len(options)), len(options)):  # the gold option once at every position
            rest = [o for k, o in enumerate(options) if k != gold]
            rng.shuffle(rest)
            order = rest[:pos] + [options[gold]] + rest[pos:]
            out.append([(_options(q, order), LETTERS[pos])])
        return out
    if source == "llava_instruct":  # conversation 58K : detail 23K : complex reasoning 77K
        u = rng.random()
        if u < 23 / 158:
            return [[(rng.choice(dialogue.DETAIL), questions.detailed_description(scene))]]
        if u >= 81 / 158:
            found = dialogue.reasoning(scene, rng, facts)
            if found is not None:
                return [[found]]
        return [dialogue.conversation(scene, rng, facts, turns=rng.randint(2, 5))]
    raise ValueError(f"unknown source {source!r}")


PROMPT = {"vqav2": SHORT_ANSWER, "gqa": SHORT_ANSWER, "okvqa": SHORT_ANSWER, "ocrvqa": SHORT_ANSWER,
          "aokvqa": MULTIPLE_CHOICE}


def source_records(source: str, n: int, seed: int, images: Images, facts: set[tuple[str, str]],
                   tick: Callable[[], Any] = lambda: None) -> list[dict]:
    """n records of one stage-2 source (or lcs558k), from its own seeded stream."""
    rng = random.Random(f"{seed}-{source}")
    out: list[dict] = []
    if source == "sharegpt":
        for k in range(n):
            turns = [{"from": r, "value": v} for q, a in dialogue.text_dialogue(rng) for r, v in (("human", q),
                                                                                                  ("gpt", a))]
            out.append({"id": _id(seed, source, k), "conversations": turns})
            tick()
        return out
    if source == "lcs558k":
        for j in range(n):
            scene, rel = images.use("lcs", j)
            instr = rng.choice(dialogue.BRIEF)
            human = f"{instr}\n<image>" if rng.random() < 0.5 else f"<image>\n{instr}"
            out.append({"id": f"{j:09d}", "image": rel.removeprefix(PRETRAIN_IMAGES + "/"), "conversations": [
                {"from": "human", "value": human}, {"from": "gpt", "value": questions.caption(scene, rng)}]})
            tick()
        return out
    pool = SOURCE_POOL[source]
    for tries, j in enumerate(_candidates(rng, n)):
        if len(out) >= n:
            break
        if tries > 20 * n + 1000:  # e.g. okvqa with no facts to ask about: fail rather than loop for ever
            raise ValueError(f"{source}: only {len(out)} of {n} records after {tries} images; no image suits it")
        convs = _pairs(source, images.scene(pool, j), rng, facts)
        if not convs:
            continue
        _, rel = images.use(pool, j)
        for pairs in convs[: n - len(out)]:
            turns = _turns(pairs, rng if source == "llava_instruct" else None, PROMPT.get(source))
            out.append({"id": _id(seed, source, len(out)), "image": rel, "conversations": turns})
            tick()
    return out


def build_sources(root: Path, sizes: dict[str, int], seed: int, facts: set[tuple[str, str]],
                  progress: bool = True) -> dict:
    """Write the stage-1 file, the 665K-layout mixture, okvqa_ids.txt and their images under `root`; return a
    summary (records per source, images written, seconds)."""
    started = time.perf_counter()
    root = Path(root)
    unknown = set(sizes) - {"lcs558k", *SOURCES}
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; choose from lcs558k and {SOURCES}")
    images = Images(root, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(sizes.values()), desc="world sources", unit="rec", dynamic_ncols=True, mininterval=1.0)
    tick = bar.update if bar is not None else (lambda: None)
    try:
        pretrain = source_records("lcs558k", sizes.get("lcs558k", 0), seed, images, facts, tick)
        mix: dict[str, list[dict]] = {s: source_records(s, sizes.get(s, 0), seed, images, facts, tick)
                                      for s in SOURCES}
    finally:
        if bar is not None:
            bar.close()
    (root / PRETRAIN_JSON).parent.mkdir(parents=True, exist_ok=True)
    (root / PRETRAIN_JSON).write_text(json.dumps(pretrain))
    (root / MIX_JSON).write_text(json.dumps([r for s in SOURCES for r in mix[s]]))
    (root / OKVQA_IDS).write_text("".join(r["id"] + "\n" for r in mix["okvqa"]))
    return {"records": {"lcs558k": len(pretrain), **{s: len(mix[s]) for s in SOURCES}},
            "images": images.written, "seconds": round(time.perf_counter() - started, 2),
            "files": {"pretrain": str(PRETRAIN_JSON), "mix": str(MIX_JSON), "okvqa_ids": str(OKVQA_IDS)}}  # in data/
