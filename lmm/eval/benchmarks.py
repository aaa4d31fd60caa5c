"""The LLaVA-1.5 benchmarks, read from their LLaVA-format question files and official annotation files.

Each Benchmark turns its files into Questions (prompt text, image, reference) and scores model texts with the
torchmetrics scorers of lmm.eval.scoring, which reproduce the official rules (spec/eval.md 3-4). It also writes the
extra files the official scripts or servers take (GQA predictions, VQAv2/VizWiz uploads, MME txt files, ...), so
published numbers can be re-derived from an lmm run with the official tools.

Why Questions carry a `uid`: LLaVA's question_id is not unique in every benchmark (TextVQA uses the image id, MME
gives both questions of an image the same id), so everything inside lmm keys questions by their position.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from lmm.data.images import ImageError, load_image
from lmm.data.records import RecordError, resolve_image_path
from lmm.eval.files import (
    BenchmarkFileError,
    json_list_lines,
    read_json,
    read_jsonl,
    read_tsv,
    require_file,
    where,
)
from lmm.eval.files import field as get
from lmm.eval.scoring import (
    LLAVA_BENCH_CATEGORIES,
    MME_SUBTASKS,
    MMVET_CAPABILITIES,
    POPE_SPLITS,
    GQAAccuracy,
    Judge,
    LLaVABenchScore,
    MMBenchCircular,
    MMEMetric,
    MMVetScore,
    POPEMetric,
    RuleJudge,
    ScienceQAAccuracy,
    SEEDAccuracy,
    VQAAccuracy,
    extract_mmbench_letter,
    extract_sqa_letter,
    gqa_postprocess,
    mean_over_runs,
    normalize_vqa_answer,
    parse_mme_yes_no,
    parse_pope_yes_no,
    vqa_score,
)

# Response-format prompts (paper Table 8, eval.md 1), joined to the question with "\n".
SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
OPTION_LETTER_CN = "请直接回答选项字母。"
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
MME_SUFFIX = " Please answer yes or no."
_LETTERS = "ABCDE"
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


def _is_none(value: Any) -> bool:
    """LLaVA's is_none for TSV cells: missing, empty, or the strings pandas writes for NaN/None."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none"))


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
        for lineno, row in read_jsonl(p):
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


def read_answer_file(bench: Benchmark, path: str | Path) -> list[str]:
    """The texts of a LLaVA-format answer file, checked line by line against the benchmark's questions.

    The file must follow question-file order (LLaVA's merged answer files do), as POPE's and MME's scorers assume.
    """
    p = require_file(path, "answer file")
    qs = bench.questions()
    rows = list(read_jsonl(p))
    if len(rows) != len(qs):
        raise BenchmarkFileError(f"{p}: {len(rows)} answers for {len(qs)} questions of {bench.name}")
    texts = []
    for (lineno, row), q in zip(rows, qs, strict=True):
        at = where(p, lineno)
        if get(row, "question_id", at) != q.question_id:
            raise BenchmarkFileError(f"{at}: question_id {row['question_id']!r}, but question {q.uid} of "
                                     f"{bench.name} ({q.where}) is {q.question_id!r}: answers out of order?")
        texts.append(get(row, "text", at, str))
    return texts


def score_answer_file(bench: Benchmark, path: str | Path) -> Scored:
    """Score an existing answer file (e.g. LLaVA's released answers) with the benchmark's official rules."""
    return bench.score(bench.questions(), read_answer_file(bench, path))


def _write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False))
    return path


# -------------------------------------------------------------------------------------------- VQA-accuracy family
class _QuestionFile:
    """Mixin: a LLaVA question file, one official annotation file (None: no reference) and an image folder."""

    def __init__(self, questions: str, annotations: str | None, image_root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.questions_file, self.annotations, self.image_root = questions, annotations, image_root

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "annotations": self.annotations}


class _VQAFamily(Benchmark):
    """VQA accuracy with 10 human answers (VQAv2, VizWiz, TextVQA).

    `server=True` reproduces what the EvalAI servers score: LLaVA uploads answers already passed through the EvalAI
    processor and the server runs GT-Vision-Lab's vqaEval (eval.md 3.3). `server=False` is the m4c/TextVQA
    evaluator: the processor on prediction and every human answer.
    """

    server: bool = True

    def _pred(self, text: str) -> str:
        return normalize_vqa_answer(text) if self.server else text

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        """Overall VQA accuracy, and as vqaEval.py reports: per answer type ("acc/<yes/no|number|other>") and per
        question type ("acc_qtype/<what color is the>"), where the annotations give them (eval.md 3.3)."""
        preds = [self._pred(t) for t in texts]
        metric = VQAAccuracy(official=self.server, **LOCAL)
        metric.update(preds, [q.reference for q in qs])
        scores = metric.compute()
        per = [vqa_score(p, q.reference, official=self.server) for p, q in zip(preds, qs, strict=True)]
        for key, prefix in (("answer_type", "acc/"), ("question_type", "acc_qtype/")):
            groups: dict[str, list[float]] = defaultdict(list)
            for q, value in zip(qs, per, strict=True):
                if (kind := q.meta.get(key)) is not None:
                    groups[str(kind)].append(value)
            scores.update({prefix + k: sum(v) / len(v) for k, v in sorted(groups.items())})
        return scores, per

    @staticmethod
    def _answers(entry: dict, at: str) -> list[str]:
        answers = get(entry, "answers", at, list)
        out = [a["answer"] if isinstance(a, dict) else a for a in answers]
        if not out or not all(isinstance(a, str) for a in out):
            raise BenchmarkFileError(f"{at}: 'answers' must be a non-empty list of strings or {{'answer': str}}")
        return out


