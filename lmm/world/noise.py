"""Noise sources: LLaVA-format files of random words and random-noise images, at any size and count.

The tiny world's scenes mean something (a model can learn them); these do not, on purpose: they exist for what is
measured on the data side, reading, validating, decoding and batching, where chosen sizes matter (tiny PNGs like the
world's, or COCO-sized JPEGs for paper-scale decoding costs) and meaning does not. The data tests build their sources
here, and so does perf/input_pipeline.py; real sources cannot be downloaded on these machines.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

WORDS = ("red green blue yellow circle square triangle left right top bottom center shape image what where is the "
         "a of colour how many there are one two three background white black").split()


def image_bytes(rng: np.random.Generator, size: tuple[int, int], fmt: str) -> bytes:
    """A random-noise image (noise keeps JPEG/PNG decode costs realistic rather than trivially compressible)."""
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    kwargs = {"quality": 90} if fmt.upper() == "JPEG" else {}
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def sentence(rng: np.random.Generator, n: int) -> str:
    """n random words of WORDS."""
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def make_records(name: str, n: int, image_fraction: float = 1.0, seed: int = 0, folder: str = "images",
                 ext: str = "png", suffix: str | None = None, turns: tuple[int, int] = (1, 3),
                 words: tuple[int, int] = (3, 12)) -> list[dict[str, Any]]:
    """`n` records with ids "<name>-<i>"; a share of them with an image at <folder>/<name>_<i>.<ext>."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rec: dict[str, Any] = {"id": f"{name}-{i}"}
        has_image = rng.random() < image_fraction
        convs = []
        for t in range(int(rng.integers(turns[0], turns[1] + 1))):
            q = sentence(rng, int(rng.integers(*words))) + "?"
            if suffix:
                q = f"{q}\n{suffix}"
            if t == 0 and has_image:
                q = "<image>\n" + q
            convs += [{"from": "human", "value": q}, {"from": "gpt", "value": sentence(rng, int(rng.integers(*words)))}]
        rec["conversations"] = convs
        if has_image:
            rec["image"] = f"{folder}/{name}_{i:06d}.{ext}"
        out.append(rec)
    return out


def write_source(root: str | Path, name: str, n: int, image_fraction: float = 1.0, seed: int = 0,
                 image_size: tuple[int, int] = (48, 40), ext: str = "png", suffix: str | None = None,
                 jsonl: bool = False, **kwargs: Any) -> tuple[Path, Path]:
    """Write `<root>/<name>.json(l)` and its images under `<root>/images/`; return (records file, image root)."""
    root = Path(root)
    records = make_records(name, n, image_fraction, seed, ext=ext, suffix=suffix, **kwargs)
    rng = np.random.default_rng(seed + 1)
    fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}[ext]
    for rec in records:
        if "image" in rec:
            path = root / rec["image"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image_bytes(rng, image_size, fmt))
    path = root / f"{name}.{'jsonl' if jsonl else 'json'}"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) if jsonl else json.dumps(records))
    return path, root
