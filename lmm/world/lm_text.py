"""The text the world's LMs are pretrained on (lmm.world.pretrain), from fresh scenes of its own seeded stream.

    pretraining_text    the world's text: knowledge, captions, descriptions, conversations, text-only dialogue
    reading_documents   a scene's description, then existence questions about it asked both ways: a thing is
                        looked up in the context before the question, as LLaVA's LLM looks it up among the visual
                        tokens (experiments/world.md, tenth measurement: learnt from next-token loss on these)
    grid_documents      a picture's stand-in, the words of the kind or colour under each patch of the tower's grid,
                        then its caption and existence questions answered from it: copying the context into a
                        caption, which LLaVA's stage 1 asks of the frozen LM (twelfth measurement), and the lookup
                        among tokens laid out as the visual tokens are

Real LLMs bring both skills from web-scale text; the world's LMs are too small and too briefly trained to find them
in the world's text alone, so their text holds documents that exercise them.
"""

from __future__ import annotations

import random

import torch
from torchmetrics.functional.classification import binary_auroc
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmm.world import dialogue, questions
from lmm.world.knowledge import FACTS, PROPERTIES, fact_sentences
from lmm.world.scenes import KINDS, Scene, patch_objects, sample_scene


def pretraining_text(rng: random.Random, n: int) -> list[str]:
    """n documents of the world's text for the zoo's LMs, from fresh scenes of `rng` (not the training or benchmark
    images): knowledge sentences (every fact, both halves: text is where knowledge lives), captions, detailed
    descriptions, conversations and reasoning without <image>, and the text-only dialogues."""
    every = {(k, p) for k in FACTS for p in PROPERTIES}
    facts: list[str] = []  # every knowledge sentence once per round, in a new order each round
    out: list[str] = []
    for _ in range(n):
        u = rng.random()
        if u < 0.25:
            facts = facts or fact_sentences(rng, repeats=1)
            out.append(facts.pop())
            continue
        if u < 0.35:
            out.append(" ".join(f"{q} {a}" for q, a in dialogue.text_dialogue(rng)))
            continue
        scene = sample_scene(rng)
        if u < 0.55:
            text = questions.caption(scene, rng)
            out.append(text[:1].upper() + text[1:] + ".")
        elif u < 0.7:
            out.append(questions.detailed_description(scene))
        elif u < 0.9:
            out.append(" ".join(f"{q} {a}" for q, a in dialogue.conversation(scene, rng, every)))
        else:
            found = dialogue.reasoning(scene, rng, every)
            out.append(" ".join(found) if found else questions.detailed_description(scene))
    return out


def reading_turns(scene: Scene, rng: random.Random, asked: int) -> tuple[str, list[tuple[str, str]]]:
    """A scene's detailed description and `asked` existence questions about it with their answers (each kind
    present or absent at even odds, lmm.world.dialogue.existence)."""
    return questions.detailed_description(scene), [dialogue.existence(scene, rng) for _ in range(asked)]


def reading_documents(rng: random.Random, n: int, asked: int = 6) -> list[str]:
    """n reading documents of fresh scenes: the description, then the questions and answers, space-separated."""
    out = []
    for _ in range(n):
        description, turns = reading_turns(sample_scene(rng), rng, asked)
        out.append(" ".join([description, *(f"{q} {a}" for q, a in turns)]))
    return out


def patch_words(scene: Scene, grid: int = 8) -> list[str]:
    """Per patch of the tower's padded square (row-major) the word of what is under its centre: the object's kind
    or its colour, alternating like a chessboard (so both are there to copy), or "background"."""
    return ["background" if o is None else o.kind if (p // grid + p % grid) % 2 == 0 else o.colour
            for p, o in enumerate(patch_objects(scene, grid, "pad"))]


def _grid_document(scene: Scene, rng: random.Random, grid: int, asked: int) -> tuple[str, str, list[tuple[str, bool]]]:
    """A scene's patch words, the caption copied from them, and `asked` existence questions with their answers."""
    words = patch_words(scene, grid)
    shown = [k for k in KINDS if k in words]
    caption = " and ".join(questions.article(o.name) for o in scene.objects if o.kind in shown) or "nothing"
    turns = []
    for _ in range(asked):
        there = bool(shown) and rng.random() < 0.5
        kind = rng.choice(shown if there else [k for k in KINDS if k not in shown])
        turns.append((f"Is there {questions.article(kind)} in the image?", there))
    return " ".join(words), caption, turns


def grid_documents(rng: random.Random, n: int, grid: int = 8, asked: int = 6) -> list[str]:
    """n documents of fresh scenes in the form the LLaVA side meets them: the picture's stand-in (`patch_words`), a
    newline, its caption copied from the stand-in (the objects whose kind it shows, "a blue kite and an orange
    tent"; "nothing" when none), a newline, then `asked` existence questions answered from it ("Yes." / "No.", a
    shown kind or another at even odds). Answers follow the stand-in, not the scene: a kind too small to fall under a
    patch centre is not there to copy or find, and questions whose answer is not in the context teach a prior
    instead of the lookup (a first try answered from the scene: no lookup in 1,500 steps)."""
    out = []
    for _ in range(n):
        words, caption, turns = _grid_document(sample_scene(rng), rng, grid, asked)
        out.append(f"{words}\n{caption}\n" + " ".join(f"{q} {'Yes.' if a else 'No.'}" for q, a in turns))
    return out


def grid_probes(rng: random.Random, n: int, grid: int = 8) -> list[tuple[str, bool]]:
    """n held-out (grid document up to its first question, is the kind there?) pairs, half of them there: what
    `lookup_auc` scores."""
    out: list[tuple[str, bool]] = []
    while len(out) < n:
        words, caption, [(q, there)] = _grid_document(sample_scene(rng), rng, grid, 1)
        if there == (len(out) % 2 == 0):
            out.append((f"{words}\n{caption}\n{q}", there))
    return out


@torch.no_grad()
def lookup_auc(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, probes: list[tuple[str, bool]]) -> float:
    """How well the logit of "Yes" minus that of "No" after each probe separates the kinds there from those not
    (AUC; 0.5: the context unused): the skill the reading documents teach, checked on documents never trained on."""
    yes, no = tokenizer.convert_tokens_to_ids("▁Yes"), tokenizer.convert_tokens_to_ids("▁No")
    model.eval()
    margins = []
    for text, _ in probes:
        logits = model(input_ids=torch.tensor([tokenizer(text).input_ids])).logits[0, -1]
        margins.append(logits[yes] - logits[no])
    return float(binary_auroc(torch.stack(margins), torch.tensor([int(t) for _, t in probes])))
