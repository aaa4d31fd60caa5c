"""Referring-expression grounding (RefCOCO / RefCOCO+ / RefCOCOg): accuracy at IoU >= 0.5 ("Acc@0.5", the
val / testA / testB protocol of the grounding literature), with LLaVA-1.5's box format.

LLaVA-1.5 trains on RefCOCO as "Please provide the bounding box coordinate of the region this sentence describes:
{expression}." -> "[x1, y1, x2, y2]", coordinates normalised to [0, 1] with two decimals (spec/llava15.md 2.2). The
answer is free text, so the scorer reads the first four numbers in it; an answer with fewer is unparsable, counts as
wrong and is counted ("n_unparsable"), because a model that stops writing boxes is a different failure from one that
writes wrong boxes.

Which frame the model's boxes are normalised in is an open question for LLaVA-1.5 (llava15.md 2.2: VG boxes appear to
be normalised by the padded square image, RefCOCO's are unclear), so it is a setting: "image" reads the numbers as
fractions of the image's width and height, "padded_square" as fractions of the side of the square the image is
pasted into, centred (LLaVA's expand-to-square). IoU itself does not depend on the frame (it is unchanged by scaling
each axis), only the reading of the prediction does: a padded-square box is converted to the image frame first.
Boxes are not clipped to the image (a box running into the padding is larger, and its IoU lower), and a box whose
corners are out of order has no area (IoU 0), as a box-drawing reading of the answer would give.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from lmm.eval.scoring._state import ratio

Box = tuple[float, float, float, float]  # x1, y1, x2, y2
BOX_FRAMES = ("image", "padded_square")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)")


def parse_box(text: str) -> Box | None:
    """The first four numbers of an answer as (x1, y1, x2, y2); None when it holds fewer than four."""
    numbers = _NUMBER.findall(text)
    if len(numbers) < 4:
        return None
    x1, y1, x2, y2 = (float(n) for n in numbers[:4])
    return x1, y1, x2, y2


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when the union has no area."""
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _square(width: float, height: float) -> tuple[float, float, float]:
    """(side, x offset, y offset) of the image inside its centred padded square, in pixels."""
    side = max(width, height)
    return side, (side - width) / 2, (side - height) / 2


def padded_to_image(box: Sequence[float], width: float, height: float) -> Box:
    """A box normalised by the padded square -> the same box normalised by the image's width and height."""
    side, ox, oy = _square(width, height)
    return ((box[0] * side - ox) / width, (box[1] * side - oy) / height,
            (box[2] * side - ox) / width, (box[3] * side - oy) / height)


def image_to_padded(box: Sequence[float], width: float, height: float) -> Box:
    """The inverse of padded_to_image (for writing references in the padded-square frame)."""
    side, ox, oy = _square(width, height)
    return ((box[0] * width + ox) / side, (box[1] * height + oy) / side,
            (box[2] * width + ox) / side, (box[3] * height + oy) / side)


def prediction_box(text: str, width: float, height: float, box_frame: str = "image") -> Box | None:
    """The answer's box in the image frame (None: unparsable)."""
    if box_frame not in BOX_FRAMES:
        raise ValueError(f"box_frame must be one of {BOX_FRAMES}, got {box_frame!r}")
    box = parse_box(text)
    if box is None or box_frame == "image":
        return box
    return padded_to_image(box, width, height)


class GroundingAccuracy(Metric):
    """Acc@IoU: the fraction of answers whose box overlaps the reference with IoU >= `threshold` (0.5 counts).

    update(preds, boxes, sizes=None): raw model texts, reference boxes normalised in the image frame, and each
    image's (width, height) (needed for box_frame="padded_square"). compute(): {"acc", "miou" (mean IoU, unparsable
    answers 0), "unparsable" (fraction), "n_unparsable" (count)}.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, box_frame: str = "image", threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if box_frame not in BOX_FRAMES:
            raise ValueError(f"box_frame must be one of {BOX_FRAMES}, got {box_frame!r}")
        self.box_frame, self.threshold = box_frame, float(threshold)
        self.add_state("hits", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("unparsed", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def ious(self, preds: Sequence[str], boxes: Sequence[Sequence[float]],
             sizes: Sequence[tuple[float, float]] | None = None) -> list[float | None]:
        """Each answer's IoU with its reference (None: unparsable)."""
        if sizes is None:
            if self.box_frame != "image":
                raise ValueError("box_frame='padded_square' needs each image's (width, height)")
            sizes = [(1.0, 1.0)] * len(preds)
        out: list[float | None] = []
        for pred, ref, (w, h) in zip(preds, boxes, sizes, strict=True):
            box = prediction_box(pred, w, h, self.box_frame)
            out.append(None if box is None else box_iou(box, ref))
        return out

    def update(self, preds: Sequence[str], boxes: Sequence[Sequence[float]],
               sizes: Sequence[tuple[float, float]] | None = None) -> None:
        ious = self.ious(preds, boxes, sizes)
        self.hits += sum(iou is not None and iou >= self.threshold for iou in ious)
        self.unparsed += sum(iou is None for iou in ious)
        self.iou_sum += sum(iou for iou in ious if iou is not None)
        self.total += len(ious)

    def compute(self) -> dict[str, float]:
        return {"acc": ratio(self.hits, self.total), "miou": ratio(self.iou_sum, self.total),
                "unparsable": ratio(self.unparsed, self.total), "n_unparsable": float(self.unparsed)}
