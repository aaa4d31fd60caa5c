"""RefCOCO-style referring-expression grounding: the model writes a box for a phrase, scored by Acc@0.5.

Not one of LLaVA-1.5's twelve benchmarks, but its training mix holds RefCOCO in this very format (spec/llava15.md
2.2), and the ablation ladder's "+Region-level VQA" rung is about it: this task measures what that data teaches.
One JSONL file holds questions and references (a line per expression, as one split of RefCOCO val / testA / testB):

    {"question_id": 0, "image": "COCO_train2014_000000000001.jpg",
     "text": "Please provide the bounding box coordinate of the region this sentence describes: the man on the left.",
     "bbox": [0.12, 0.30, 0.45, 0.98], "width": 640, "height": 480}

`bbox` is [x1, y1, x2, y2] normalised by the image's width and height. `box_frame` says how the model's answers are
read (lmm.eval.scoring.grounding: "image", or "padded_square" for checkpoints trained on boxes normalised by the
padded square).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmm.eval.files import BenchmarkFileError
from lmm.eval.files import field as get
from lmm.eval.scoring.grounding import BOX_FRAMES, GroundingAccuracy, box_iou, prediction_box
from lmm.eval.tasks.base import LOCAL, Question, QuestionFileBenchmark


class RefCOCO(QuestionFileBenchmark):
    """Referring-expression grounding scored by accuracy at IoU >= `iou_threshold` (Acc@0.5), the headline.

    Writes refcoco_predictions.jsonl: each answer's parsed box (image frame; null when unparsable) and its IoU.
    """

    kind = "refcoco"

    def __init__(self, questions: str | Path | None = None, image_root: str | Path | None = None,
                 box_frame: str = "image", iou_threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(questions, None, image_root, **kwargs)
        if box_frame not in BOX_FRAMES:
            raise ValueError(f"{self.name}: box_frame must be one of {BOX_FRAMES}, got {box_frame!r}")
        self.box_frame, self.iou_threshold = box_frame, float(iou_threshold)

    def files(self) -> dict[str, str | None]:
        return {"questions": self.questions_file}

    def _load(self) -> list[Question]:
        qs = []
        for _, row, q in self._llava_questions(self.questions_file, self.image_root):
            bbox = get(row, "bbox", q.where, list)
            if len(bbox) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
                raise BenchmarkFileError(f"{q.where}: 'bbox' must be four numbers [x1, y1, x2, y2], got {bbox!r}")
            if not (0 <= bbox[0] < bbox[2] <= 1 and 0 <= bbox[1] < bbox[3] <= 1):
                raise BenchmarkFileError(f"{q.where}: 'bbox' must be normalised to [0, 1] with x1 < x2 and y1 < y2 "
                                         f"(image frame), got {bbox!r}")
            width, height = get(row, "width", q.where, int), get(row, "height", q.where, int)
            if width <= 0 or height <= 0:
                raise BenchmarkFileError(f"{q.where}: 'width' and 'height' must be positive, got {width}x{height}")
            q.reference = tuple(float(v) for v in bbox)
            q.meta.update(width=width, height=height)
            qs.append(q)
        return qs

    def reference_text(self, q: Question) -> str:
        return "[" + ", ".join(f"{v:.2f}" for v in q.reference) + "]" if q.reference else ""

    def _score(self, qs: list[Question], texts: list[str]) -> tuple[dict[str, float], list[float | None]]:
        metric = GroundingAccuracy(box_frame=self.box_frame, threshold=self.iou_threshold, **LOCAL)
        boxes, sizes = [q.reference for q in qs], [(q.meta["width"], q.meta["height"]) for q in qs]
        metric.update(texts, boxes, sizes)
        per = [float(iou is not None and iou >= self.iou_threshold) for iou in metric.ious(texts, boxes, sizes)]
        return metric.compute(), per

    def write_submission(self, out_dir: Path, qs: Sequence[Question], texts: Sequence[str]) -> list[Path]:
        path = out_dir / "refcoco_predictions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        for q, t in zip(qs, texts, strict=True):
            box = prediction_box(t, q.meta["width"], q.meta["height"], self.box_frame)
            iou = None if box is None or q.reference is None else box_iou(box, q.reference)
            rows.append({"question_id": q.question_id, "prediction": t,
                         "box": None if box is None else [round(v, 4) for v in box], "iou": iou})
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return [path]

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"box_frame": self.box_frame, "iou_threshold": self.iou_threshold}