class VQAv2(_VQAFamily):
    """VQAv2. LLaVA reports test-dev (EvalAI only); the local proxy is val2014 with its official annotations.

    Questions come from a LLaVA-format file when `questions` exists, else are built from the official questions
    JSON (`official_questions`) as "<question>\\n<short-answer prompt>" with images named by `image_pattern`.
    Without annotations (test-dev) nothing is scored; vqav2_upload.json is written for EvalAI (with
    `upload_questions` = the test2015 questions JSON, every unanswered question gets "", as the server wants).
    """

    kind = "vqav2"

    def __init__(self, image_root: str, questions: str | None = None, official_questions: str | None = None,
                 annotations: str | None = None, image_pattern: str = "COCO_val2014_{image_id:012d}.jpg",
                 upload_questions: str | None = None, server: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_root, self.questions_file, self.official_questions = image_root, questions, official_questions
        self.annotations, self.image_pattern, self.upload_questions = annotations, image_pattern, upload_questions
        self.server = server

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "official_questions": self.official_questions,
                "annotations": self.annotations}

    def _load(self) -> list[Question]:
        if self.questions_file and Path(self.questions_file).exists():
            qs = [q for _, _, q in self._llava_questions(self.questions_file, self.image_root, (int,))]
        elif self.official_questions:
            p = require_file(self.official_questions, "VQAv2 official questions JSON")
            items = get(read_json(p), "questions", where(p), list)
            lines = json_list_lines(p, items) if len(items) < 300_000 else [None] * len(items)
            qs = []
            for i, (item, line) in enumerate(zip(items, lines, strict=True)):
                at = where(p, line) if line else f"{p}: questions[{i}]"
                image_id = get(item, "image_id", at, int)
                rel = self.image_pattern.format(image_id=image_id)
                qs.append(Question(i, get(item, "question_id", at, int),
                                   f"{get(item, 'question', at, str)}\n{SHORT_ANSWER}",
                                   self._image(self.image_root, rel, at), at))
        else:
            raise BenchmarkFileError(f"{self.name}: neither the LLaVA question file {self.questions_file} nor "
                                     "`official_questions` exists")
        if self.annotations:
            p = require_file(self.annotations, "VQAv2 annotations JSON")
            anns = get(read_json(p), "annotations", where(p), list)
            gt = {}
            for i, a in enumerate(anns):
                at = f"{p}: annotations[{i}]"
                gt[get(a, "question_id", at, int)] = (self._answers(a, at), a.get("answer_type"),
                                                      a.get("question_type"))
            for q in qs:
                if q.question_id in gt:
                    q.reference, q.meta["answer_type"], q.meta["question_type"] = gt[q.question_id]
        return qs

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        answers = {q.question_id: normalize_vqa_answer(t) for q, t in zip(qs, texts, strict=True)}
        if self.upload_questions:
            p = require_file(self.upload_questions, "VQAv2 test2015 questions JSON")
            ids = [get(x, "question_id", f"{p}: questions[{i}]", int)
                   for i, x in enumerate(get(read_json(p), "questions", where(p), list))]
            rows = [{"question_id": i, "answer": answers.get(i, "")} for i in ids]
        else:
            rows = [{"question_id": i, "answer": a} for i, a in answers.items()]
        return [_write_json(out_dir / "vqav2_upload.json", rows)]


