"""What the benchmark analogs share: their seeded streams of held-out scenes, file writers, and the simulated human
annotators of the VQA-style answer files.

Every analog draws from its own stream, random.Random(f"{seed}-bench-{name}"): no analog's size or code shapes
another's files, and none shares a stream with the training sources (lmm.world.sources), so no benchmark scene is a
training scene (scenes are continuous random layouts: a repeat is practically impossible).
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from lmm.world.knowledge import FACTS, PROPERTIES
from lmm.world.questions import QA
from lmm.world.scenes import BACKGROUNDS, COLORS, KINDS, NUMBER_WORDS, SIZES, WORDS, Scene, Sign, render, sample_scene
from lmm.world.scenes import _sign_extent as sign_extent

T = TypeVar("T")
Built = dict[str, int]  # what a builder reports: {"questions": rows written, "images": images written}


def stream(seed: int, name: str) -> random.Random:
    """The benchmark's own random stream (see the module docstring)."""
    return random.Random(f"{seed}-bench-{name}")


def until(rng: random.Random, make: Callable[[random.Random], T | None], tries: int = 2000) -> T:
    """The first non-None result of make(rng): scenes are drawn until one allows the wanted question."""
    for _ in range(tries):
        out = make(rng)
        if out is not None:
            return out
    raise RuntimeError(f"no scene in {tries} draws allowed {make!r}")


def scene_with(rng: random.Random, ok: Callable[[Scene], bool] = lambda s: bool(s.objects),
               **kwargs: Any) -> Scene:
    """A scene satisfying `ok` (default: it has objects); kwargs go to sample_scene."""

    def make(r: random.Random) -> Scene | None:
        scene = sample_scene(r, **kwargs)
        return scene if ok(scene) else None

    return until(rng, make)


# ------------------------------------------------------------------------------------------------------ files
def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")


def save_scene(scene: Scene, path: Path) -> None:
    """The scene's picture as a PNG (lossless, and byte-identical for the same scene)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    render(scene).save(path, format="PNG")


def png_base64(scene: Scene) -> str:
    """The scene's PNG as base64, as MMBench's TSVs embed images."""
    buf = io.BytesIO()
    render(scene).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------------------------------------------ answers
def answer_type(answer: str) -> str:
    """VQAv2's answer types: "yes/no", "number" or "other"."""
    return "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"


def pick(qas: list[QA], rng: random.Random, want: str | None = None) -> QA | None:
    """A QA of answer type `want` (None: any); for "yes/no" a fair coin picks the answer first, so the analogs'
    yes/no questions are balanced instead of following the generators' mix."""
    if want == "yes/no":
        target = rng.choice(("yes", "no"))
        cands = [qa for qa in qas if qa[1] == target] or [qa for qa in qas if answer_type(qa[1]) == "yes/no"]
    elif want is not None:
        cands = [qa for qa in qas if answer_type(qa[1]) == want]
    else:
        cands = qas
    return rng.choice(cands) if cands else None


_VOCABULARIES: tuple[tuple[str, ...], ...] = (
    tuple(COLORS), KINDS, tuple(SIZES), tuple(BACKGROUNDS), tuple(w.lower() for w in WORDS),
    *(tuple(sorted({FACTS[k][p] for k in KINDS})) for p in PROPERTIES))


def alternatives(answer: str) -> list[str]:
    """Plausible wrong answers of the same type (what a careless annotator might give)."""
    if answer in ("yes", "no"):
        return ["no" if answer == "yes" else "yes"]
    if answer.isdigit():
        return [str(k) for k in range(max(0, int(answer) - 2), int(answer) + 3) if k != int(answer)]
    for vocab in _VOCABULARIES:
        if answer in vocab:
            return [v for v in vocab if v != answer]
    return []


def human_answers(answer: str, rng: random.Random, max_disagree: int = 3) -> list[str]:
    """Ten annotators' answers: at least seven give the answer (one may spell a number as a word, which VQA
    normalisation maps back), up to `max_disagree` give a plausible wrong one. A right answer thus always scores 1
    under VQA accuracy, while the file keeps the real ones' disagreement."""
    answers = [answer] * 10
    if answer.isdigit() and int(answer) < len(NUMBER_WORDS) and rng.random() < 0.5:
        answers[0] = NUMBER_WORDS[int(answer)]
    pool = alternatives(answer)
    if pool:
        for k in rng.sample(range(1, 10), rng.randint(0, max_disagree)):
            answers[k] = rng.choice(pool)
    return answers


# ------------------------------------------------------------------------------------------------------ scenes
def _apart(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def arithmetic_scene(rng: random.Random) -> tuple[Scene, int, int]:
    """A scene whose sign shows a sum "x+y=" in large print (MME's numerical_calculation, MM-Vet's OCR + math)."""

    def make(r: random.Random) -> tuple[Scene, int, int] | None:
        scene = sample_scene(r, sign_rate=1.0)
        x, y = r.randint(1, 4), r.randint(1, 5)
        if len(scene.signs) != 1:
            return None
        expr = f"{x}+{y}="
        bw, bh = sign_extent(expr, "large", min(scene.width, scene.height))
        x0, y0 = scene.signs[0].box[:2]
        box = (x0, y0, x0 + bw / scene.width, y0 + bh / scene.height)
        if box[2] > 0.99 or box[3] > 0.99 or not all(_apart(box, o.box) for o in scene.objects):
            return None
        return replace(scene, signs=[Sign(expr, "large", box)]), x, y

    return until(rng, make)
