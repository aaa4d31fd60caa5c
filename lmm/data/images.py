"""Image loading: decode a file fully as RGB, or fail with an ImageError that names it.

Turning pixels into the tensors an encoder takes is the encoder's business (lmm.model.preprocess, written once for
training, evaluation and export); the data side receives that transform as an argument.
"""

from __future__ import annotations

import os

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