class VizWiz(_VQAFamily):
    """VizWiz (test: EvalAI upload only; val with `annotations` = the official val.json: scored locally).

    Ground truth is matched by image file name (the upload format keys answers by image, too). Without a question
    file, questions are built from the annotations with LLaVA's unanswerable + short-answer prompts.
    """

    kind = "vizwiz"

    def __init__(self, image_root: str, questions: str | None = None, annotations: str | None = None,
                 server: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_root, self.questions_file, self.annotations, self.server = image_root, questions, annotations, server

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "annotations": self.annotations}

    def _load(self) -> list[Question]:
        gt: dict[str, tuple[str, list[str], str | None, str]] = {}
        if self.annotations:
            p = require_file(self.annotations, "VizWiz annotations JSON")
            items = read_json(p)
            if not isinstance(items, list):
                raise BenchmarkFileError(f"{p}: expected a JSON list of VizWiz annotations")
            lines = json_list_lines(p, items)
            for i, (a, line) in enumerate(zip(items, lines, strict=True)):
                at = where(p, line) if line else f"{p}: [{i}]"
                gt[get(a, "image", at, str)] = (get(a, "question", at, str), self._answers(a, at),
                                                a.get("answer_type"), at)
        if self.questions_file and Path(self.questions_file).exists():
            qs = [q for _, _, q in self._llava_questions(self.questions_file, self.image_root)]
            for q in qs:
                if gt and (entry := gt.get(Path(str(q.image)).name)) is not None:
                    q.reference, q.meta["answer_type"] = entry[1], entry[2]
        elif gt:
            qs = [Question(i, i, f"{question}\n{VIZWIZ_UNANSWERABLE}\n{SHORT_ANSWER}",
                           self._image(self.image_root, image, at), at, answers, {"answer_type": kind})
                  for i, (image, (question, answers, kind, at)) in enumerate(gt.items())]
        else:
            raise BenchmarkFileError(f"{self.name}: neither the question file {self.questions_file} nor "
                                     "`annotations` exists")
        return qs

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        rows = [{"image": Path(str(q.image)).name, "answer": normalize_vqa_answer(t)}
                for q, t in zip(qs, texts, strict=True)]
        return [_write_json(out_dir / "vizwiz_upload.json", rows)]


class TextVQA(_QuestionFile, _VQAFamily):
    """TextVQA val with OCR tokens in the prompt; m4c's evaluator (processor on prediction and answers).

    question_id is the image id, so annotations are matched by (image id, lowercased question), the question being
    recovered from the prompt as eval_textvqa.py does.
    """

    kind = "textvqa"
    server = False

    @staticmethod
    def question_of(prompt: str, at: str = "") -> str:
        """eval_textvqa's prompt_processor: the question line of the 2- or 3-line prompt, lowercased."""
        lines = prompt.split("\n")
        if prompt.startswith("OCR tokens: "):
            found = re.search(r"Question: (.*?) Short answer:", prompt)
            if found:
                return found.group(1).lower()
        if "Reference OCR token: " in prompt and len(lines) == 3:
            return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
        if len(lines) == 2:
            return lines[0].lower()
        raise BenchmarkFileError(f"{at}: TextVQA prompt has an unexpected layout ({len(lines)} lines): {prompt!r:.120}")

    def _load(self) -> list[Question]:
        qs = [q for _, _, q in self._llava_questions(self.questions_file, self.image_root)]
        if self.annotations:
            p = require_file(self.annotations, "TextVQA annotations JSON")
            data = get(read_json(p), "data", where(p), list)
            gt = {}
            for i, a in enumerate(data):
                at = f"{p}: data[{i}]"
                if "answers" in a:
                    gt[(str(get(a, "image_id", at)), get(a, "question", at, str).lower())] = self._answers(a, at)
            for q in qs:
                key = (str(q.question_id), self.question_of(q.text, q.where))
                if key not in gt:
                    raise BenchmarkFileError(f"{q.where}: no annotation in {p} for image {key[0]!r} and question "
                                             f"{key[1]!r}")
                q.reference = gt[key]
        return qs


# ----------------------------------------------------------------------------------------------------------- GQA
class GQA(_QuestionFile, Benchmark):
    """GQA testdev-balanced: LLaVA's post-processing, exact match with the official gold answer."""

    kind = "gqa"

    def _load(self) -> list[Question]:
        qs = [q for _, _, q in self._llava_questions(self.questions_file, self.image_root)]
        if self.annotations:
            p = require_file(self.annotations, "GQA questions JSON (testdev_balanced_questions.json)")
            gt = read_json(p)
            if not isinstance(gt, dict):
                raise BenchmarkFileError(f"{p}: expected a JSON object mapping question ids to questions")
            for q in qs:
                entry = gt.get(str(q.question_id))
                if entry is None:
                    raise BenchmarkFileError(f"{q.where}: question_id {q.question_id!r} is not in {p}")
                q.reference = get(entry, "answer", f"{p}: question {q.question_id!r}", str)
        return qs

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = GQAAccuracy(**LOCAL)
        metric.update(texts, [q.reference for q in qs])
        return metric.compute(), [float(gqa_postprocess(t) == q.reference) for q, t in zip(qs, texts, strict=True)]

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        rows = [{"questionId": q.question_id, "prediction": gqa_postprocess(t)} for q, t in zip(qs, texts, strict=True)]
        return [_write_json(out_dir / "testdev_balanced_predictions.json", rows)]


