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


def test_tower_features_are_what_the_connector_gets_and_the_probe_is_held_out(tmp_path):
    """The features are the penultimate layer's patches (no CLS) of the padded image, as lmm's VisionEncoder hands
    them on under LLaVA-1.5's padding (not CLIP's centre crop, which cuts the sides of wide scenes away); the probe
    finds kinds in features that hold them and not in noise (scored on scenes it was not fitted on)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    script = _script("tower_features")
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                              image_size=32, patch_size=8)
    CLIPVisionModel(config).save_pretrained(tmp_path)
    encoder = script.tower(str(tmp_path))
    rng = random.Random(0)
    scenes = [sample_scene(rng, sign_rate=0.6) for _ in range(400)]
    feats = script.features(encoder, scenes[:3])
    assert feats.shape == (3, 16, 16)
    assert any(len(set(script.render(s).size)) == 2 for s in scenes[:3])  # a wide or tall scene: pad != crop
    pixels = script.normalize(script.crop_pixels([script.render(s) for s in scenes[:3]], 32, "pad"))  # LLaVA-1.5's
    hidden = encoder.tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert torch.allclose(feats, hidden[-2][:, 1:])
    first = script.features(script.tower(str(tmp_path), layer=1), scenes[:3])  # --layer: another hidden state
    assert torch.allclose(first, hidden[1][:, 1:]) and not torch.allclose(first, feats)
    kinds = torch.tensor([[float(s.count(k) > 0) for k in KINDS] for s in scenes])
    told = kinds[:, None, :].expand(-1, 4, -1) + 0.1 * torch.randn(len(scenes), 4, len(KINDS))
    assert script.probe(told, scenes, train=300, steps=300)["kinds_auc"] > 0.95
    noise = torch.randn(len(scenes), 4, len(KINDS))
    assert script.probe(noise, scenes, train=300, steps=300)["kinds_auc"] < 0.65


def test_tower_features_per_patch_probe_names_what_is_under_each_patch():
    """Features that are the patch's own labels (plus noise) are named right nearly always, noise at about chance;
    only object patches count, and the labels follow the padded square (lmm.world.scenes.patch_objects)."""
    from lmm.world.scenes import COLORS, patch_objects

    script = _script("tower_features")
    rng = random.Random(1)
    scenes = [sample_scene(rng) for _ in range(300)]
    colours = list(COLORS)
    told = torch.zeros(len(scenes), 16, len(KINDS) + len(colours))
    for i, s in enumerate(scenes):
        for p, o in enumerate(patch_objects(s, 4, "pad")):
            if o is not None:
                told[i, p, KINDS.index(o.kind)] = told[i, p, len(KINDS) + colours.index(o.colour)] = 1
    told += 0.1 * torch.randn_like(told)
    right = script.patch_probe(told, scenes, train=250, steps=300)
    assert right["kind"] > 0.95 and right["colour"] > 0.95
    noise = script.patch_probe(torch.randn_like(told), scenes, train=250, steps=300)
    assert noise["kind"] < 0.3 and noise["colour"] < 0.35
    shifted = torch.roll(told, 1, dims=1)  # each patch given its neighbour's labels
    assert script.patch_probe(shifted, scenes, train=250, steps=300)["kind"] < 0.8


def test_tower_oracle_tells_the_vision_tower_up_to_its_layer_and_keeps_the_rest(tmp_path):
    """Only the vision tower learns, and only up to the layer its head reads (the layer the connector is handed):
    the last layer, the text tower and the projections are saved as they were; the result loads as LLaVA's tower."""
    from transformers import CLIPModel

    from lmm.model.encoder import VisionEncoder
    from lmm.world.zoo_clip import clip_config

    torch.manual_seed(0)
    CLIPModel(clip_config(40, 39, 0, 1, image_size=16, patch_size=8, hidden_size=16, num_layers=3,
                          text_hidden_size=16, text_layers=1, max_text_len=16, projection_dim=16)).save_pretrained(
        tmp_path / "clip")
    result = _script("tower_oracle").tell_kinds(tmp_path / "clip", tmp_path / "told", scenes=64, steps=3,
                                                batch_size=16, progress=False)
    assert result["steps"] == 3 and result["final_loss"] is not None
    before = CLIPModel.from_pretrained(tmp_path / "clip").state_dict()
    after = CLIPModel.from_pretrained(tmp_path / "told").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("vision_model.encoder.layers.0.") for k in changed)
    assert all(k.startswith("vision_model.") and ".layers.2." not in k and "post_layernorm" not in k
               for k in changed), changed
    assert VisionEncoder.from_pretrained(str(tmp_path / "told")).num_patches == 4


