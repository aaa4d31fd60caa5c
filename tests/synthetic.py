"""The data tests' kit: a tiny tokenizer, a template and an image transform, to build a LlavaDataModule without a model
(their sources are lmm.world.noise's)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmm.data.formats import SHORT_ANSWER
from lmm.data.templates import VICUNA_V1_SYSTEM, VicunaV1Template
from lmm.model.preprocess import ImageTransform
from lmm.world.noise import WORDS, write_source
from lmm.world.zoo import build_tokenizer


def tiny_tokenizer(out_dir: str | Path) -> Any:
    """A Llama-like BPE over the noise sources' words and the Vicuna template's strings (trained in ~0.1 s)."""
    texts = [" ".join(WORDS)] * 4 + [VICUNA_V1_SYSTEM, "USER:", "ASSISTANT:", "\n", SHORT_ANSWER]
    return build_tokenizer(texts, Path(out_dir), vocab_size=256)


def data_kit(out_dir: str | Path, image_size: int = 32) -> dict[str, Any]:
    """Tokenizer, stage-2 template and image transform for building a LlavaDataModule without a model."""
    return {"tokenizer": tiny_tokenizer(out_dir), "template": VicunaV1Template(),
            "image_transform": ImageTransform(image_size)}


@contextlib.contextmanager
def lmm_messages() -> Iterator[list[str]]:
    """The messages lmm's logger (lmm.log) writes while the block runs, whatever their level."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("lmm"), Collect()
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def image_and_text_sources(root: Path, n_image: int, n_text: int) -> list[dict[str, str]]:
    """Two source specs over `root`: `img` (every record with an image) and `txt` (text-only), 1-2 turns each."""
    specs = []
    for name, n, frac in (("img", n_image, 1.0), ("txt", n_text, 0.0)):
        records, image_root = write_source(root, name, n, image_fraction=frac, seed=len(name), turns=(1, 2))
        specs.append({"name": name, "records": str(records), "image_root": str(image_root)})
    return specs
