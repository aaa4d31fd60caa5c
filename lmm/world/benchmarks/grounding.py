"""The RefCOCO analog: a referring expression for one object of a held-out scene, its box as the reference
(lmm.eval.tasks.refcoco reads it; the prompt is LLaVA-1.5's RefCOCO training prompt, spec/llava15.md 2.2).

Boxes are written in the image frame (normalised by the image's width and height), as the world's training data
writes them; the task's `box_frame` says how answers are read.
"""

from __future__ import annotations

import random
from pathlib import Path

from lmm.data.formats import REGION_TO_BOX
from lmm.world.benchmarks.common import Built, save_scene, scene_with, until, write_jsonl
from lmm.world.questions import referring_expression
from lmm.world.scenes import Scene


def build_refcoco(d: Path, n: int, rng: random.Random) -> Built:
    """refcoco_val.jsonl ({question_id, image, text, bbox, width, height}) + images/: one expression per image, the
    object drawn uniformly among those an expression picks out."""
    rows = []
    for i in range(n):
        def make(r: random.Random) -> tuple[Scene, int, str] | None:
            scene = scene_with(r)
            named = [(k, e) for k in range(len(scene.objects)) if (e := referring_expression(scene, k))]
            return (scene, *r.choice(named)) if named else None

        scene, k, expression = until(rng, make)
        image = f"COCO_train2014_{100000 + i:012d}.png"
        save_scene(scene, d / "images" / image)
        rows.append({"question_id": i, "image": image, "text": f"{REGION_TO_BOX} {expression}.",
                     "bbox": [round(v, 4) for v in scene.objects[k].box], "width": scene.width,
                     "height": scene.height, "category": "val"})
    write_jsonl(d / "refcoco_val.jsonl", rows)
    return {"questions": n, "images": n}