# ----------------------------------------------------------------------------------------------------- ScienceQA
class ScienceQA(Benchmark):
    """ScienceQA test (llava_test_CQM-A.json) scored with eval_science_qa.py's letter rules; SQA-IMG = image subset.

    The prompt is the human turn without "<image>", plus the option-letter prompt (model_vqa_science with
    --single-pred-prompt); text-only items run without an image. Gold answers and choice counts come from the
    official problems.json; without it, from the file's gpt turn and the prompt's option lines.
    `image_only` (default) skips the text-only questions, which do not enter the reported SQA-IMG number.
    """

    kind = "scienceqa"
    headline_key = "acc_img"

    def __init__(self, questions: str, image_root: str, problems: str | None = None, image_only: bool = True,
                 **kwargs: Any) -> None:
        kwargs.setdefault("max_new_tokens", 1024)
        super().__init__(**kwargs)
        self.questions_file, self.image_root, self.problems, self.image_only = questions, image_root, problems, \
            image_only

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "problems": self.problems}

    def _load(self) -> list[Question]:
        p = require_file(self.questions_file, "ScienceQA question file (llava_test_CQM-A.json)")
        items = read_json(p)
        if not isinstance(items, list):
            raise BenchmarkFileError(f"{p}: expected a JSON list of LLaVA records")
        problems = read_json(require_file(self.problems, "ScienceQA problems.json")) if self.problems else None
        lines = json_list_lines(p, items)
        qs = []
        for i, (item, line) in enumerate(zip(items, lines, strict=True)):
            at = where(p, line) if line else f"{p}: record {i}"
            if not isinstance(item, dict):
                raise BenchmarkFileError(f"{at}: expected a JSON object")
            pid = str(get(item, "id", at))
            convs = get(item, "conversations", at, list)
            if not convs or not isinstance(convs[0], dict):
                raise BenchmarkFileError(f"{at}: 'conversations' must start with a {{'from', 'value'}} turn")
            has_image = item.get("image") is not None
            if self.image_only and not has_image:
                continue
            text = get(convs[0], "value", at, str).replace("<image>", "").strip() + "\n" + OPTION_LETTER
            image = self._image(self.image_root, item["image"], at) if has_image else None
            if problems is not None:
                prob = problems.get(pid)
                if prob is None:
                    raise BenchmarkFileError(f"{at}: problem id {pid!r} is not in {self.problems}")
                gold, n = get(prob, "answer", f"{self.problems}: problem {pid!r}", int), len(prob.get("choices", []))
            else:
                n = sum(bool(re.match(rf"^[{_LETTERS}]\. ", ln)) for ln in text.split("\n"))
                letter = convs[1].get("value", "").strip() if len(convs) > 1 else ""
                gold = _LETTERS.index(letter) if letter and letter in _LETTERS else None
            qs.append(Question(len(qs), pid, text, image, at, None if gold is None else (gold, n),
                               {"has_image": has_image}))
        return qs

    def prompt(self, q: Question) -> str:
        return ("<image>\n" + q.text) if q.meta["has_image"] else q.text

    def reference_text(self, q: Question) -> str:
        return _LETTERS[q.reference[0]] if q.reference else ""

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = ScienceQAAccuracy(**LOCAL)
        metric.update(texts, [q.reference[0] for q in qs], [q.reference[1] for q in qs],
                      [q.meta["has_image"] for q in qs])
        per = []
        for q, t in zip(qs, texts, strict=True):
            letter = extract_sqa_letter(t.strip())
            per.append(float(letter in _LETTERS[: q.reference[1]] and _LETTERS.index(letter) == q.reference[0]))
        return metric.compute(), per


# ---------------------------------------------------------------------------------------------------------- POPE
class POPE(Benchmark):
    """POPE on COCO val2014: per-split yes/no F1 (LLaVA reports the mean F1 of the three splits).

    Labels are paired with questions by position within each split (category), exactly as eval_pope.py zips the
    answers with the label file, so a split whose question and label counts differ is refused.
    """

    kind = "pope"
    headline_key = "mean_f1"

    def __init__(self, questions: str, label_dir: str, image_root: str, splits: Sequence[str] = POPE_SPLITS,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.questions_file, self.label_dir, self.image_root, self.splits = questions, label_dir, image_root, \
            tuple(splits)

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "label_dir": self.label_dir}

    def _load(self) -> list[Question]:
        rows = self._llava_questions(self.questions_file, self.image_root)
        label_dir = require_file(self.label_dir, "POPE label folder")
        by_split: dict[str, list[Question]] = defaultdict(list)
        for _, row, q in rows:
            split = get(row, "category", q.where, str)
            if split not in POPE_SPLITS:
                raise BenchmarkFileError(f"{q.where}: POPE category {split!r} is not one of {POPE_SPLITS}")
            q.meta["category"] = split
            by_split[split].append(q)
        qs = []
        for split in self.splits:
            files = sorted(label_dir.glob(f"*pope_{split}.json"))
            if not files:
                raise BenchmarkFileError(f"{label_dir}: no label file *pope_{split}.json")
            labels = [(lineno, get(r, "label", where(files[0], lineno), str)) for lineno, r in read_jsonl(files[0])]
            split_qs = by_split.get(split, [])
            if len(labels) != len(split_qs):
                raise BenchmarkFileError(f"POPE {split}: {len(split_qs)} questions in {self.questions_file} but "
                                         f"{len(labels)} labels in {files[0]} (they are paired by position)")
            for q, (lineno, label) in zip(split_qs, labels, strict=True):
                if label not in ("yes", "no"):
                    raise BenchmarkFileError(f"{where(files[0], lineno)}: label must be 'yes' or 'no', got {label!r}")
                q.reference = label
            qs += split_qs
        return sorted(qs, key=lambda q: q.uid)  # question-file order, which the answer file must keep

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = POPEMetric(categories=self.splits, **LOCAL)
        metric.update(texts, [q.reference for q in qs], [q.meta["category"] for q in qs])
        return metric.compute(), [float(parse_pope_yes_no(t) == q.reference) for q, t in zip(qs, texts, strict=True)]


