"""The measuring scripts under experiments/ whose figures experiments/world.md cites: their pure parts."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch

from lmm.world import questions as Q
from lmm.world.scenes import COLORS, KINDS, WORDS, sample_scene

ROOT = Path(__file__).resolve().parents[1] / "experiments"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures():
    return _script("world_figures")


def test_question_forms_of_the_short_answer_analogs(figures):
    form = figures.question_form
    assert form("What colour is the ball?\nAnswer the question using a single word or phrase.") == "colour"
    assert form("What is the colour of the red box?") == "colour"
    assert form("How many balls are there?") == "count"
    assert form("What size is the tent?") == "size"
    assert form("Which is bigger, the ball or the box?") == form("What is inside the bowl?") == "kind"
    assert form("Is there a nut in the image?") == form("Are there both a ball and a box?") == "yes/no"
    assert form("Does the sign say STOP?") == "yes/no"
    rng = random.Random(0)
    for k in range(200):  # every question the VQAv2 and GQA analogs ask has a form, and the answer fits it
        scene = sample_scene(random.Random(f"forms-{k}"))
        for q, a in Q.attribute_questions(scene, rng) + Q.relation_questions(scene, rng):
            f = form(q)
            assert f != "other", q
            expected = {"colour": set(COLORS) | {"white", "gray", "black", "beige"}, "yes/no": {"yes", "no"},
                        "kind": set(KINDS), "size": {"small", "medium", "large"}}
            assert a in expected[f] if f in expected else a.isdigit(), (q, a)


def test_tower_probe_swaps_change_only_what_they_name():
    probe = _script("tower_probe")
    rng = random.Random(1)
    checked = 0
    for k in range(100):
        scene = sample_scene(random.Random(f"swap-{k}"), sign_rate=1.0)
        if not scene.objects:
            continue
        text = Q.caption(scene, rng)
        found = probe.swaps(scene, text)
        assert set(found) == {"word", "kind", "colour"}, text  # a sign, a kind and a colour the scene lacks: always
        for what, cands in found.items():
            assert cands[0] == text and len(set(cands)) == len(cands) > 1
            for wrong in cands[1:]:
                changed = [(x, y) for x, y in zip(text.split(), wrong.split(), strict=True) if x != y]
                assert changed, wrong
                if what == "word":
                    assert len(changed) == 1 and changed[0][0] == scene.signs[0].word and changed[0][1] in WORDS
                elif what == "colour":
                    assert len(changed) == 1 and changed[0][0].strip(",") == scene.objects[0].colour
                    assert not scene.count(colour=changed[0][1].strip(","))  # a colour the scene lacks
                else:
                    assert len(changed) == 1 and changed[0][0].strip(",").startswith(scene.objects[0].kind)
                    assert not any(changed[0][1].strip(",").startswith(o.kind) for o in scene.objects)
            checked += 1
    assert checked > 150


def test_capacity_auc():
    auc = _script("tower_capacity").auc
    assert auc(torch.tensor([0.9, 0.8, 0.1, 0.2]), torch.tensor([1, 1, 0, 0])) == 1.0
    assert auc(torch.tensor([0.1, 0.2, 0.9, 0.8]), torch.tensor([1, 1, 0, 0])) == 0.0
    assert auc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.5
