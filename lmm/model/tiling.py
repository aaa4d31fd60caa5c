"""The geometry of high-resolution input (spec §6): which grid of encoder-sized tiles an image gets, how it is resized
into it, which features only cover padding, and how many visual tokens the result is.

Pure arithmetic, shared by the pixels (lmm.model.tiles), the features (lmm.model.tiled) and the data side (token
counts for batching, packing and truncation), so that the three can never disagree about an image.

Convention: every size is (height, width), in pixels or in feature cells, as transformers' llava_next does (its
`image_grid_pinpoints` and `image_sizes` are (height, width)); LLaVA's original code used (width, height).

Two modes share everything but four choices (TilingSpec):
- `anyres` (LLaVA-NeXT, §6.2): candidates are `grid_pinpoints`; black padding; the base image squashed to the tile
  is encoded too and its features come first; each feature row ends with `image_newline`.
- `hd` (LLaVA-1.5-HD, §6.1): candidates are all grids of at most `max_tiles` tiles (1x1..1x6, 2x2, 2x3 and
  transposes for 6); mean-colour padding, as LLaVA-1.5's "pad"; the global-context image (the whole image padded to a
  square and resized to the tile) comes last, and `global_context=False` drops it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmm.constants import TILINGS

Size = tuple[int, int]  # (height, width)
MODES = TILINGS
ANYRES_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))  # HF's default, spec §6.2


def select_best_resolution(image: Size, candidates: Sequence[Size]) -> Size:
    """The candidate that keeps the most of the image's pixels once it is fitted inside (never more than it has:
    upscaling adds no detail), ties broken by the fewest wasted pixels (spec §6.2.1; HF's select_best_resolution)."""
    h, w = image
    best, best_effective, best_wasted = None, 0, math.inf
    for ch, cw in candidates:
        scale = min(cw / w, ch / h)
        effective = min(int(w * scale) * int(h * scale), w * h)
        wasted = ch * cw - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(ch), int(cw)), effective, wasted
    if best is None:
        raise ValueError(f"no candidate resolution for an image of {image}: {list(candidates)}")
    return best


def fit_size(image: Size, target: Size) -> Size:
    """The size the image is resized to inside `target`, keeping its aspect ratio: one side fills the target, the
    other is rounded up and capped (HF's get_patch_output_size)."""
    h, w = image
    th, tw = target
    scale_w, scale_h = tw / w, th / h
    if scale_w < scale_h:
        return min(math.ceil(h * scale_w), th), tw
    return th, min(math.ceil(w * scale_h), tw)


def paste_offset(inner: Size, outer: Size) -> Size:
    """Top-left corner that centres `inner` in `outer` (the odd pixel goes to the bottom/right)."""
    return (outer[0] - inner[0]) // 2, (outer[1] - inner[1]) // 2


def hd_candidates(tile: int, max_tiles: int = 6) -> list[Size]:
    """LLaVA-1.5-HD's target resolutions: every rows x cols grid of at most `max_tiles` tiles (spec §6.1), in the
    order rows then cols, so ties go to fewer rows."""
    return [(r * tile, c * tile) for r in range(1, max_tiles + 1) for c in range(1, max_tiles // r + 1)]


def unpadded_window(image: Size, grid: Size) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the feature cells of a `grid` feature map that show the image, not padding.

    The padding is symmetric on the axis where the image is relatively shorter; `new = int(round(orig * scale, 7))`
    cells there show the image and `(current - new) // 2` are dropped from both ends (HF's unpad_image, spec §6.2.7).
    """
    oh, ow = image
    ch, cw = grid
    if ow / oh > cw / ch:
        new = int(round(oh * (cw / ow), 7))
        pad = (ch - new) // 2
        return pad, ch - pad, 0, cw
    new = int(round(ow * (ch / oh), 7))
    pad = (cw - new) // 2
    return 0, ch, pad, cw - pad


@dataclass(frozen=True)
class TilingSpec:
    """How an image becomes tiles and tiles become visual tokens; `tile` is the encoder's input side in pixels."""

    mode: str
    tile: int
    grid_pinpoints: tuple[Size, ...] = field(default=ANYRES_PINPOINTS)
    max_tiles: int = 6
    global_context: bool = True
    unpad: bool = True
    newline: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"tiling mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "anyres" and not self.global_context:
            raise ValueError("anyres always encodes the whole image as its base tile; global_context=false is HD's")
        object.__setattr__(self, "grid_pinpoints", tuple((int(h), int(w)) for h, w in self.grid_pinpoints))
        bad = [p for p in self.candidates() if p[0] % self.tile or p[1] % self.tile]
        if bad:
            raise ValueError(f"resolutions {bad} are not multiples of the tile {self.tile}")

    @classmethod
    def from_config(cls, cfg: dict, tile: int) -> TilingSpec:
        """From `input.tiling` (a plain dict); anyres pinpoints given in units of the tile (`grid` = [[1, 2], ...],
        so one config means the same at every encoder resolution) or in pixels (`grid_pinpoints`)."""
        cfg = dict(cfg)
        grid = cfg.pop("grid", None)
        if grid is not None:
            cfg["grid_pinpoints"] = tuple((int(r) * tile, int(c) * tile) for r, c in grid)
        return cls(tile=tile, **cfg)

    def to_config(self) -> dict:
        """The constructor's arguments but `tile` (plain values, for the model card)."""
        return {"mode": self.mode, "grid_pinpoints": [list(p) for p in self.grid_pinpoints],
                "max_tiles": self.max_tiles, "global_context": self.global_context, "unpad": self.unpad,
                "newline": self.newline}

    def candidates(self) -> list[Size]:
        return list(self.grid_pinpoints) if self.mode == "anyres" else hd_candidates(self.tile, self.max_tiles)

    @property
    def has_global(self) -> bool:
        """Whether a whole-image tile is encoded besides the grid (anyres' base image always; HD's global context)."""
        return self.mode == "anyres" or self.global_context

    def resolution(self, image: Size) -> Size:
        """The canvas (height, width) in pixels that the image is fitted into."""
        return select_best_resolution(image, self.candidates())

    def grid(self, image: Size) -> Size:
        """(rows, cols) of tiles for an image of this (height, width)."""
        h, w = self.resolution(image)
        return h // self.tile, w // self.tile

    def num_tiles(self, image: Size) -> int:
        """Tiles the encoder sees for this image, the global/base one included."""
        rows, cols = self.grid(image)
        return rows * cols + int(self.has_global)

    def feature_window(self, image: Size, side: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the stitched feature map (`side` cells per tile side) that is kept."""
        rows, cols = self.grid(image)
        if not self.unpad:
            return 0, rows * side, 0, cols * side
        return unpadded_window(image, (rows * side, cols * side))

    def max_visual_tokens(self, side: int) -> int:
        """The most visual tokens any image can get: an image of exactly the largest canvas (nothing to unpad)."""
        return max(self.num_visual_tokens(c, side) for c in self.candidates())

    def num_visual_tokens(self, image: Size, side: int, per_tile: int | None = None) -> int:
        """Visual tokens for an image: the kept feature cells, one newline per kept row, and the global tile's
        `per_tile` tokens (default side**2; +1 with CLS kept)."""
        top, bottom, left, right = self.feature_window(image, side)
        rows = bottom - top
        grid_tokens = rows * (right - left) + rows * int(self.newline)
        return grid_tokens + (per_tile if per_tile is not None else side * side) * int(self.has_global)