# ----------------------------------------------------------------------------------------------------------- MME
class MME(Benchmark):
    """MME: 14 yes/no subtasks, two questions per image; perception score (max 2000) is what LLaVA-1.5 reports.

    Gold answers come from the official release folder (`gt_root`/<subtask>/[questions_answers_YN/]<image>.txt,
    lines "question<TAB>Yes|No"), matched by restoring " Please answer yes or no." as convert_answer_to_mme.py does.
    Writes mme_results/<subtask>.txt for the official eval_tool.
    """

    kind = "mme"
    headline_key = "perception_score"
    headline_scale = 1.0

    def __init__(self, questions: str, gt_root: str, image_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.questions_file, self.gt_root = questions, gt_root
        self.image_root = image_root if image_root is not None else gt_root

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "gt_root": self.gt_root}

    def group_of(self, q: Question) -> Hashable:
        return (q.meta["category"], q.question_id)

    @staticmethod
    def question_of(text: str) -> str:
        return text.replace(SHORT_ANSWER, "").strip()

    def _gt_file(self, category: str, image: str) -> Path | None:
        stem = Path(image).stem + ".txt"
        for candidate in (Path(self.gt_root) / category / "questions_answers_YN" / stem,
                          Path(self.gt_root) / category / stem):
            if candidate.is_file():
                return candidate
        return None

    def _load(self) -> list[Question]:
        rows = self._llava_questions(self.questions_file, self.image_root, (str,))
        require_file(self.gt_root, "MME release folder (MME_Benchmark_release_version)")
        cache: dict[Path, dict[str, str]] = {}
        qs = []
        for _, row, q in rows:
            category = get(row, "category", q.where, str)
            if category not in MME_SUBTASKS:
                raise BenchmarkFileError(f"{q.where}: MME category {category!r} is not one of {MME_SUBTASKS}")
            q.meta["category"] = category
            gt_file = self._gt_file(category, q.question_id)
            if gt_file is None:
                raise BenchmarkFileError(f"{q.where}: no ground-truth file for {q.question_id!r} under "
                                         f"{self.gt_root}/{category}")
            if gt_file not in cache:
                table = {}
                for lineno, line in enumerate(gt_file.read_text(encoding="utf-8").splitlines(), start=1):
                    if not line.strip():
                        continue
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) != 2 or parts[1].strip() not in ("Yes", "No"):
                        raise BenchmarkFileError(f"{where(gt_file, lineno)}: expected 'question<TAB>Yes|No', "
                                                 f"got {line!r:.120}")
                    table[parts[0].strip()] = parts[1].strip()
                cache[gt_file] = table
            question = self.question_of(q.text)
            base = question.replace(MME_SUFFIX.strip(), "").strip()
            for key in (question, base + MME_SUFFIX, base + " " + MME_SUFFIX, base):
                if key in cache[gt_file]:
                    q.reference, q.meta["gt_question"] = cache[gt_file][key], key
                    break
            else:
                raise BenchmarkFileError(f"{q.where}: question {question!r} not found in {gt_file}")
            qs.append(q)
        return qs

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = MMEMetric(**LOCAL)
        metric.update(texts, [q.reference for q in qs], [q.meta["category"] for q in qs],
                      [str(q.question_id) for q in qs])
        per = [float(parse_mme_yes_no(t) == q.reference.lower()) for q, t in zip(qs, texts, strict=True)]
        return metric.compute(), per

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        lines: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for q, t in zip(qs, texts, strict=True):
            if q.reference is not None:
                image = Path(str(q.question_id)).name
                lines[q.meta["category"]].append((image, f"{image}\t{q.meta['gt_question']}\t{q.reference}\t{t}\n"))
        paths = []
        for category, rows in lines.items():
            rows.sort(key=lambda r: r[0])  # stable: the two questions of an image stay adjacent, in file order
            path = out_dir / "mme_results" / f"{category}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(r[1] for r in rows), encoding="utf-8")
            paths.append(path)
        return paths


