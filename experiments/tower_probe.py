"""Does a world's CLIP see what its captions say? Minimal pairs on held-out scenes, one per thing a caption names.

For each fresh scene (a sign and at least one object), the scene's own caption is ranked by the CLIP against the
same caption with one thing changed: the sign's word (15 other words), one kind (each kind the scene lacks) or one
colour (each colour the scene lacks). Top-1 of the true caption, by what was changed and, for the word, by print
size; chance is one over the number of candidates. Retrieval among whole captions can be won on colours and the
background alone; these pairs cannot.

    python experiments/tower_probe.py .cache/lmm/worlds/tiny-<hash>            # both resolutions of a built world
    python experiments/tower_probe.py <world> --scenes 600 --seed 7
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPModel

from lmm.world.questions import caption, plural
from lmm.world.scenes import COLORS, KINDS, WORDS, Scene, render, sample_scene
from lmm.world.zoo_clip import crop_pixels, normalize

TOWERS = (("clip-tiny-res224", "res224"), ("clip-tiny-res336", "res336"))


def swaps(scene: Scene, text: str) -> dict[str, list[str]]:
    """The caption's minimal-pair candidates by what they change (the true caption first in each list)."""
    word = scene.signs[0].word
    out = {"word": [text] + [re.sub(rf"\b{word}\b", w, text) for w in WORDS if w != word]}
    first = scene.objects[0]
    absent_kinds = [k for k in KINDS if not scene.count(k)]
    out["kind"] = [text] + [re.sub(rf"\b{first.kind}(e?s)?\b", lambda m, k=k: plural(k) if m.group(1) else k, text,
                                   count=1) for k in absent_kinds]
    absent_colours = [c for c in COLORS if not scene.count(colour=c)]
    out["colour"] = [text] + [re.sub(rf"\b{first.colour}\b", c, text, count=1) for c in absent_colours]
    return {k: v for k, v in out.items() if len(set(v)) == len(v) > 1}


def probe(folder: Path, scenes: list[Scene], texts: list[str]) -> dict[str, tuple[float, float, int]]:
    """{what: (top-1, chance, n)} for one CLIP folder."""
    model, tokenizer = CLIPModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    size = model.config.vision_config.image_size
    with torch.no_grad():
        pixels = normalize(crop_pixels([render(s) for s in scenes], size))
        images = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    right: dict[str, list[float]] = {}
    for i, (scene, text) in enumerate(zip(scenes, texts, strict=True)):
        for what, cands in swaps(scene, text).items():
            key = f"word, {scene.signs[0].print} print" if what == "word" else what
            with torch.no_grad():
                enc = tokenizer(cands, padding=True, return_tensors="pt")
                emb = torch.nn.functional.normalize(model.get_text_features(**enc).pooler_output, dim=-1)
            right.setdefault(key, []).append(float(int((emb @ images[i]).argmax()) == 0))
            right.setdefault(f"{key} (chance)", []).append(1 / len(cands))
    return {k: (sum(v) / len(v), sum(right[f"{k} (chance)"]) / len(v), len(v))
            for k, v in sorted(right.items()) if not k.endswith("(chance)")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world", type=Path, help="a built world's folder (.cache/lmm/worlds/<name>-<hash>)")
    ap.add_argument("--scenes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(f"tower-probe-{args.seed}")
    scenes = [s for s in (sample_scene(rng, sign_rate=1.0) for _ in range(args.scenes)) if s.objects]
    texts = [caption(s, rng) for s in scenes]
    print("| tower | changed | top-1 | chance | pairs |\n|---|---|---|---|---|")
    for folder, name in TOWERS:
        if (args.world / folder).exists():
            for what, (top1, chance, n) in probe(args.world / folder, scenes, texts).items():
                print(f"| {name} | {what} | {100 * top1:.1f} | {100 * chance:.1f} | {n} |")


if __name__ == "__main__":
    main()
