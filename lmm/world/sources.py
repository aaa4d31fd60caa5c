"""The tiny world's training sources, in LLaVA's format: align.json (captions), instruct.json (a mixture of chats,
short-answer VQA with the format prompt and text-only samples) and eval_vqa.jsonl, with their images.

The same record layout and image folder convention as LLaVA's data, so the tiny preset reads them as the paper preset
reads LCS-558K and the 665K mixture (data=world_mix carves instruct.json into sources by the same rules).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lmm.data.formats import SHORT_ANSWER
from lmm.world.scenes import Scene, caption, conversation, render, sample_scene, short_vqa, text_only


def build_sources(root: Path, num_align: int, num_instruct: int, num_eval: int, seed: int = 0) -> dict[str, Path]:
    """Render images and write align.json (captions), instruct.json (mixture) and eval_vqa.jsonl under `root`."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)

    def new_image(prefix: str, i: int) -> tuple[Scene, str]:
        scene = sample_scene(rng)
        rel = f"images/{prefix}_{i:06d}.png"
        render(scene).save(root / rel)
        return scene, rel

    align = []
    for i in range(num_align):
        scene, rel = new_image("align", i)
        align.append({"id": f"align-{i}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": caption(scene)}]})
    instruct = []
    for i in range(num_instruct):
        kind = rng.random()
        if kind < 0.1:
            instruct.append({"id": f"text-{i}", "conversations": text_only(rng)})
            continue
        scene, rel = new_image("instruct", i)
        turns = conversation(scene, rng) if kind < 0.55 else short_vqa(scene, rng)[0]
        instruct.append({"id": f"instruct-{i}", "image": rel, "conversations": turns})
    questions = []
    for i in range(num_eval):
        scene, rel = new_image("eval", i)
        _, q, a = short_vqa(scene, rng)
        questions.append({"question_id": f"eval-{i}", "image": rel, "text": f"{q}\n{SHORT_ANSWER}", "answer": a})
    paths = {"align": root / "align.json", "instruct": root / "instruct.json", "eval": root / "eval_vqa.jsonl"}
    paths["align"].write_text(json.dumps(align))
    paths["instruct"].write_text(json.dumps(instruct))
    paths["eval"].write_text("".join(json.dumps(q) + "\n" for q in questions))
    return paths

