"""What every benchmark shares: Questions (prompt text, image, reference), Scored results, and the Benchmark base
class (loading with subset/limit, LLaVA-format answer lines, scoring hooks, upload files), plus the base of the
benchmarks read from a LLaVA question file with one annotation file.

Each benchmark family (one file per family in this package) turns its files into Questions and scores model texts with
the torchmetrics scorers of lmm.eval.scoring, which reproduce the official rules (spec/eval.md 3-4). It also writes
the extra files the official scripts or servers take (GQA predictions, VQAv2/VizWiz uploads, MME txt files, ...), so
published numbers can be re-derived from an lmm run with the official tools.

Why Questions carry a `uid`: LLaVA's question_id is not unique in every benchmark (TextVQA uses the image id, MME
gives both questions of an image the same id), so everything inside lmm keys questions by their position.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from lmm.data.images import ImageError, load_image
from lmm.data.jsonl import read_jsonl
from lmm.data.records import RecordError, resolve_image_path
from lmm.eval.files import BenchmarkFileError, require_file, where
from lmm.eval.files import field as get

# Scoring runs on rank 0 over the answers already gathered from every rank: the metrics must not sync again (a
# torchmetrics compute() under an initialised process group would wait for the other ranks, which never come).
LOCAL: dict[str, Any] = {"sync_on_compute": False}


# ------------------------------------------------------------------------------------------------------ questions
@dataclass(frozen=True)
class EmbeddedImage:
    """An image stored inside the benchmark file (MMBench TSVs hold base64 strings)."""

    data: str
    where: str

    def open(self) -> Image.Image:
        try:
            with Image.open(io.BytesIO(base64.b64decode(self.data))) as img:
                img.load()
                return img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(f"{self.where}: cannot decode the embedded base64 image: {e}") from e


@dataclass
class Question:
    """One benchmark item: what the model is asked, and what the scorer compares its answer with."""

    uid: int  # position in the benchmark's question list; unique even where question_id is not
    question_id: Any  # copied verbatim into the answer file
    text: str  # the prompt text (question + format suffix), without the image token
    image: Path | EmbeddedImage | None  # None: text-only item
    where: str  # "file:line" of the question, named by every later error
    reference: Any = None  # None: no ground truth here (test splits scored by a server)
    meta: dict[str, Any] = field(default_factory=dict)

    def load_image(self) -> Image.Image | None:
        """The decoded RGB image (errors name the question's file and line)."""
        if self.image is None:
            return None
        if isinstance(self.image, EmbeddedImage):
            return self.image.open()
        try:
            return load_image(self.image)
        except ImageError as e:
            raise ImageError(f"{self.where}: {e}") from e


@dataclass
class Scored:
    """Scores of a benchmark (scorer keys) and each question's score in [0, 1] (None: not scorable alone).

    `details` are extra records for results.json that are not scores (e.g. every judge run's scores)."""

    scores: dict[str, float]
    per_question: list[float | None]
    details: dict[str, Any] = field(default_factory=dict)


_B57 = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def answer_id(*parts: Any) -> str:
    """A shortuuid-style 22-character id, derived from its parts so re-running writes identical answer files."""
    n = int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).digest(), "big")
    out = []
    for _ in range(22):
        n, r = divmod(n, len(_B57))
        out.append(_B57[r])
    return "".join(out)


