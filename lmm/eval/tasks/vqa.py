"""The VQA-accuracy family: VQAv2, VizWiz and TextVQA, scored against 10 human answers each (eval.md 3.3, 4.1, 4.3,
4.5)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmm.data.formats import SHORT_ANSWER, UNANSWERABLE
from lmm.eval.files import BenchmarkFileError, json_list_lines, read_json, require_file, where, write_json
from lmm.eval.files import field as get
from lmm.eval.scoring import VQAAccuracy, normalize_vqa_answer, vqa_score
from lmm.eval.tasks.base import LOCAL, Benchmark, Question, QuestionFileBenchmark


class VQAFamily(Benchmark):
    """VQA accuracy with 10 human answers (VQAv2, VizWiz, TextVQA).

    `server=True` reproduces what the EvalAI servers score: LLaVA uploads answers already passed through the EvalAI
    processor and the server runs GT-Vision-Lab's vqaEval (eval.md 3.3). `server=False` is the m4c/TextVQA
    evaluator: the processor on prediction and every human answer.
    """

    server: bool = True

    def __init__(self, server: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if server is not None:  # None: the family member's own evaluator
            self.server = bool(server)

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


class VQAv2(QuestionFileBenchmark, VQAFamily):
    """VQAv2. LLaVA reports test-dev (EvalAI only); the local proxy is val2014 with its official annotations.

    Questions come from a LLaVA-format file when `questions` exists, else are built from the official questions
    JSON (`official_questions`) as "<question>\\n<short-answer prompt>" with images named by `image_pattern`.
    Without annotations (test-dev) nothing is scored; vqav2_upload.json is written for EvalAI (with
    `upload_questions` = the test2015 questions JSON, every unanswered question gets "", as the server wants).
    """

    kind = "vqav2"

    def __init__(self, questions: str | Path | None = None, annotations: str | Path | None = None,
                 image_root: str | Path | None = None, official_questions: str | Path | None = None,
                 image_pattern: str = "COCO_val2014_{image_id:012d}.jpg", upload_questions: str | Path | None = None,
                 **kwargs: Any) -> None:
        super().__init__(questions, annotations, image_root, **kwargs)
        self.official_questions, self.image_pattern, self.upload_questions = official_questions, image_pattern, \
            upload_questions

    def files(self) -> dict[str, str | None]:
        return super().files() | {"official_questions": self.official_questions}

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
        return [write_json(out_dir / "vqav2_upload.json", rows)]


class VizWiz(QuestionFileBenchmark, VQAFamily):
    """VizWiz (test: EvalAI upload only; val with `annotations` = the official val.json: scored locally).

    Ground truth is matched by image file name (the upload format keys answers by image, too). Without a question
    file, questions are built from the annotations with LLaVA's unanswerable + short-answer prompts.
    """

    kind = "vizwiz"

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
            qs = [Question(i, i, f"{question}\n{UNANSWERABLE}\n{SHORT_ANSWER}",
                           self._image(self.image_root, image, at), at, answers, {"answer_type": kind})
                  for i, (image, (question, answers, kind, at)) in enumerate(gt.items())]
        else:
            raise BenchmarkFileError(f"{self.name}: neither the question file {self.questions_file} nor "
                                     "`annotations` exists")
        return qs

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        rows = [{"image": Path(str(q.image)).name, "answer": normalize_vqa_answer(t)}
                for q, t in zip(qs, texts, strict=True)]
        return [write_json(out_dir / "vizwiz_upload.json", rows)]


class TextVQA(QuestionFileBenchmark, VQAFamily):
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