# ------------------------------------------------------------------------------------------------------- MMBench
class MMBench(Benchmark):
    """MMBench / MMBench-CN dev TSVs, circular evaluation with rule-based letter extraction (eval.md 4.8).

    Every TSV row (the rotated copies included) is asked once with LLaVA's layout "[hint\\n]question\\nA. ..." and
    the option-letter prompt (Chinese for `lang: cn`). Rows whose `image` cell is a short index refer to another
    row's image (VLMEvalKit's compact TSVs). Writes <name>_submission.tsv (the server's columns + prediction;
    save it as .xlsx for upload).
    """

    kind = "mmbench"
    REQUIRED = ("index", "question", "A", "B", "image")

    def __init__(self, tsv: str, lang: str = "en", **kwargs: Any) -> None:
        kwargs.setdefault("max_new_tokens", 1024)
        super().__init__(**kwargs)
        if lang not in ("en", "cn"):
            raise ValueError(f"MMBench lang must be 'en' or 'cn', got {lang!r}")
        self.tsv, self.lang = tsv, lang

    def files(self) -> dict[str, str | None]:
        return {"tsv": self.tsv}

    def group_of(self, q: Question) -> Hashable:
        return int(q.question_id) % 1_000_000

    def _load(self) -> list[Question]:
        p = require_file(self.tsv, "MMBench TSV")
        rows = list(read_tsv(p, self.REQUIRED))
        images = {row["index"]: row["image"] for _, row in rows if len(row["image"]) > 64}
        suffix = OPTION_LETTER if self.lang == "en" else OPTION_LETTER_CN
        categories, l2_categories = set(), set()
        qs = []
        for lineno, row in rows:
            at = where(p, lineno)
            try:
                index = int(row["index"])
            except ValueError as e:
                raise BenchmarkFileError(f"{at}: index must be an integer, got {row['index']!r}") from e
            options = {}
            for letter in "ABCD":
                if letter not in row or _is_none(row[letter]):
                    break
                options[letter] = row[letter]
            if len(options) < 2:
                raise BenchmarkFileError(f"{at}: fewer than two options")
            question = row["question"] if _is_none(row.get("hint")) else row["hint"] + "\n" + row["question"]
            text = question + "".join(f"\n{k}. {v}" for k, v in options.items()) + "\n" + suffix
            image = row["image"] if len(row["image"]) > 64 else images.get(row["image"])
            if image is None:
                raise BenchmarkFileError(f"{at}: image cell {row['image']!r:.40} is neither base64 nor the index of "
                                         "a row that has one")
            gold = None if _is_none(row.get("answer")) else row["answer"].strip()
            if gold is not None and gold not in options:
                raise BenchmarkFileError(f"{at}: answer {gold!r} is not one of the options {list(options)}")
            category = None if _is_none(row.get("category")) else row["category"]
            l2 = None if _is_none(row.get("l2-category")) else row["l2-category"]
            categories.add(category)
            l2_categories.add(l2)
            qs.append(Question(len(qs), index, text, EmbeddedImage(image, at), at, gold,
                               {"options": options, "category": category, "l2_category": l2, "row": row}))
        # breakdowns only when every row names its (l2-)category, as the official TSVs do
        self.categories = sorted(categories) if None not in categories else []
        self.l2_categories = sorted(l2_categories) if None not in l2_categories else []
        return qs

    def answer_record(self, q: Question, text: str, model_id: str) -> dict[str, Any]:
        record = super().answer_record(q, text, model_id)
        record.update(round_id=0, options=list(q.meta["options"].values()), option_char=list(q.meta["options"]))
        return record

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = MMBenchCircular(categories=self.categories, l2_categories=self.l2_categories, **LOCAL)
        metric.update(texts, [q.reference for q in qs], [q.question_id for q in qs], [q.meta["options"] for q in qs],
                      [q.meta["category"] for q in qs] if self.categories else None,
                      [q.meta["l2_category"] for q in qs] if self.l2_categories else None)
        per = [float(extract_mmbench_letter(t.strip(), q.meta["options"]) == q.reference)
               for q, t in zip(qs, texts, strict=True)]
        return metric.compute(), per

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        drop = {"hint", "category", "source", "image", "comment", "l2-category"}
        header = [c for c in qs[0].meta["row"] if c not in drop] + ["prediction"]
        path = out_dir / f"{self.name}_submission.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)

        def cell(value: str) -> str:
            return value.replace("\t", " ").replace("\n", "\\n")

        body = ["\t".join(header)]
        body += ["\t".join(cell({**q.meta["row"], "prediction": t}.get(c, "")) for c in header)
                 for q, t in zip(qs, texts, strict=True)]
        path.write_text("\n".join(body) + "\n", encoding="utf-8")
        return [path]