# ------------------------------------------------------------------------------------------------------ base class
class Benchmark:
    """A benchmark: its files, how its prompts are made, its decoding budget, its scorer and its upload files.

    `check_images=False` skips the image checks, to re-score answer files (score_answer_file) without the images.
    `subset` keeps a fixed, seeded random subset of N question groups (an MME image's two questions, an MMBench
    question's rotations stay together), for quick ablation proxies. `limit` keeps the first N groups (smoke tests).
    """

    kind: ClassVar[str] = "benchmark"
    headline_key: ClassVar[str] = "acc"  # the number the paper reports ...
    headline_scale: ClassVar[float] = 100.0  # ... and the factor to its published scale

    def __init__(self, name: str | None = None, max_new_tokens: int = 128, subset: int | None = None,
                 subset_seed: int = 0, limit: int | None = None, check_images: bool = True) -> None:
        self.name = name or self.kind
        self.check_images = check_images  # False: re-score answer files without the images at hand
        self.max_new_tokens = int(max_new_tokens)
        self.subset, self.subset_seed, self.limit = subset, subset_seed, limit
        self._questions: list[Question] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # --- loading
    def questions(self) -> list[Question]:
        """The benchmark's questions (loaded once), after subset/limit, uids renumbered 0..N-1 in file order."""
        if self._questions is None:
            qs = self._load()
            if not qs:
                raise BenchmarkFileError(f"{self.name}: no questions found in {self.files()}")
            groups: dict[Hashable, list[Question]] = defaultdict(list)
            for q in qs:
                groups[self.group_of(q)].append(q)
            keys = list(groups)
            if self.subset is not None and self.subset < len(keys):
                keep = set(random.Random(self.subset_seed).sample(range(len(keys)), int(self.subset)))
                keys = [k for i, k in enumerate(keys) if i in keep]
            if self.limit is not None:
                keys = keys[: int(self.limit)]
            chosen = {id(q) for k in keys for q in groups[k]}
            qs = [q for q in qs if id(q) in chosen]
            for uid, q in enumerate(qs):
                q.uid = uid
            self._questions = qs
        return self._questions

    def _load(self) -> list[Question]:
        raise NotImplementedError

    def group_of(self, q: Question) -> Hashable:
        """Questions that must be kept or dropped together by `subset`/`limit`."""
        return q.uid

    def files(self) -> dict[str, str | None]:
        """The input files (hashed into results.json)."""
        return {}

    def _image(self, root: str | Path | None, rel: Any, at: str) -> Path:
        if not isinstance(rel, str) or not rel:
            raise BenchmarkFileError(f"{at}: field 'image' must be a non-empty string, got {rel!r}")
        if root is None:
            raise BenchmarkFileError(f"{at}: the question has an image but no image_root is configured")
        try:
            path = resolve_image_path(root, rel)
        except RecordError as e:
            raise BenchmarkFileError(f"{at}: {e}") from e
        if self.check_images and not path.is_file():
            raise BenchmarkFileError(f"{at}: image not found: {path}")
        return path

    def _llava_questions(self, path: str | Path, image_root: str | Path | None,
                         id_types: tuple[type, ...] = (str, int)) -> list[tuple[int, dict, Question]]:
        """Read a LLaVA-format question file (question_id, image, text[, category]) into Questions."""
        p = require_file(path, f"{self.name} question file")
        out = []
        for lineno, row in read_jsonl(p, BenchmarkFileError):
            at = where(p, lineno)
            qid = get(row, "question_id", at, id_types)
            text = get(row, "text", at, str)
            image = self._image(image_root, row["image"], at) if row.get("image") is not None else None
            out.append((lineno, row, Question(len(out), qid, text, image, at)))
        return out

    # --- answers
    def prompt(self, q: Question) -> str:
        """The answer file's `prompt` field (LLaVA: the question text without the image token)."""
        return q.text

    def answer_record(self, q: Question, text: str, model_id: str) -> dict[str, Any]:
        """One line of the LLaVA-format answer file."""
        return {"question_id": q.question_id, "prompt": self.prompt(q), "text": text,
                "answer_id": answer_id(model_id, self.name, q.uid, text), "model_id": model_id, "metadata": {}}

    def reference_text(self, q: Question) -> str:
        """The reference as a human reads it (W&B table)."""
        ref = q.reference
        if isinstance(ref, list | tuple):
            return " | ".join(map(str, ref))
        return "" if ref is None else str(ref)

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        """Files for the official scorer or evaluation server beyond answers.jsonl (default: none)."""
        return []

    def question_record(self, q: Question, text: str, score: float | None) -> dict[str, Any]:
        """One line of eval/<name>/per_question.jsonl: the question's score and whatever else recomputing the
        headline on a resample of the questions needs (lmm.compare's paired bootstrap; subclasses add their fields,
        e.g. MME's subtask and image), plus what a reader needs to see a question whose correctness changed.
        `in_headline`: whether the question enters the headline number (MME cognition, SQA text-only do not)."""
        image = None if q.image is None else str(q.image) if isinstance(q.image, Path) else f"embedded:{q.where}"
        return {"uid": q.uid, "question_id": q.question_id, "score": score, "in_headline": True, "image": image,
                "question": q.text, "answer": text, "reference": self.reference_text(q)}

    # --- scoring
    def has_references(self, qs: Sequence[Question]) -> bool:
        return any(q.reference is not None for q in qs)

    def score(self, qs: Sequence[Question], texts: Sequence[str]) -> Scored:
        """Scores of the questions that have a reference (others, e.g. test splits, are skipped)."""
        pairs = [(q, t) for q, t in zip(qs, texts, strict=True) if q.reference is not None]
        if not pairs:
            return Scored({}, [None] * len(qs))
        sq, st = [p[0] for p in pairs], [p[1] for p in pairs]
        scores, per, *details = self._score(sq, st)
        by_uid = {q.uid: s for q, s in zip(sq, per, strict=True)}
        return Scored(scores, [by_uid.get(q.uid) for q in qs], details[0] if details else {})

    def _score(self, qs: list[Question], texts: list[str]) -> tuple:
        """(scores, per-question scores[, details for results.json]) of questions that all have a reference."""
        raise NotImplementedError

    def headline(self, scores: dict[str, float]) -> float | None:
        """The benchmark's reported number on the published scale (e.g. 62.0 for GQA, 1510.7 for MME)."""
        value = scores.get(self.headline_key)
        return None if value is None else value * self.headline_scale

    def describe(self) -> dict[str, Any]:
        """What results.json records about how this benchmark was run."""
        return {"kind": self.kind, "class": type(self).__name__, "max_new_tokens": self.max_new_tokens,
                "subset": self.subset, "subset_seed": self.subset_seed if self.subset else None,
                "limit": self.limit, "headline_metric": self.headline_key}


class QuestionFileBenchmark(Benchmark):
    """A benchmark read from a LLaVA question file, one official annotation file (None: nothing to score against,
    e.g. a test split) and an image folder: the constructor and files() of GQA, TextVQA, VizWiz, SEED and MM-Vet."""

    def __init__(self, questions: str | Path | None = None, annotations: str | Path | None = None,
                 image_root: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.questions_file, self.annotations, self.image_root = questions, annotations, image_root

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "annotations": self.annotations}
