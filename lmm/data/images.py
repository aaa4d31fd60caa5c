"""Image loading: decode a file fully as RGB, or fail with an ImageError that names it.

Turning pixels into the tensors an encoder takes is the encoder's business (lmm.model.preprocess, written once for
training, evaluation and export); the data side receives that transform as an argument.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image


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


def batch_images(images: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's pixels as the model takes them: [B, 3, S, S] for plain images; for tiled ones ([n_i, 3, S, S] each,
    input=hd/anyres) all tiles concatenated, and the images' (height, width) as a [B, 2] tensor, from which each
    image's grid, and so its tile count, follows (lmm.model.tiling)."""
    if images[0].dim() == 3:
        return torch.stack(list(images)), None
    if sizes is None or len(sizes) != len(images):
        raise ValueError("tiled images need their (height, width) sizes, one per image")
    return torch.cat(list(images)), torch.tensor([list(s) for s in sizes], dtype=torch.long)