# ---------------------------------------------------------------------------------------------------------- SEED
class SEED(Benchmark):
    """SEED-Bench v1: exact letter match (convert_seed_for_submission.py); `image_only` keeps dimensions 1-9.

    The paper's "SEED" is all 19,242 questions (video ones as their middle frame); SEED-IMG is dimensions 1-9.
    """

    kind = "seed"

    def __init__(self, questions: str, annotations: str | None, image_root: str, image_only: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.questions_file, self.annotations, self.image_root, self.image_only = questions, annotations, \
            image_root, image_only
        self.headline_key = "acc_image" if image_only else "acc"

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "annotations": self.annotations}

    def _load(self) -> list[Question]:
        gt: dict[str, dict] = {}
        if self.annotations:
            p = require_file(self.annotations, "SEED-Bench.json")
            for i, item in enumerate(get(read_json(p), "questions", where(p), list)):
                gt[str(get(item, "question_id", f"{p}: questions[{i}]"))] = item | {"_at": f"{p}: questions[{i}]"}
        # video questions point at frames that may not be extracted: check images only for what is kept
        raw = []
        p = require_file(self.questions_file, "SEED question file")
        for lineno, row in read_jsonl(p):
            at = where(p, lineno)
            qid = get(row, "question_id", at, (str, int))
            entry = gt.get(str(qid))
            if self.annotations and entry is None:
                raise BenchmarkFileError(f"{at}: question_id {qid!r} is not in {self.annotations}")
            dim = int(get(entry, "question_type_id", entry["_at"])) if entry else None
            if self.image_only and dim is not None and dim > 9:
                continue
            image = self._image(self.image_root, get(row, "image", at, str), at)
            ref = (get(entry, "answer", entry["_at"], str), dim) if entry else None
            raw.append(Question(len(raw), qid, get(row, "text", at, str), image, at, ref))
        return raw

    def reference_text(self, q: Question) -> str:
        return q.reference[0] if q.reference else ""

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = SEEDAccuracy(**LOCAL)
        metric.update(texts, [q.reference[0] for q in qs], [q.reference[1] for q in qs])
        return metric.compute(), [float(t.strip() == q.reference[0]) for q, t in zip(qs, texts, strict=True)]

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        path = out_dir / "seed_upload.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"question_id": q.question_id, "prediction": t.strip()}) + "\n"
                                for q, t in zip(qs, texts, strict=True)))
        return [path]


# ------------------------------------------------------------------------------------------- judged benchmarks
class _Recording:
    """Wraps a judge and keeps every grade it gives, so the W&B table can show per-question judge scores (with
    several judge runs: each question's runs are consecutive)."""

    def __init__(self, judge: Judge) -> None:
        self.judge, self.grades = judge, []

    def grade_mmvet(self, question: str, answer: str, prediction: str) -> float:
        grade = self.judge.grade_mmvet(question, answer, prediction)
        self.grades.append(float(grade))
        return grade

    def review_llava_bench(self, context: Any, question: str, reference: str, prediction: str) -> tuple[float, float]:
        pair = self.judge.review_llava_bench(context, question, reference, prediction)
        self.grades.append(pair[1] / pair[0] if pair[0] > 0 else 0.0)
        return pair


