"""ScienceQA-IMG (eval.md 4.4): the option-letter rules of eval_science_qa.py."""

from __future__ import annotations

import re
from typing import Any

from lmm.data.formats import MULTIPLE_CHOICE
from lmm.eval.files import BenchmarkFileError, json_list_lines, read_json, require_file, where
from lmm.eval.files import field as get
from lmm.eval.scoring import ScienceQAAccuracy, extract_sqa_letter
from lmm.eval.tasks.base import LOCAL, Benchmark, Question

_LETTERS = "ABCDE"


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
            text = get(convs[0], "value", at, str).replace("<image>", "").strip() + "\n" + MULTIPLE_CHOICE
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

    def question_record(self, q: Question, text: str, score: float | None) -> dict[str, Any]:
        """SQA-IMG counts the image questions only."""
        return super().question_record(q, text, score) | {"in_headline": bool(q.meta["has_image"])}

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = ScienceQAAccuracy(**LOCAL)
        metric.update(texts, [q.reference[0] for q in qs], [q.reference[1] for q in qs],
                      [q.meta["has_image"] for q in qs])
        per = []
        for q, t in zip(qs, texts, strict=True):
            letter = extract_sqa_letter(t.strip())
            per.append(float(letter in _LETTERS[: q.reference[1]] and _LETTERS.index(letter) == q.reference[0]))
        return metric.compute(), per
