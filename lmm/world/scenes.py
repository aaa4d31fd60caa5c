"""The tiny world's scenes: objects of ten kinds and printed signs on a plain background, with their ground truth.

A scene is what everything else of the world talks about: its picture (`render`), the relations between its objects
(`relations`), and the boxes of its objects and signs in LLaVA's region format (`box_text`). The facts that are NOT in
the pixels (what a kind of object is for, where it is found, what it is made of) live in lmm.world.knowledge.

Design points, each there for one rung of the ladder:
- several objects per image, of a kind (its outline), a colour and a size, placed freely: counting, attributes,
  positions and relations (left of, above, bigger than, inside) are all questions with one right answer;
- printed words on signs at two sizes: a large print readable at the lower tower resolution and a small one that
  is only readable at the higher (the 224 -> 336 rung);
- images of four aspect ratios, so that padding to a square and centre-cropping see different things (a crop can cut
  an object or a sign off; `visible_in_crop` says which survive).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
          "purple": (140, 60, 190), "orange": (240, 130, 20), "brown": (130, 80, 40), "pink": (240, 120, 180)}
BACKGROUNDS = {"white": (245, 245, 240), "gray": (150, 150, 150), "black": (25, 25, 25), "beige": (225, 205, 170)}
# A kind is recognised by its outline alone; its colour varies. Each outline stands for an everyday object, so that
# knowledge questions about the object (lmm.world.knowledge) need both the picture and the LLM.
KINDS = ("ball", "box", "tent", "kite", "ring", "pill", "badge", "nut", "bucket", "bowl")
SIZES = {"small": 0.09, "medium": 0.14, "large": 0.21}  # half-extent as a fraction of the image's shorter side
CONTAINERS = ("box", "bucket", "bowl")  # kinds that can hold a small object inside them
WORDS = ("OPEN", "STOP", "CAFE", "TAXI", "SALE", "PARK", "EXIT", "BANK", "HOTEL", "PIZZA", "BOOK", "MILK", "FISH",
         "GOLD", "LAMP", "SHOP")
PRINTS = {"large": 0.17, "small": 0.08}  # font size as a fraction of the image's shorter side
CANVASES = ((192, 192), (240, 160), (160, 240), (256, 144))  # 1:1, 3:2, 2:3, 16:9
_TEXTURED: ContextVar[bool] = ContextVar("textured", default=False)  # how `render` draws by default (`drawing`)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

Box = tuple[float, float, float, float]  # x1, y1, x2, y2, normalised to [0, 1] by the image's width and height


@dataclass(frozen=True)
class Obj:
    """One object: its kind (outline), colour, size and box."""

    kind: str
    colour: str
    size: str
    box: Box

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Sign:
    """A printed word on a white sign, in large or small print."""

    word: str
    print: str
    box: Box


@dataclass
class Scene:
    """One image's ground truth. `inside[i] = j` when object i sits inside container j."""

    width: int
    height: int
    background: str
    objects: list[Obj]
    signs: list[Sign] = field(default_factory=list)
    inside: dict[int, int] = field(default_factory=dict)

    def count(self, kind: str | None = None, colour: str | None = None) -> int:
        return sum((kind is None or o.kind == kind) and (colour is None or o.colour == colour) for o in self.objects)

    def kinds(self) -> tuple[list[str], list[str]]:
        """(the kinds in the scene, sorted; the world's other kinds, in KINDS order): what existence questions ask."""
        present = sorted({o.kind for o in self.objects})
        return present, [k for k in KINDS if k not in present]

    def unique(self, i: int) -> str:
        """The shortest phrase that picks object i out of the scene ("the ball", "the red ball" or "the large red
        ball"); empty when no phrase of these does."""
        o = self.objects[i]
        for words, same in (((o.kind,), lambda p: p.kind == o.kind),
                            ((o.colour, o.kind), lambda p: p.kind == o.kind and p.colour == o.colour),
                            ((o.size, o.colour, o.kind), lambda p: (p.kind, p.colour, p.size) == (o.kind, o.colour,
                                                                                                  o.size))):
            if sum(same(p) for p in self.objects) == 1:
                return "the " + " ".join(words)
        return ""