class _Judged(Benchmark):
    """A judge-graded benchmark. `judge_runs` passes of the judge are averaged (LLaVA reports the mean of 3 GPT-4
    runs, eval.md 4.10-4.12); None: 1 for a deterministic judge (the offline RuleJudge), else 3."""

    headline_scale = 1.0
    headline_key = "score"

    def __init__(self, judge: Judge | None = None, judge_runs: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("max_new_tokens", 1024)
        super().__init__(**kwargs)
        self.judge: Judge = judge if judge is not None else RuleJudge()
        self.judge_runs = int(judge_runs) if judge_runs is not None else \
            (1 if getattr(self.judge, "deterministic", False) else 3)
        if self.judge_runs < 1:
            raise ValueError(f"{self.name}: judge_runs must be >= 1, got {judge_runs}")

    def judge_temperature(self) -> float | None:
        """The sampling temperature of this benchmark's judge requests (None: not an LLM)."""
        return None

    def describe(self) -> dict[str, Any]:
        out = super().describe() | {"judge": type(self.judge).__name__, "judge_runs": self.judge_runs,
                                    "judge_model": getattr(self.judge, "model", None),
                                    "judge_temperature": self.judge_temperature()}
        if getattr(self.judge, "url", None):
            out["judge_url"] = self.judge.url
        if isinstance(self.judge, RuleJudge):
            out["judge_note"] = "RuleJudge: word-overlap stand-in, NOT comparable to GPT-4-judged published numbers"
        return out

    def _judged(self, metric: Any, judge: _Recording) -> tuple[dict[str, float], list[float | None], dict]:
        """Scores (mean over runs), each question's mean grade, and every run's scores for results.json."""
        runs = self.judge_runs
        grades = judge.grades
        per = [sum(grades[i:i + runs]) / runs for i in range(0, len(grades), runs)]
        per_run = metric.compute_runs()  # one sync; the reported scores are derived from the runs
        return mean_over_runs(per_run), per, {"judge_run_scores": per_run}


class MMVet(_QuestionFile, _Judged):
    """MM-Vet: judge-graded open answers (GPT-4 grader prompt; offline RuleJudge by default). Writes the
    official results JSON {"v1_<qid>": answer} for the MM-Vet grader."""

    kind = "mmvet"

    def _load(self) -> list[Question]:
        qs = [q for _, _, q in self._llava_questions(self.questions_file, self.image_root)]
        if self.annotations:
            p = require_file(self.annotations, "MM-Vet annotations (mm-vet.json)")
            gt = read_json(p)
            if not isinstance(gt, dict):
                raise BenchmarkFileError(f"{p}: expected a JSON object keyed by 'v1_<id>'")
            for q in qs:
                key = f"v1_{q.question_id}"
                entry = gt.get(key)
                if entry is None:
                    raise BenchmarkFileError(f"{q.where}: {key!r} is not in {p}")
                at = f"{p}: {key}"
                caps = get(entry, "capability", at, list)
                if unknown := set(caps) - set(MMVET_CAPABILITIES):
                    raise BenchmarkFileError(f"{at}: unknown capabilities {sorted(unknown)}")
                q.reference = get(entry, "answer", at, str)
                q.meta.update(question=get(entry, "question", at, str), capabilities=caps)
        return qs

    def judge_temperature(self) -> float | None:
        temperatures = getattr(self.judge, "mmvet_temperatures", None)
        return None if not temperatures else float(temperatures[0])  # unparsable replies retry hotter

    def _score(self, qs: list[Question], texts: list[str]) -> tuple:
        judge = _Recording(self.judge)
        metric = MMVetScore(judge=judge, runs=self.judge_runs, **LOCAL)
        metric.update(texts, [q.meta["question"] for q in qs], [q.reference for q in qs],
                      [q.meta["capabilities"] for q in qs])
        return self._judged(metric, judge)

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        return [_write_json(out_dir / "mmvet_results.json",
                            {f"v1_{q.question_id}": t for q, t in zip(qs, texts, strict=True)})]


class LLaVABench(_Judged):
    """LLaVA-Bench-in-the-Wild: judge-reviewed against GPT-4 reference answers, relative score x100."""

    kind = "llava_bench"

    def __init__(self, questions: str, context: str | None, references: str | None, image_root: str,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.questions_file, self.context, self.references, self.image_root = questions, context, references, \
            image_root

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file, "context": self.context, "references": self.references}

    def _load(self) -> list[Question]:
        rows = self._llava_questions(self.questions_file, self.image_root)
        for _, row, q in rows:
            category = get(row, "category", q.where, str)
            if category not in LLAVA_BENCH_CATEGORIES:
                raise BenchmarkFileError(f"{q.where}: category {category!r} is not one of {LLAVA_BENCH_CATEGORIES}")
            q.meta.update(category=category, image_name=get(row, "image", q.where, str))
        if self.context and self.references:
            pc, pr = require_file(self.context, "LLaVA-Bench context.jsonl"), \
                require_file(self.references, "LLaVA-Bench answers_gpt4.jsonl")
            captions = {get(r, "image", where(pc, n), str): get(r, "caption", where(pc, n), (str, list))
                        for n, r in read_jsonl(pc)}
            refs = {get(r, "question_id", where(pr, n)): get(r, "text", where(pr, n), str) for n, r in read_jsonl(pr)}
            for _, _, q in rows:
                if q.question_id not in refs:
                    raise BenchmarkFileError(f"{q.where}: question_id {q.question_id!r} has no reference in {pr}")
                if q.meta["image_name"] not in captions:
                    raise BenchmarkFileError(f"{q.where}: image {q.meta['image_name']!r} has no caption in {pc}")
                q.reference = refs[q.question_id]
                q.meta["context"] = captions[q.meta["image_name"]]
        return [q for _, _, q in rows]

    def judge_temperature(self) -> float | None:
        temperature = getattr(self.judge, "llava_bench_temperature", None)
        return None if temperature is None else float(temperature)

    def _score(self, qs: list[Question], texts: list[str]) -> tuple:
        judge = _Recording(self.judge)
        metric = LLaVABenchScore(judge=judge, runs=self.judge_runs, **LOCAL)
        metric.update(texts, [q.text for q in qs], [q.reference for q in qs], [q.meta["context"] for q in qs],
                      [q.meta["category"] for q in qs])
        return self._judged(metric, judge)


BENCHMARKS: dict[str, type[Benchmark]] = {c.kind: c for c in (VQAv2, GQA, VizWiz, ScienceQA, TextVQA, POPE, MME,
                                                             MMBench, SEED, MMVet, LLaVABench)}
