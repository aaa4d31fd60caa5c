"""Image loading and the CLIP-style preprocessing of LLaVA ("pad" to a mean-coloured square, or resize + crop)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lmm.constants import ASPECTS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageError(ValueError):
    """An image file is missing or cannot be decoded; the message names the path."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB, turning every failure into an ImageError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {path}") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from e


def expand_to_square(img: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """LLaVA's expand2square: paste the image centred on a square of side max(w, h) filled with `fill`."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _resample(value: int | str) -> Image.Resampling:
    """Accept PIL's enum, its int (3 = bicubic) or a name such as "bicubic" (handy in Hydra configs)."""
    if isinstance(value, str):
        return Image.Resampling[value.upper()]
    return Image.Resampling(int(value))


def _side(size: Any) -> int | None:
    """Square side from an HF size field (int, {"height","width"} or {"shortest_edge"})."""
    if size is None or isinstance(size, int):
        return size
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    if size.get("height") != size.get("width"):
        raise ValueError(f"non-square size {size} is not supported")
    return int(size["height"])


class ImageTransform:
    """PIL image -> normalised float tensor [3, S, S], pixel-identical to HF's CLIP processor (PIL backend)."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        aspect: str = "pad",
        resample: int | str = "bicubic",
        resize_size: int | None = None,
    ) -> None:
        if aspect not in ASPECTS:
            raise ValueError(f"aspect must be one of {ASPECTS}, got {aspect!r}")
        self.image_size, self.aspect = int(image_size), aspect
        self.resize_size = int(resize_size) if resize_size is not None else self.image_size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.resample = _resample(resample)
        self.pad_color = tuple(int(255 * m) for m in self.mean)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, aspect: str | None = None) -> ImageTransform:
        """Read size, mean, std and resample from an HF preprocessor_config.json (folder, file or hub id).

        `aspect` None: the file's own pad/crop (lmm writes LLaVA's `image_aspect_ratio`; a Llava processor's
        `do_pad: false` means crop), else LLaVA-1.5's "pad"; a given `aspect` wins.
        """
        p = Path(path)
        file = p / "preprocessor_config.json" if p.is_dir() else p
        if file.is_file():
            cfg = json.loads(file.read_text())
        else:
            from transformers.image_processing_base import ImageProcessingMixin

            cfg, _ = ImageProcessingMixin.get_image_processor_dict(str(path))
        resize = _side(cfg.get("size"))
        crop = _side(cfg.get("crop_size")) if cfg.get("do_center_crop", True) else None
        if crop is None and resize is None:
            raise ValueError(f"{path}: image processor config has neither crop_size nor size")
        return cls(
            image_size=crop or resize,
            mean=cfg.get("image_mean", CLIP_MEAN),
            std=cfg.get("image_std", CLIP_STD),
            aspect=aspect or cfg.get("image_aspect_ratio") or ("crop" if cfg.get("do_pad") is False else "pad"),
            resample=cfg.get("resample", "bicubic"),
            resize_size=resize or crop,
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Pad or not, resize the shortest edge, centre-crop, rescale by 1/255 and normalise."""
        img = image.convert("RGB")
        if self.aspect == "pad":
            img = expand_to_square(img, self.pad_color)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.resize_size * long / short)  # HF's get_resize_output_image_size (floor)
        new_w, new_h = (self.resize_size, new_long) if w <= h else (new_long, self.resize_size)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample=self.resample)
        s = self.image_size
        top, left = (new_h - s) // 2, (new_w - s) // 2
        if top < 0 or left < 0:
            raise ValueError(f"resize size {self.resize_size} is smaller than the crop {s}")
        arr = np.asarray(img)[top : top + s, left : left + s]
        x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