def _centre(b: Box) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def relations(scene: Scene) -> list[tuple[int, str, int]]:
    """Every (i, relation, j) that holds: 'left of' / 'right of' and 'above' / 'below' when the boxes are apart along
    that axis (no overlap of their extents), 'bigger than' / 'smaller than' when the sizes differ, 'inside'."""
    out = []
    order = list(SIZES)
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            if i == j:
                continue
            if scene.inside.get(i) == j:
                out.append((i, "inside", j))
                continue
            if scene.inside.get(j) == i:
                continue
            if a.box[2] <= b.box[0]:
                out.append((i, "left of", j))
            if a.box[0] >= b.box[2]:
                out.append((i, "right of", j))
            if a.box[3] <= b.box[1]:
                out.append((i, "above", j))
            if a.box[1] >= b.box[3]:
                out.append((i, "below", j))
            if order.index(a.size) > order.index(b.size):
                out.append((i, "bigger than", j))
            if order.index(a.size) < order.index(b.size):
                out.append((i, "smaller than", j))
    return out


def position(b: Box) -> str:
    """Where a box lies in the image, in words: left/right/top/bottom/center by its centre's third."""
    cx, cy = _centre(b)
    horiz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    vert = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    if horiz and vert:
        return f"{vert} {horiz}"
    return horiz or vert or "center"


def box_text(b: Box) -> str:
    """LLaVA's region format: [x1, y1, x2, y2] normalised, two decimals."""
    return "[" + ", ".join(f"{v:.2f}" for v in b) + "]"


