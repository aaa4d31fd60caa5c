"""The tiny world's scenes: coloured shapes on a plain background, rendered with PIL, and what can be said of them.

Everything the world's data and benchmark analogs hold comes from here: a scene, its picture, its caption, a chat
about it (the LLaVA-Instruct analog), a short-answer question with LLaVA-1.5's format prompt (the VQAv2/GQA analog)
and text-only arithmetic (the ShareGPT analog); `corpus` is all of it as text, for the tiny tokenizer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from lmm.data.formats import SHORT_ANSWER

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
          "purple": (140, 60, 190), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
PLACES = ("left", "right", "top", "bottom", "center")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass
class Scene:
    """One image: a background colour and one or two shapes, each with a colour and a place."""

    background: str
    shapes: list[tuple[str, str, str]]  # (shape, colour, place)
    size: tuple[int, int]


def sample_scene(rng: random.Random) -> Scene:
    background = rng.choice(["white", "black"])
    colours = [c for c in COLORS if c != background]
    places = rng.sample(PLACES, k=rng.choice([1, 1, 2]))
    shapes = [(rng.choice(SHAPES), rng.choice(colours), place) for place in places]
    size = rng.choice([(64, 64), (64, 64), (80, 56), (56, 80)])  # some non-square, so pad vs crop matters
    return Scene(background, shapes, size)


def render(scene: Scene) -> Image.Image:
    w, h = scene.size
    img = Image.new("RGB", scene.size, COLORS[scene.background])
    draw = ImageDraw.Draw(img)
    r = min(w, h) // 6
    centres = {"left": (w // 4, h // 2), "right": (3 * w // 4, h // 2), "top": (w // 2, h // 4),
               "bottom": (w // 2, 3 * h // 4), "center": (w // 2, h // 2)}
    for shape, colour, place in scene.shapes:
        cx, cy = centres[place]
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            draw.ellipse(box, fill=COLORS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLORS[colour])
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLORS[colour])
    return img


def caption(scene: Scene) -> str:
    parts = [f"a {colour} {shape} at the {place}" for shape, colour, place in scene.shapes]
    return " and ".join(parts) + f" on a {scene.background} background"


def _turns(pairs: list[tuple[str, str]]) -> list[dict]:
    turns = []
    for i, (q, a) in enumerate(pairs):
        turns += [{"from": "human", "value": ("<image>\n" + q) if i == 0 else q}, {"from": "gpt", "value": a}]
    return turns


def _count_sentence(n: int) -> str:
    return "There is one shape." if n == 1 else f"There are {NUMBER_WORDS[n]} shapes."


def conversation(scene: Scene, rng: random.Random) -> list[dict]:
    """A multi-turn chat about the scene (the LLaVA-Instruct analog)."""
    shape, colour, place = rng.choice(scene.shapes)
    pairs = [(f"What colour is the {shape}?", f"The {shape} is {colour}."),
             (f"Where is the {shape}?", f"The {shape} is at the {place} of the image."),
             ("Describe the image.", caption(scene)[0].upper() + caption(scene)[1:] + "."),
             ("How many shapes are there?", _count_sentence(len(scene.shapes)))]
    rng.shuffle(pairs)
    return _turns(pairs[: rng.choice([1, 2, 3])])


def short_vqa(scene: Scene, rng: random.Random) -> tuple[list[dict], str, str]:
    """A single-word VQA question with the format prompt (the VQAv2/GQA analog); returns turns, question, answer."""
    shape, colour, place = rng.choice(scene.shapes)
    q, a = rng.choice([(f"What colour is the {shape}?", colour), (f"Where is the {shape}?", place),
                       ("What colour is the background?", scene.background),
                       ("How many shapes are there?", str(len(scene.shapes))),
                       (f"Is there a {shape} in the image?", "yes")])
    return _turns([(f"{q}\n{SHORT_ANSWER}", a)]), q, a


def text_only(rng: random.Random) -> list[dict]:
    """A text-only exchange (the ShareGPT analog): small arithmetic in words."""
    a, b = rng.randint(0, 5), rng.randint(0, 4)
    x, y, z = NUMBER_WORDS[a], NUMBER_WORDS[b], NUMBER_WORDS[a + b]
    return [{"from": "human", "value": f"What is {x} plus {y}?"},
            {"from": "gpt", "value": f"{x.capitalize()} plus {y} is {z}."}]


def corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """Text the tiny tokenizer is trained on: everything the world can say."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        scene = sample_scene(rng)
        texts.append(caption(scene))
        turns = conversation(scene, rng) + short_vqa(scene, rng)[0] + text_only(rng)
        texts += [t["value"].replace("<image>\n", "") for t in turns]
    return texts