def test_lm_in_context_scores_reading_the_description_and_not_a_prior():
    """An LM that reads the description before the question scores 1 on both figures; one that always says "No,
    there is no ball" scores 0.5 on existence and copies only when a ball is asked about; each prompt asks about a
    kind its description names exactly when it is marked present."""
    script = _script("lm_in_context")
    items = script.probes(40)
    assert len(items) == 80 and sum(there for _, _, there in items) == 40
    for prompt, kind, there in items:
        description, question = prompt.rsplit(" Is there", 1)
        assert kind in question and (kind in description.replace(".", " ").split()) == there, (prompt, kind, there)

    def reader(prompt: str) -> str:
        description, question = prompt.rsplit(" Is there", 1)
        kind = question.split()[1]
        return (f"Yes, there is a red {kind} in the image." if kind in description.replace(".", " ").split()
                else f"No, there is no {kind} in the image.")

    assert script.in_context_figures(reader, items) == {"copy": 1.0, "existence": 1.0, "yes": 0.5, "n": 80}
    prior = script.in_context_figures(lambda p: "No, there is no ball in the image.", items)
    assert prior["existence"] == 0.5 and prior["yes"] == 0.0
    assert prior["copy"] == sum(kind == "ball" for _, kind, _ in items) / 80 < 0.5


def test_lm_reading_documents_batches_and_existence_figures(tiny_world):
    """Reading documents ask about their own scene and label every token (pretraining) or only the answers (LLaVA's
    instruct masking); the figures score a model that reads the description 1.0 and one that ignores it 0.5."""
    from transformers import AutoTokenizer

    from tests.conftest import world_root

    script = _script("lm_reading")
    tok = AutoTokenizer.from_pretrained(world_root(tiny_world) / "llama-tiny")
    ids, labels = script.reading_document(tok, random.Random(3), 4, "all")
    assert labels == ids and ids[0] == tok.bos_token_id
    ids2, labels2 = script.reading_document(tok, random.Random(3), 4, "answers")
    assert ids2 == ids
    supervised = tok.decode([t for t, y in zip(ids2, labels2, strict=True) if y != script.IGNORE])
    text = tok.decode(ids2, skip_special_tokens=True)
    answers = [a for a in text.split("? ")[1:]]
    assert supervised.split() == " ".join(a.split(" Is there")[0] for a in answers).split()
    assert all(a.startswith(("Yes", "No")) for a in answers) and len(answers) == 4
    description = text.split(" Is there")[0].replace(".", " ").split()
    for question in text.split(" Is there")[1:]:  # about its own scene: "Yes" exactly when the description names it
        kind, answer = question.split()[1], question.split("? ")[1]
        assert answer.startswith("Yes") == (kind in description), (kind, answer, description)

    rows = next(script.batches(tok, reading=1.0, questions=2, loss="all", batch_size=3, seq_len=64))
    assert rows[0].shape == (3, 64) and (rows[0][:, 0] == tok.bos_token_id).all()
    world_only = next(script.batches(tok, reading=0.0, questions=2, loss="all", batch_size=8, seq_len=256))
    texts = [tok.decode(r, skip_special_tokens=True) for r in world_only[0]]
    assert not any(t.startswith("The image shows") and ("? Yes" in t or "? No" in t) for t in texts)

    probes = script.existence_probes(tok, 30)
    yes, no = tok.convert_tokens_to_ids("▁Yes"), tok.convert_tokens_to_ids("▁No")

    class Reader(torch.nn.Module):
        """Yes when the asked kind is named before the question, else No (or a constant, `reads=False`)."""

        def __init__(self, reads: bool) -> None:
            super().__init__()
            self.reads = reads

        def forward(self, ids: torch.Tensor):
            description, question = tok.decode(ids[0], skip_special_tokens=True).rsplit(" Is there", 1)
            kind = question.split()[1]
            logits = torch.zeros(1, ids.shape[1], len(tok))
            there = kind in description.replace(".", " ").split()
            logits[0, -1, yes if (there or not self.reads) else no] = 1.0
            return type("Out", (), {"logits": logits})

    assert script.existence_figures(Reader(True), tok, probes) == {"auc": 1.0, "accuracy": 1.0}
    assert script.existence_figures(Reader(False), tok, probes) == {"auc": 0.5, "accuracy": 0.5}