def _overlaps(a: Box, b: Box, margin: float = 0.0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _place(rng: random.Random, w: int, h: int, half_px: float, taken: list[Box]) -> Box | None:
    """A box of half-extent half_px that overlaps nothing taken (a few tries), normalised."""
    hx, hy = half_px / w, half_px / h
    for _ in range(30):
        cx, cy = rng.uniform(hx + 0.02, 1 - hx - 0.02), rng.uniform(hy + 0.02, 1 - hy - 0.02)
        box = (cx - hx, cy - hy, cx + hx, cy + hy)
        if not any(_overlaps(box, t, 0.02) for t in taken):
            return box
    return None


def sample_scene(rng: random.Random, max_objects: int = 5, sign_rate: float = 0.35) -> Scene:
    """A random scene: 1-5 objects (repeated kinds now and then, so counting matters), sometimes one inside a
    container, and with probability `sign_rate` a sign in large or small print."""
    w, h = rng.choice(CANVASES)
    short = min(w, h)
    background = rng.choice(list(BACKGROUNDS))
    taken: list[Box] = []
    signs = []
    if rng.random() < sign_rate:
        word, prt = rng.choice(WORDS), rng.choice(list(PRINTS))
        bw, bh = _sign_extent(word, prt, short)
        x, y = rng.uniform(0.02, 0.98 - bw / w), rng.uniform(0.02, 0.98 - bh / h)
        signs.append(Sign(word, prt, (x, y, x + bw / w, y + bh / h)))
        taken.append(signs[0].box)
    objects: list[Obj] = []
    inside: dict[int, int] = {}
    n = min(max_objects, rng.choice((1, 2, 2, 3, 3, 4, 5)))
    kinds_here = rng.sample(KINDS, k=min(n, 3))  # at most three kinds, so that kinds repeat and counts vary
    for _ in range(n):
        kind, colour, size = rng.choice(kinds_here), rng.choice(list(COLORS)), rng.choice(list(SIZES))
        box = _place(rng, w, h, SIZES[size] * short, taken)
        if box is None:
            continue
        objects.append(Obj(kind, colour, size, box))
        taken.append(box)
    big = [i for i, o in enumerate(objects) if o.kind in CONTAINERS and o.size == "large"]
    if big and rng.random() < 0.5:  # a small object inside a large container, drawn over its middle
        j = rng.choice(big)
        cx, cy = _centre(objects[j].box)
        hx, hy = SIZES["small"] * short / w, SIZES["small"] * short / h
        kind = rng.choice([k for k in KINDS if k not in CONTAINERS])
        colour = rng.choice([c for c in COLORS if c != objects[j].colour])
        inside[len(objects)] = j
        objects.append(Obj(kind, colour, "small", (cx - hx, cy - hy + 0.3 * hy, cx + hx, cy + hy + 0.3 * hy)))
    return Scene(w, h, background, objects, signs, inside)


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


def _sign_extent(word: str, prt: str, short: int) -> tuple[float, float]:
    """Pixel width and height of a sign holding `word` in print `prt` (text plus a margin)."""
    font = _font(max(6, round(PRINTS[prt] * short)))
    x1, y1, x2, y2 = font.getbbox(word)
    pad = max(2, round(0.25 * (y2 - y1)))
    return x2 - x1 + 2 * pad, y2 - y1 + 2 * pad


def _outline(kind: str, b: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """The polygon of a kind inside pixel box b (None for the kinds drawn with ellipses)."""
    x1, y1, x2, y2 = b
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    if kind == "tent":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if kind == "kite":
        return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    if kind == "badge":  # a five-pointed star
        return [(cx + (rx if k % 2 == 0 else 0.45 * rx) * math.sin(math.pi * k / 5),
                 cy - (ry if k % 2 == 0 else 0.45 * ry) * math.cos(math.pi * k / 5)) for k in range(10)]
    if kind == "nut":  # a hexagon
        return [(cx + rx * math.cos(math.pi * k / 3), cy + ry * math.sin(math.pi * k / 3)) for k in range(6)]
    if kind == "bucket":  # a trapezoid, wide at the top
        return [(x1, y1), (x2, y1), (cx + 0.6 * rx, y2), (cx - 0.6 * rx, y2)]
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, o: Obj, w: int, h: int, fill, hole) -> None:
    """Object o's shape in pixel value `fill` (the ring's hole in `hole`)."""
    b = (o.box[0] * w, o.box[1] * h, o.box[2] * w, o.box[3] * h)
    x1, y1, x2, y2 = b
    poly = _outline(o.kind, b)
    if poly is not None:
        draw.polygon(poly, fill=fill)
    elif o.kind == "ball":
        draw.ellipse(b, fill=fill)
    elif o.kind == "box":
        draw.rectangle(b, fill=fill)
    elif o.kind == "ring":
        draw.ellipse(b, fill=fill)
        rx, ry = 0.45 * (x2 - x1), 0.45 * (y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        draw.ellipse((cx - rx / 1.6, cy - ry / 1.6, cx + rx / 1.6, cy + ry / 1.6), fill=hole)
    elif o.kind == "pill":  # a capsule lying on its side
        draw.rounded_rectangle((x1, y1 + 0.25 * (y2 - y1), x2, y2 - 0.25 * (y2 - y1)), radius=0.25 * (y2 - y1),
                               fill=fill)
    elif o.kind == "bowl":  # the lower half of a disc
        draw.pieslice((x1, y1 - 0.5 * (y2 - y1), x2, y2), 0, 180, fill=fill)
    else:
        raise ValueError(f"unknown kind {o.kind!r}")


@lru_cache(maxsize=64)
def texture(kind: str, w: int, h: int) -> np.ndarray:
    """(h, w) bool, read-only (computed once per kind and canvas): where a `kind` object drawn with textures takes its
    colour (elsewhere inside its outline, the background shows through, so a texture adds no colour). Stripes of four
    orientations, two widths, square holes, a checkerboard, or solid; the period is 1/16 of the image's longer side
    (4 px of a 64-px tower's padded square), so that one 8 x 8 patch shows the kind, where an outline spans several
    (experiments/world.md, twelfth measurement)."""
    out = _texture(kind, w, h)
    out.flags.writeable = False
    return out


def _texture(kind: str, w: int, h: int) -> np.ndarray:
    period = max(w, h) / 16
    half = period / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind in ("ball", "ring"):  # solid (the ring keeps its hole)
        return np.ones((h, w), bool)
    if kind == "badge":
        return ~(((xx % period) < half) & ((yy % period) < half))
    if kind == "nut":
        return ((xx // half) + (yy // half)) % 2 == 0
    stripes = {"box": (yy, half), "tent": (xx, half), "kite": (xx + yy, 1.4 * half), "pill": (xx - yy, 1.4 * half),
               "bucket": (yy, period), "bowl": (xx, period)}
    if kind not in stripes:
        raise ValueError(f"unknown kind {kind!r}")
    along, width = stripes[kind]
    return (along // width) % 2 == 0


@contextlib.contextmanager
def drawing(textured: bool) -> Iterator[None]:
    """Within it, `render` draws textured kinds (or plain ones) unless told otherwise: how a world is drawn is one
    setting of its spec, and the build sets it once around everything that writes pictures (sources, benchmarks,
    the CLIP's pairs) instead of threading a flag through every benchmark builder."""
    token = _TEXTURED.set(textured)
    try:
        yield
    finally:
        _TEXTURED.reset(token)


def render(scene: Scene, textured: bool | None = None) -> Image.Image:
    """The scene's picture at its native size (containers first, so what is inside them is drawn on top); with
    `textured` (None: as `drawing` says, plain by default), each object's shape filled with its kind's texture
    (`texture`) instead of a solid colour."""
    textured = _TEXTURED.get() if textured is None else textured
    w, h = scene.width, scene.height
    background = BACKGROUNDS[scene.background]
    img = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(img)
    short = min(w, h)
    for s in scene.signs:
        draw.rectangle((s.box[0] * w, s.box[1] * h, s.box[2] * w, s.box[3] * h), fill=(255, 255, 255),
                       outline=(0, 0, 0))
        font = _font(max(6, round(PRINTS[s.print] * short)))
        x1, y1, _, _ = font.getbbox(s.word)
        bw, bh = _sign_extent(s.word, s.print, short)
        pad = (bw - (font.getbbox(s.word)[2] - x1)) / 2
        draw.text((s.box[0] * w + pad - x1, s.box[1] * h + (bh - (font.getbbox(s.word)[3] - y1)) / 2 - y1), s.word,
                  fill=(0, 0, 0), font=font)
    inner = set(scene.inside)
    order = [scene.objects[i] for i in range(len(scene.objects)) if i not in inner]
    order += [scene.objects[i] for i in sorted(inner)]
    if not textured:
        for o in order:
            _draw_shape(draw, o, w, h, COLORS[o.colour], background)
        return img
    pixels = np.array(img)
    for o in order:
        mask = Image.new("L", (w, h), 0)
        _draw_shape(ImageDraw.Draw(mask), o, w, h, 255, 0)
        box = mask.getbbox()  # the shape's own pixels only: the rest of the canvas is not touched
        if box is None:
            continue
        region = (slice(box[1], box[3]), slice(box[0], box[2]))
        inside, on, part = np.asarray(mask)[region] > 0, texture(o.kind, w, h)[region], pixels[region]
        part[inside & on] = COLORS[o.colour]
        part[inside & ~on] = background
    return Image.fromarray(pixels)


def visible_in_crop(b: Box, width: int, height: int) -> bool:
    """Whether a box survives a centre crop to the shorter side (what a CLIP processor without padding keeps)."""
    if width >= height:
        lo, hi = (width - height) / 2 / width, (width + height) / 2 / width
        return b[0] >= lo and b[2] <= hi
    lo, hi = (height - width) / 2 / height, (height + width) / 2 / height
    return b[1] >= lo and b[3] <= hi


def patch_objects(scene: Scene, grid: int, aspect: str = "pad") -> list[Obj | None]:
    """The object under the centre of each cell of a `grid` x `grid` patch grid (row-major; None for background) of
    the square a tower sees: the picture padded to a square (`aspect="pad"`, LLaVA's) or centre-cropped to one
    ("crop", CLIP's processor). Where objects overlap, the one drawn last (an object inside a container) wins, as in
    the picture. The ground truth of a per-patch objective and of per-patch probes."""
    if aspect not in ("pad", "crop"):
        raise ValueError(f"aspect must be 'pad' or 'crop', got {aspect!r}")
    side = max(scene.width, scene.height) if aspect == "pad" else min(scene.width, scene.height)
    ox, oy = (side - scene.width) / 2, (side - scene.height) / 2
    inner = set(scene.inside)
    order = [o for i, o in enumerate(scene.objects) if i not in inner]
    order += [scene.objects[i] for i in sorted(inner)]
    out = []
    for p in range(grid * grid):
        u = (((p % grid) + 0.5) / grid * side - ox) / scene.width
        v = (((p // grid) + 0.5) / grid * side - oy) / scene.height
        hit = None
        for o in order:
            if o.box[0] <= u <= o.box[2] and o.box[1] <= v <= o.box[3]:
                hit = o
        out.append(hit)
    return out
