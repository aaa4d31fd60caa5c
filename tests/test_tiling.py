"""High-resolution input geometry, pixels and packing (spec §6), against examples worked out by hand.

Sizes are (height, width) throughout. The anyres numbers are at LLaVA-NeXT's 336 px tile (24 x 24 features), the
HD ones at LLaVA-1.5-HD's 224 px tile (16 x 16 features).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lmm.model.connector import Connector
from lmm.model.preprocess import ImageTransform
from lmm.model.tiled import TiledConnector
from lmm.model.tiles import TiledTransform
from lmm.model.tiling import (
    ANYRES_PINPOINTS,
    TilingSpec,
    fit_size,
    hd_candidates,
    select_best_resolution,
    unpadded_window,
)

ANYRES = TilingSpec("anyres", 336)
HD = TilingSpec("hd", 224)


def test_spec_example_2928_tokens() -> None:
    """Spec §6.2.8: a 672x672 image, 2x2 tiles, nothing to unpad: 576 + 48 * 49 = 2928 visual tokens."""
    assert ANYRES.grid((672, 672)) == (2, 2)
    assert ANYRES.feature_window((672, 672), 24) == (0, 48, 0, 48)
    assert ANYRES.num_visual_tokens((672, 672), 24) == 576 + 48 * 49 == 2928
    assert ANYRES.num_tiles((672, 672)) == 5


def test_best_resolution_by_hand() -> None:
    """800 wide x 600 high: (672, 672) keeps 672*504 = 338688 pixels, more than any other pinpoint."""
    assert select_best_resolution((600, 800), ANYRES_PINPOINTS) == (672, 672)
    # 900 wide x 300 high: (336, 1008) keeps all 270000 pixels; its transpose is the tall image's choice
    assert select_best_resolution((300, 900), ANYRES_PINPOINTS) == (336, 1008)
    assert ANYRES.grid((300, 900)) == (1, 3) and ANYRES.grid((900, 300)) == (3, 1)
    # a tie on kept pixels goes to the fewest wasted: a 336 square is kept whole by (336, 672) and (672, 336) alike
    # (wasted 336^2 each; the first wins) and by (672, 672) (wasted 3 * 336^2)
    assert select_best_resolution((336, 336), ANYRES_PINPOINTS) == (336, 672)


def test_fit_and_unpad_by_hand() -> None:
    """600x800 (h, w) in 672x672: resized to 504x672, 84 rows of padding above and below; in features (48x48 map)
    36 rows show the image, 6 padding rows are dropped at each end: 576 + 36 * 49 = 2340 tokens."""
    assert fit_size((600, 800), (672, 672)) == (504, 672)
    assert unpadded_window((600, 800), (48, 48)) == (6, 42, 0, 48)
    assert ANYRES.num_visual_tokens((600, 800), 24) == 576 + 36 * 49 == 2340
    # tall: the columns are unpadded instead
    assert unpadded_window((800, 600), (48, 48)) == (0, 48, 6, 42)
    # ceil on the dependent side (HF's get_patch_output_size): 301 * 672/900 = 224.75 -> 225
    assert fit_size((301, 900), (672, 672)) == (225, 672)


def test_hd_candidates_and_selection() -> None:
    """HD: every grid of at most six tiles (spec §6.1), never more tiles than the image's pixels need."""
    grids = {(h // 224, w // 224) for h, w in hd_candidates(224)}
    assert grids == {(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1),
                     (2, 2), (2, 3), (3, 2)}
    assert HD.grid((224, 224)) == (1, 1)  # never 448^2 for a 224^2 input
    assert HD.grid((100, 100)) == (1, 1)
    assert HD.grid((448, 672)) == (2, 3) and HD.grid((672, 448)) == (3, 2)
    assert HD.grid((2000, 2000)) == (2, 2)  # the largest square grid of six tiles
    # 500 high x 100 wide: 3x1 is the smallest grid that holds all 50000 pixels (2x1 keeps 89 * 448 = 39872);
    # features 48 x 16, of which int(100 * 48 / 500) = 9 columns show the image, (16 - 9) // 2 = 3 cut at each side
    assert HD.grid((500, 100)) == (3, 1)
    assert HD.feature_window((500, 100), 16) == (0, 48, 3, 13)
    assert HD.num_visual_tokens((500, 100), 16) == 48 * 10 + 48 + 256
    assert TilingSpec("hd", 224, global_context=False).num_visual_tokens((500, 100), 16) == 48 * 10 + 48


def test_tiling_spec_from_config() -> None:
    """Pinpoints in tile units mean the same at every tile size; pixel pinpoints must be multiples of the tile."""
    spec = TilingSpec.from_config({"mode": "anyres", "grid": [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]]}, 336)
    assert spec.grid_pinpoints == ANYRES_PINPOINTS
    with pytest.raises(ValueError, match="multiples"):
        TilingSpec("anyres", 100, grid_pinpoints=((150, 300),))
    with pytest.raises(ValueError, match="mode"):
        TilingSpec("spatial", 336)
    with pytest.raises(ValueError, match="global_context"):
        TilingSpec("anyres", 336, global_context=False)


def quadrants(size: int = 64) -> Image.Image:
    """A size x size image, four flat quadrants: red (top left), green (top right), blue, white."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    half = size // 2
    arr[:half, :half] = (255, 0, 0)
    arr[:half, half:] = (0, 255, 0)
    arr[half:, :half] = (0, 0, 255)
    arr[half:, half:] = (255, 255, 255)
    return Image.fromarray(arr)


def _colour(tile: torch.Tensor, base: ImageTransform) -> tuple[int, ...]:
    """The mean RGB of a normalised tile, back in 0..255."""
    mean, std = torch.tensor(base.mean)[:, None, None], torch.tensor(base.std)[:, None, None]
    return tuple(int(round(float(c))) for c in ((tile * std + mean) * 255).mean((1, 2)))


@pytest.mark.parametrize("mode", ["anyres", "hd"])
def test_tiles_row_major_and_whole_image_position(mode: str) -> None:
    """A 64 px square at a 32 px tile: 2x2 tiles in row-major order (red, green, blue, white); anyres puts the whole
    image first, HD last."""
    base = ImageTransform(32, aspect="pad", resample="nearest")
    spec = TilingSpec(mode, 32, grid_pinpoints=((64, 64),)) if mode == "anyres" else TilingSpec(mode, 32,
                                                                                                max_tiles=4)
    tiles = TiledTransform(base, spec, side=4)(quadrants())
    assert tiles.shape == (5, 3, 32, 32)
    grid = list(tiles[1:]) if mode == "anyres" else list(tiles[:-1])
    assert [_colour(t, base) for t in grid] == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    whole = tiles[0] if mode == "anyres" else tiles[-1]
    assert _colour(whole[:, :16, :16], base) == (255, 0, 0)  # the whole image, shrunk: red top-left quarter
    assert _colour(whole[:, 16:, 16:], base) == (255, 255, 255)


@pytest.mark.parametrize(("mode", "fill"), [("anyres", (0, 0, 0)), ("hd", (122, 116, 104))])
def test_padding_colour(mode: str, fill: tuple[int, int, int]) -> None:
    """A white 40x64 (h, w) image on a 64x64 canvas (both modes pick it): anyres pads black (spec §6.2.2), HD with
    LLaVA-1.5's mean colour; 12 padding rows above the image, 12 below."""
    base = ImageTransform(32, aspect="pad")
    spec = TilingSpec(mode, 32, grid_pinpoints=((32, 64), (64, 64)), max_tiles=4)
    assert spec.resolution((40, 64)) == (64, 64)
    canvas = np.asarray(TiledTransform(base, spec, side=4).canvas(Image.new("RGB", (64, 40), (255, 255, 255))))
    assert canvas.shape[:2] == (64, 64)
    assert tuple(canvas[11, 0]) == fill and tuple(canvas[52, 63]) == fill
    assert tuple(canvas[12, 0]) == (255, 255, 255) and tuple(canvas[51, 63]) == (255, 255, 255)


class _Identity(Connector):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self._init_kwargs = in_dim, out_dim, {}
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _labelled(n_tiles: int, side: int) -> torch.Tensor:
    """Tile features whose 3 channels are (tile, row, col) of each feature cell."""
    t, r, c = torch.meshgrid(torch.arange(n_tiles), torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([t, r, c], -1).reshape(n_tiles, side * side, 3).float()


def test_pack_anyres_by_hand() -> None:
    """anyres, 2x2 tiles of 2x2 features, a 2:1 wide image: base first, then the stitched map's middle two rows
    (one padding row cut above and below), each followed by image_newline."""
    spec = TilingSpec("anyres", 28, grid_pinpoints=((56, 56),))
    conn = TiledConnector(3, 3, _Identity(3, 3), spec)
    with torch.no_grad():
        conn.image_newline.copy_(torch.tensor([-1.0, -1.0, -1.0]))
    out = conn.pack(_labelled(5, 2), (20, 40))  # (h, w): aspect 2 > 1, rows unpadded: int(20 * 4 / 40) = 2 kept
    assert spec.feature_window((20, 40), 2) == (1, 3, 0, 4)
    assert out.shape == (4 + 2 * 5, 3)
    assert out[:4, 0].tolist() == [0, 0, 0, 0]  # the base tile first
    nl = [-1.0, -1.0, -1.0]
    # map row 1 = tile row 0 feature row 1: tiles 1, 2; map row 2 = tile row 1 feature row 0: tiles 3, 4
    assert out[4:9].tolist() == [[1, 1, 0], [1, 1, 1], [2, 1, 0], [2, 1, 1], nl]
    assert out[9:14].tolist() == [[3, 0, 0], [3, 0, 1], [4, 0, 0], [4, 0, 1], nl]


def test_pack_hd_global_last_and_optional() -> None:
    """HD: the grid first, the global tile last; without global context the grid alone."""
    spec = TilingSpec("hd", 28, max_tiles=2)
    conn = TiledConnector(3, 3, _Identity(3, 3), spec)
    out = conn.pack(_labelled(3, 2), (28, 56))  # 1x2 tiles, nothing to unpad, then the global tile (index 2)
    assert out.shape == (2 * 5 + 4, 3)
    assert out[:4].tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1]]
    assert torch.equal(out[4], conn.image_newline)
    assert out[-4:, 0].tolist() == [2, 2, 2, 2]
    spec_off = TilingSpec("hd", 28, max_tiles=2, global_context=False)
    conn_off = TiledConnector(3, 3, _Identity(3, 3), spec_off)
    with torch.no_grad():
        conn_off.image_newline.fill_(-1.0)  # not a tile label: the rows of tile labels hold tiles 0 and 1 only
    off = conn_off.pack(_labelled(2, 2), (28, 56))
    assert off.shape == (2 * 5, 3) and off[:, 0].max() == 1