def test_visual_lookup_patches_splice_and_figures(tiny_world):
    """The oracle tokens put each object's kind on the patches its box covers in the padded square (the inner object
    over its container); the visual tokens replace `<image>` exactly; the figures score reading 1.0 and a prior 0.5."""
    from transformers import AutoTokenizer

    from lmm.constants import IMAGE_TOKEN_INDEX
    from lmm.world.scenes import Obj, Scene
    from tests.conftest import world_root

    script = _script("visual_lookup")
    # 240 x 160 pads to 240 x 240 (40 px above and below): patch centres at 15, 45, ..., 225 px of the square
    wide = Scene(240, 160, "white", [Obj("kite", "red", "large", (0.0, 0.0, 0.5, 1.0))])
    covered = {p for p, o in enumerate(script.under_patches(wide)) if o is not None}
    assert covered == {r * 8 + c for r in range(1, 7) for c in range(4)}
    nested = Scene(192, 192, "white", [Obj("box", "red", "large", (0.2, 0.2, 0.8, 0.8)),
                                       Obj("ball", "blue", "small", (0.4, 0.4, 0.6, 0.6))], inside={1: 0})
    under = script.under_patches(nested)
    assert under[3 * 8 + 3].kind == "ball" and under[2 * 8 + 2].kind == "box" and under[0] is None
    hot = script.onehot(nested)
    assert hot[0].tolist() == [0.0] * (len(KINDS) + len(COLORS)) + [1.0]
    assert hot[27, KINDS.index("ball")] == 1 and hot[27, len(KINDS) + list(COLORS).index("blue")] == 1
    assert hot[27].sum() == 2 and hot[18, KINDS.index("box")] == 1
    # --wrong: each object patch's kind replaced with that probability, its colour and the background kept
    assert torch.equal(script.onehot(nested, 0.0), hot)
    flipped = script.onehot(nested, 1.0)
    obj = hot[:, -1] == 0
    assert torch.equal(flipped[:, len(KINDS):], hot[:, len(KINDS):]) and (flipped[:, :len(KINDS)].sum(1) == obj).all()
    assert not (flipped[obj, :len(KINDS)] * hot[obj, :len(KINDS)]).any()
    many = [sample_scene(random.Random(j)) for j in range(40)]
    assert script.lookup_scenes(3) == [sample_scene(random.Random(f"visual-lookup-{j}")) for j in range(3)]
    other = script.lookup_scenes(3, 1)
    assert other != script.lookup_scenes(3) and other == script.lookup_scenes(3, 1)
    pairs = [(script.onehot(s), script.onehot(s, 0.36)) for s in many]
    right = torch.cat([(a[:, :len(KINDS)] * b[:, :len(KINDS)]).sum(1)[a[:, -1] == 0] for a, b in pairs])
    assert 0.56 < right.mean() < 0.72 and torch.equal(script.onehot(many[0], 0.36), pairs[0][1])

    tok = AutoTokenizer.from_pretrained(world_root(tiny_world) / "llama-tiny")
    ids = script.word_ids(nested, tok)
    assert ids[27] != ids[18] != ids[0] and len(set(ids.tolist())) == 3
    assert tok.decode([int(ids[27])]).strip() in "ball" and tok.decode([int(ids[0])]).strip() in "background"

    rng = random.Random(0)
    scene = sample_scene(random.Random(4))
    asked = [script.question(scene, "kind", rng) for _ in range(400)]
    assert all(label == (kind in {o.kind for o in scene.objects}) for kind, label in asked)
    assert 150 < sum(label for _, label in asked) < 250

    class Recorder(torch.nn.Module):
        """Stands for the LM: keeps the embeddings it is handed; logits say which patch token was seen."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(len(tok), 4)

        def get_input_embeddings(self):
            return self.embed

        def forward(self, inputs_embeds, attention_mask):
            self.seen = inputs_embeds
            logits = torch.zeros(*inputs_embeds.shape[:2], len(tok))
            logits[..., 0] = torch.arange(inputs_embeds.shape[1]).float()  # each place's logits name the place
            return type("Out", (), {"logits": logits})

    visual = [torch.full((64, 4), 7.0), torch.full((64, 4), 9.0)]
    model = script.Lookup(Recorder(), tok, visual, torch.nn.Identity(), "kind")
    last = model([(0, "kite"), (1, "ball")])
    assert last[:, 0].tolist() == [len(model.prompts[k]) - 1 + 64 - 1 for k in ("kite", "ball")]  # the last real place
    for row, (i, kind) in enumerate([(0, "kite"), (1, "ball")]):
        prompt = model.prompts[kind]
        p = int((prompt == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
        seen = model.llm.seen[row, : len(prompt) - 1 + 64]
        assert torch.equal(seen[p : p + 64], visual[i])
        assert torch.equal(seen[:p], model.llm.embed(prompt[:p]))
        assert torch.equal(seen[p + 64 :], model.llm.embed(prompt[p + 1 :]))

    scenes = [sample_scene(random.Random(j)) for j in range(40)]
    held = [(j, *script.question(scenes[j], "kind", random.Random(j))) for j in range(40)]
    yes, no = 5, 6

    def reader(reads: bool):
        def answer(batch):
            logits = torch.zeros(len(batch), 10)
            for row, (j, kind) in enumerate(batch):
                there = kind in {o.kind for o in scenes[j].objects}
                logits[row, yes if (there or not reads) else no] = 1.0
            return logits
        return answer

    assert script.figures(reader(True), held, yes, no) == (1.0, 1.0)
    auc, accuracy = script.figures(reader(False), held, yes, no)
    assert auc == 0.5 and accuracy == pytest.approx(sum(y for _, _, y in held) / len(held))


def test_visual_lookup_caption_words_loss_and_nearest_words(tiny_world):
    """The text stand-in alternates kind and colour words over an object's patches; the caption loss scores only
    the caption, each token from the one before; the nearest-word check finds a connector that writes the words."""
    from transformers import AutoTokenizer

    from lmm.world.scenes import Obj, Scene
    from tests.conftest import world_root

    script = _script("visual_lookup")
    tok = AutoTokenizer.from_pretrained(world_root(tiny_world) / "llama-tiny")
    word = {w: tok(w, add_special_tokens=False).input_ids[-1] for w in ("box", "red", "ball", "blue", "background")}
    nested = Scene(192, 192, "white", [Obj("box", "red", "large", (0.2, 0.2, 0.8, 0.8)),
                                       Obj("ball", "blue", "small", (0.4, 0.4, 0.6, 0.6))], inside={1: 0})
    ids = script.checker_words(nested, tok).tolist()
    assert [ids[18], ids[19], ids[27], ids[28], ids[0]] == [word[w] for w in ("box", "red", "ball", "blue",
                                                                              "background")]

    class NextToken(torch.nn.Module):
        """Reads the next input token off its one-hot embedding: a perfect predictor of any text that follows."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(len(tok), len(tok))
            self.embed.weight.data = torch.eye(len(tok))

        def get_input_embeddings(self):
            return self.embed

        def forward(self, inputs_embeds, attention_mask):
            nxt = torch.cat([inputs_embeds[:, 1:], inputs_embeds[:, :1]], 1)
            return type("Out", (), {"logits": 50.0 * nxt})

    scenes = [sample_scene(random.Random(j)) for j in range(3)]
    blank = [torch.zeros(64, len(tok)) for _ in scenes]
    model = script.Lookup(NextToken(), tok, blank, torch.nn.Identity(), "kind")
    assert script.caption_loss(model, scenes, tok, [0, 1, 2]) < 1e-3  # the visual tokens are not targets

    words = torch.nn.Embedding(len(tok), 8)
    lm = type("LM", (), {"get_input_embeddings": lambda self: words})()
    scenes = [sample_scene(random.Random(j)) for j in range(6)]
    checker = script.Lookup(lm, tok, [words(script.checker_words(s, tok)) for s in scenes], torch.nn.Identity(), "kind")
    near = script.patch_words(checker, scenes, list(range(6)), tok)
    assert near["kind"] + near["colour"] == pytest.approx(1.0) and 0.3 < near["kind"] < 0.7
    assert near["background"] == 1.0 and 0.3 < near["cosine"] < 0.7  # the kind's word on half the object patches
    kinds_only = script.Lookup(lm, tok, [words(script.word_ids(s, tok)) for s in scenes], torch.nn.Identity(), "kind")
    near = script.patch_words(kinds_only, scenes, list(range(6)), tok)
    assert near["kind"] == 1.0 and near["colour"] == 0.0 and near["cosine"] == pytest.approx(1.0)
    shuffled = script.Lookup(lm, tok, [t[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
                                       for t in checker.tokens], torch.nn.Identity(), "kind")
    assert script.patch_words(shuffled, scenes, list(range(6)), tok)["background"] < 0.9


def test_visual_lookup_tower_tokens_are_the_padded_penultimate_patches(tiny_world):
    """A CLIP folder's tokens are its vision tower's penultimate patches of the image padded to a square, as the
    tiny preset hands them to the connector (a centre crop would drop the sides of the wide scenes)."""
    from lmm.model.encoder import VisionEncoder
    from lmm.model.preprocess import ImageTransform
    from lmm.world.scenes import render
    from tests.conftest import world_root

    script = _script("visual_lookup")
    folder = world_root(tiny_world) / "clip-tiny-res224"
    scenes = [sample_scene(random.Random(j)) for j in range(6)]
    assert any(s.width != s.height for s in scenes)
    tokens, connector = script.tower_tokens(None, str(folder), scenes)
    assert connector is None  # a CLIP folder's tower comes with no connector: a fresh one is made
    encoder = VisionEncoder.from_pretrained(folder, select_layer=-2)
    with torch.no_grad():
        expected = encoder(torch.stack([ImageTransform.from_pretrained(folder, aspect="pad")(render(s))
                                        for s in scenes]))
    assert len(tokens) == 6 and tokens[0].shape == (encoder.num_patches, encoder.hidden_size)
    assert torch.allclose(torch.stack(tokens), expected)
    with torch.no_grad():  # --textured: the same tower on the scenes drawn with the kinds' textures
        textured = encoder(torch.stack([ImageTransform.from_pretrained(folder, aspect="pad")(render(s, True))
                                        for s in scenes]))
    assert torch.allclose(torch.stack(script.tower_tokens(None, str(folder), scenes, True)[0]), textured)
    assert not torch.allclose(textured, expected)
