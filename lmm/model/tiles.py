"""The pixels of high-resolution input: a PIL image -> a stack of encoder-sized tiles (spec §6).

TiledTransform wraps the encoder's own ImageTransform (same resize filter, mean and std), so each tile is exactly what
the tower was trained on; only the arrangement is new. The grid, canvas and padding come from lmm.model.tiling.
For anyres the stack is pixel-identical (to float rounding) to transformers' LlavaNextImageProcessor (PIL backend):
tests/test_tiling.py compares them.
"""

from __future__ import annotations

import torch
from PIL import Image

from lmm.model.preprocess import ImageTransform, expand_to_square
from lmm.model.tiling import Size, TilingSpec, fit_size, paste_offset


class TiledTransform:
    """PIL image -> float tensor [num_tiles, 3, S, S]: the grid tiles in row-major order, and the whole-image tile
    (anyres: first, squashed to S x S; hd: last, padded to a square then resized; absent for hd without global
    context). `image_size` is the tile side S, as for ImageTransform, so blank images and checks work unchanged."""

    def __init__(self, base: ImageTransform, spec: TilingSpec, side: int) -> None:
        if base.image_size != spec.tile:
            raise ValueError(f"the tile is {spec.tile}px but the encoder's preprocessing makes {base.image_size}px")
        self.base, self.spec = base.with_aspect("crop"), spec  # tiles are already S x S: no pad, the crop is a no-op
        self.side = side  # feature cells per tile side (tile // patch size): what the token counts need
        self.pad_color = (0, 0, 0) if spec.mode == "anyres" else base.pad_color  # anyres pads black (spec §6.2.2)

    def __repr__(self) -> str:
        return f"TiledTransform({self.base!r}, {self.spec!r})"

    @property
    def image_size(self) -> int:
        return self.spec.tile

    @property
    def aspect(self) -> str:
        return self.spec.mode

    def processor_config(self) -> dict:
        """The tile's preprocessing (ImageTransform.processor_config) and the tiling, for the records."""
        return {**self.base.processor_config(), "tiling": {"tile": self.spec.tile, **self.spec.to_config()}}

    def canvas(self, img: Image.Image) -> Image.Image:
        """The image fitted into its best resolution (aspect kept) and centred on a padded canvas."""
        target = self.spec.resolution((img.height, img.width))
        h, w = fit_size((img.height, img.width), target)
        resized = img.resize((w, h), resample=self.base.resample)
        canvas = Image.new("RGB", (target[1], target[0]), self.pad_color)
        top, left = paste_offset((h, w), target)
        canvas.paste(resized, (left, top))
        return canvas

    def whole(self, img: Image.Image) -> Image.Image:
        """The global/base tile: anyres squashes the image to S x S; HD pads it to a square first (spec §6.1)."""
        s = self.spec.tile
        if self.spec.mode == "hd":
            img = expand_to_square(img, self.base.pad_color)
        return img.resize((s, s), resample=self.base.resample)

    def tiles(self, img: Image.Image) -> list[Image.Image]:
        """All tiles as PIL images, in the order the encoder sees them."""
        img = img.convert("RGB")
        s = self.spec.tile
        canvas = self.canvas(img)
        grid = [canvas.crop((c * s, r * s, (c + 1) * s, (r + 1) * s))
                for r in range(canvas.height // s) for c in range(canvas.width // s)]
        if not self.spec.has_global:
            return grid
        return [self.whole(img), *grid] if self.spec.mode == "anyres" else [*grid, self.whole(img)]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([self.base(t) for t in self.tiles(image)])

    def visual_tokens(self, image: Size) -> int:
        """Visual tokens the model makes of an image of this (height, width)."""
        return self.spec.num_visual_tokens(image, self.side)

    def blank(self) -> tuple[torch.Tensor, Size]:
        """The tiles of a blank tile-sized image, and its size: what a text-only sample carries (see
        LlavaModel.splice: every batch has pixels)."""
        s = self.spec.tile
        return torch.zeros(self.spec.num_tiles((s, s)), 3, s, s), (s, s)

