"""The image preprocessing of a vision encoder, and the one rule that decides it for a given tower.

It lives beside the encoder because it belongs to the encoder's weights: a tower trained on CLIP statistics at 336px
must see exactly those pixels when the stage trains, in a saved model folder, at evaluation and in a Hugging Face
export. `encoder_transform` is the single place that decides what they are (VisionEncoder.image_transform calls it);
every other part of lmm asks the encoder.

ImageTransform is LLaVA's CLIP-style pipeline ("pad" to a mean-coloured square, or resize + centre crop),
pixel-identical to Hugging Face's CLIP processor (PIL backend).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lmm.constants import ASPECTS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
PREPROCESSOR = "preprocessor_config.json"
ASPECT_KEY = "image_aspect_ratio"  # LLaVA's name for pad/crop; HF image processors ignore the extra key


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


def tower_image_size(config: Mapping[str, Any]) -> int | None:
    """The input resolution in a vision tower's (or a Llava model's) config.json dict."""
    size = config.get("image_size")
    if size is None and isinstance(config.get("vision_config"), Mapping):
        size = config["vision_config"].get("image_size")
    return None if size is None else int(size)


def _family(config: Mapping[str, Any]) -> str:
    """"siglip" or "clip": whose normalisation statistics a tower was trained with."""
    vision = config.get("vision_config") or {}
    return "siglip" if "siglip" in f"{config.get('model_type', '')} {vision.get('model_type', '')}" else "clip"


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

    def __repr__(self) -> str:
        return (f"ImageTransform({self.image_size}, aspect={self.aspect!r}, resize_size={self.resize_size}, "
                f"mean={self.mean}, std={self.std}, resample={self.resample.name.lower()!r})")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, aspect: str | None = None) -> ImageTransform:
        """Read size, mean, std and resample from an HF preprocessor_config.json (folder, file or hub id).

        `aspect` None: the file's own pad/crop (lmm writes LLaVA's `image_aspect_ratio`; a Llava processor's
        `do_pad: false` means crop), else LLaVA-1.5's "pad"; a given `aspect` wins.
        """
        p = Path(path)
        file = p / PREPROCESSOR if p.is_dir() else p
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
            aspect=aspect or cfg.get(ASPECT_KEY) or ("crop" if cfg.get("do_pad") is False else "pad"),
            resample=cfg.get("resample", "bicubic"),
            resize_size=resize or crop,
        )

    @classmethod
    def tower_defaults(cls, tower_config: Mapping[str, Any], aspect: str = "pad") -> ImageTransform:
        """The preprocessing a tower's own family uses at its resolution (CLIP or SigLIP statistics), for a tower
        whose processor config is not at hand."""
        size = tower_image_size(tower_config)
        if size is None:
            raise ValueError("the encoder config has no image_size: cannot derive its image preprocessing")
        mean, std = (SIGLIP_MEAN, SIGLIP_STD) if _family(tower_config) == "siglip" else (CLIP_MEAN, CLIP_STD)
        return cls(size, mean, std, aspect=aspect)

    def with_aspect(self, aspect: str) -> ImageTransform:
        """The same preprocessing with another pad/crop choice."""
        if aspect == self.aspect:
            return self
        return ImageTransform(self.image_size, self.mean, self.std, aspect, int(self.resample), self.resize_size)

    def processor_config(self) -> dict[str, Any]:
        """A CLIPImageProcessor-style preprocessor_config.json that reproduces this transform (and names its aspect),
        so that a saved model folder describes the pixels its encoder was trained on."""
        side = self.image_size
        return {"image_processor_type": "CLIPImageProcessor", "do_convert_rgb": True,
                "do_resize": True, "size": {"shortest_edge": self.resize_size}, "resample": int(self.resample),
                "do_center_crop": True, "crop_size": {"height": side, "width": side},
                "do_rescale": True, "rescale_factor": 1 / 255,
                "do_normalize": True, "image_mean": list(self.mean), "image_std": list(self.std),
                ASPECT_KEY: self.aspect}

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


def encoder_transform(tower_config: Mapping[str, Any], source: str | os.PathLike | None = None,
                      aspect: str | None = None) -> ImageTransform:
    """The image preprocessing of a vision tower: the one rule training, saving, evaluation and export all follow.

    The processor config at `source` (the tower's folder, a preprocessor_config.json, a hub id or a Llava folder)
    when there is one; else, with a warning, the tower family's defaults (CLIP or SigLIP statistics) at the tower's
    resolution. `aspect` None keeps the config's own pad/crop (LLaVA-1.5's "pad" when it names none); a given
    `aspect` wins. A processor that crops to another size than the tower takes is refused: the model would see
    pixels it was never trained on.
    """
    size = tower_image_size(tower_config)
    transform = None
    if source is not None:
        try:
            transform = ImageTransform.from_pretrained(source, aspect=aspect)
        except OSError as e:  # no processor config there (a bare tower folder, an unreachable hub id)
            warnings.warn(f"no image processor config for the encoder {source} ({type(e).__name__}); using the "
                          f"{_family(tower_config)} defaults at {size}px", stacklevel=2)
        except ValueError as e:  # a processor config lmm cannot follow, e.g. an unknown image_aspect_ratio
            raise ValueError(f"{source}: {e}") from e
    if transform is None:
        transform = ImageTransform.tower_defaults(tower_config, aspect or "pad")
    if size is not None and transform.image_size != size:
        raise ValueError(f"the image preprocessing of {source} crops images to {transform.image_size}px, but the "
                         f"encoder it belongs to takes {size}px images")
    return transform
