"""The tiny world's zoo (lmm.world.zoo): a tokenizer that tokenises as Llama-2's does, a full CLIP pretrained
contrastively at two resolutions (the higher continued from the lower), Llama LMs pretrained on text, all loadable
through the paper's `from_pretrained` paths and byte-identical for a seed. Small settings: seconds each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPModel, CLIPVisionModel, LlamaForCausalLM

from lmm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from lmm.data.records import Turn
from lmm.data.templates import VICUNA_V1_SYSTEM, PlainTemplate, VicunaV1Template, tokenize_prompt
from lmm.model.encoder import VisionEncoder
from lmm.model.llm import load_tokenizer
from lmm.model.preprocess import ImageTransform
from lmm.world import clip_objectives, zoo_clip
from lmm.world.pretrain import Batches, heldout_perplexity, seeded, token_stream
from lmm.world.zoo import build_siglip_tower, build_tokenizer, pretrain_clip, pretrain_llm
from lmm.world.zoo_clip import END_OF_TEXT, crop_pixels, normalize, retrieval_top1, tokenize_captions
from tests.conftest import LLAMA_TOKENIZER, need_fixture

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40)}
SHAPES = ("square", "circle")
SIZES = ((40, 30), (30, 40), (36, 36), (48, 27))


def _scene(i: int) -> tuple[Image.Image, str]:
    """A shape of some colour on a white or black background, on a canvas of one of four aspect ratios."""
    colour, shape = list(COLOURS)[i % 4], SHAPES[(i // 4) % 2]
    background = ("white", "black")[(i // 8) % 2]
    w, h = SIZES[i % len(SIZES)]
    img = Image.new("RGB", (w, h), (245, 245, 245) if background == "white" else (20, 20, 20))
    box = (w // 2 - 8, h // 2 - 8, w // 2 + 8, h // 2 + 8)
    (ImageDraw.Draw(img).rectangle if shape == "square" else ImageDraw.Draw(img).ellipse)(box, fill=COLOURS[colour])
    return img, f"a {colour} {shape} on a {background} background"


SCENES = [_scene(i) for i in range(16)]
IMAGES, CAPTIONS = [s[0] for s in SCENES], [s[1] for s in SCENES]
QUESTIONS = ["What colour is the square?", "Is there a circle in the image?", "Describe the image.",
             "Answer the question using a single word or phrase."]
ANSWERS = ["The square is red.", "Yes, there is.", "A blue circle on a black background.", "Two"]
TEXTS = CAPTIONS + QUESTIONS + ANSWERS + [VICUNA_V1_SYSTEM, "USER:", "ASSISTANT:", "\n"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(TEXTS * 3, out, vocab_size=300)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir: Path):
    return load_tokenizer(str(tok_dir))


def _with_image_token(path: str | Path):
    """The tokenizer at `path` with <image> added as a special token (LLaVA-style whole-prompt tokenisation)."""
    t = load_tokenizer(str(path))
    t.add_tokens(["<image>"], special_tokens=True)
    return t, t.convert_tokens_to_ids("<image>")


def _vicuna(turns: list[tuple[str, str]]) -> str:
    """LLaVA's vicuna_v1 conversation text, <image> at the start of the first turn."""
    text = VICUNA_V1_SYSTEM + " "
    for j, (q, a) in enumerate(turns):
        q = "<image>\n" + q if j == 0 else q
        text += f"USER: {q} ASSISTANT: {a}</s>"
    return text


PROMPTS = [
    "A chat. USER: <image>\nWhat is it? ASSISTANT:",
    _vicuna([(QUESTIONS[0], ANSWERS[0])]),
    _vicuna([(QUESTIONS[0], ANSWERS[0]), (QUESTIONS[1], ANSWERS[1]), (QUESTIONS[3], ANSWERS[3])]),
    VICUNA_V1_SYSTEM + " USER: <image>\n" + QUESTIONS[2] + "\n" + QUESTIONS[3] + " ASSISTANT:",
    "<image>\na red square on a white background\n",
    "<image>",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_whole_prompt_equals_llava_chunked_tokenisation(tok, tok_dir, prompt):
    """<image> added as a special token and the prompt tokenised whole gives LLaVA's chunk-by-chunk ids."""
    whole_tok, image_id = _with_image_token(tok_dir)
    chunked = [image_id if i == IMAGE_TOKEN_INDEX else i for i in tokenize_prompt(prompt, tok)]
    assert whole_tok(prompt)["input_ids"] == chunked


def test_tokenizer_ids_and_padding(tok, tok_dir):
    assert [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == [0, 1, 2, 0]
    assert tok.padding_side == "right"
    ids = tok("a red square")["input_ids"]
    assert ids[0] == 1 and ids[-1] != 2 and 0 not in ids  # BOS prepended, no EOS, no <unk> on known text
    assert tok("</s>", add_special_tokens=False)["input_ids"] == [2]
    saved = AutoTokenizer.from_pretrained(str(tok_dir))
    assert all(saved(p)["input_ids"] == tok(p)["input_ids"] for p in PROMPTS)


def _pieces(t, text: str) -> list[str]:
    return [p.replace("<0x0A>", "\n") for p in t.convert_ids_to_tokens(t(text)["input_ids"])]


@pytest.mark.parametrize("prompt", PROMPTS[:5] + ["What is it?\nYes.", "Hello, world! x;y:z"])
def test_token_pattern_is_llamas(tok_dir, prompt):
    """Same "▁" placement as Llama-2 (before every section, also after <image> and </s>; none after a newline),
    and a newline always a piece of its own, whole and chunk-wise."""
    llama, _ = _with_image_token(need_fixture(LLAMA_TOKENIZER, "the real Llama-2 tokenizer fixture"))
    ours, _ = _with_image_token(tok_dir)
    theirs_pieces, our_pieces = _pieces(llama, prompt), _pieces(ours, prompt)
    assert "".join(our_pieces) == "".join(theirs_pieces)
    assert all(p == "\n" or "\n" not in p for p in our_pieces)
    assert our_pieces.count("\n") == theirs_pieces.count("\n") == prompt.count("\n")


def test_decode_round_trips(tok):
    for text in ["What is it?\nYes.", "a red square on a white background\n", "USER: Describe the image. ASSISTANT:",
                 "Yes, there is.\n\nTwo"]:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_templates_mask_on_the_world_tokenizer(tok):
    conv = [Turn("human", "<image>\n" + QUESTIONS[0]), Turn("gpt", ANSWERS[0]),
            Turn("human", QUESTIONS[1]), Turn("gpt", ANSWERS[1])]
    enc = VicunaV1Template().encode(conv, tok)
    runs, cur = [], None
    for i, lab in zip(enc.input_ids, enc.labels, strict=True):
        if lab == IGNORE_INDEX:
            cur = None
            continue
        if cur is None:
            runs.append(cur := [])
        cur.append(i)
    assert [tok.decode(r) for r in runs] == [ANSWERS[0] + "</s>", ANSWERS[1] + "</s>"]
    plain = PlainTemplate().encode([Turn("human", "<image>"), Turn("gpt", CAPTIONS[0])], tok)
    assert plain.input_ids[:2] == [1, IMAGE_TOKEN_INDEX]
    assert tok.decode([i for i, lab in zip(plain.input_ids, plain.labels, strict=True) if lab != IGNORE_INDEX]) \
        == CAPTIONS[0] + "\n"


# ---- CLIP ---------------------------------------------------------------------------------------------------------

SMALL_CLIP = {"patch_size": 8, "hidden_size": 16, "num_layers": 2, "batch_size": 8, "lr": 5e-3, "progress": False}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, tok) -> dict:
    """A 16px CLIP trained for 40 steps and a 24px CLIP continued from it with no step of its own."""
    root = tmp_path_factory.mktemp("clip")
    low = pretrain_clip(root / "low", IMAGES, CAPTIONS, tok, image_size=16, steps=40, seed=0,
                        heldout=(IMAGES, CAPTIONS), pool=8, **SMALL_CLIP)
    high = pretrain_clip(root / "high", IMAGES, CAPTIONS, tok, image_size=24, steps=0, init_from=root / "low",
                         batch_size=8, progress=False)
    return {"root": root, "low": low, "high": high}


def test_clip_loss_decreases_and_retrieval_is_reported(clips):
    low = clips["low"]
    assert low["final_loss"] < 0.7 * low["first_loss"]
    assert low["retrieval_top1"] > 1 / 8  # better than chance among 8 captions after fitting these 16 pairs
    assert low["num_patches"] == 4 and clips["high"]["num_patches"] == 9 and clips["high"]["first_loss"] is None


def test_clip_folder_is_a_full_clip_checkpoint_and_a_vision_tower(clips):
    folder = clips["root"] / "low"
    full = CLIPModel.from_pretrained(folder)
    assert full.config.model_type == "clip" and full.text_model is not None
    encoder = VisionEncoder.from_pretrained(str(folder))
    assert isinstance(encoder.tower, CLIPVisionModel) and encoder.num_patches == 4
    vision_state = full.vision_model.state_dict()
    assert all(torch.equal(v, vision_state[k.removeprefix("vision_model.")])
               for k, v in encoder.tower.state_dict().items())
    transform = encoder.image_transform(aspect="crop")
    assert transform.image_size == 16 and transform.resize_size == 16
    cached = normalize(crop_pixels(IMAGES, 16))  # what pretraining saw is what the saved processor gives
    assert all(torch.equal(transform(img), cached[i]) for i, img in enumerate(IMAGES))
    assert torch.equal(ImageTransform.from_pretrained(folder, aspect="crop")(IMAGES[3]), cached[3])
    assert encoder(cached[:2]).shape == (2, 4, 16)


def test_clip_text_tower_pools_its_end_of_text_token(clips):
    folder = clips["root"] / "low"
    model, text_tok = CLIPModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    eot = text_tok.convert_tokens_to_ids(END_OF_TEXT)
    assert model.config.text_config.eos_token_id == eot == model.config.text_config.vocab_size - 1 != 2
    batch = text_tok([CAPTIONS[0], "a red square"], padding=True, return_tensors="pt")
    assert batch["input_ids"][1, int(batch["attention_mask"][1].sum()) - 1] == eot
    out = model.text_model(**batch)
    ends = batch["attention_mask"].sum(1) - 1
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(2), ends])
    ids, lengths = tokenize_captions(text_tok, [CAPTIONS[0] + " and more" * 20], max_len=12)
    assert lengths.tolist() == [12] and ids[0, 11] == eot  # a caption cut to fit keeps its end of text


def test_high_resolution_continues_the_low_one(clips):
    low = CLIPModel.from_pretrained(clips["root"] / "low")
    high = CLIPModel.from_pretrained(clips["root"] / "high")
    assert high.config.vision_config.image_size == 24 and low.config.vision_config.image_size == 16
    key = "vision_model.embeddings.position_embedding.weight"
    low_state, high_state = low.state_dict(), high.state_dict()
    assert set(low_state) == set(high_state)
    assert all(torch.equal(v, high_state[k]) for k, v in low_state.items() if k != key)
    # transformers' own interpolation of the low grid (2x2 -> 3x3) is the reference, class position kept
    embeddings = low.vision_model.embeddings
    reference = embeddings.interpolate_pos_encoding(torch.zeros(1, 10, 16), 24, 24)[0]
    assert high_state[key].shape == (10, 16) and torch.allclose(high_state[key], reference, atol=1e-6)
    assert not torch.allclose(high_state[key][1:5], low_state[key][1:5])
    assert VisionEncoder.from_pretrained(str(clips["root"] / "high")).image_transform().image_size == 24
    with pytest.raises(ValueError, match="keeps its architecture"):
        pretrain_clip(clips["root"] / "bad", IMAGES, CAPTIONS, None, image_size=24, init_from=clips["root"] / "low",
                      hidden_size=32, steps=0, progress=False)


def test_retrieval_top1_counts_pools_and_equal_captions(monkeypatch):
    """Image i and caption j embed as e_{i%4} and e_{j%4}: within a pool the first best caption is retrieved."""
    n = 8
    emb = torch.eye(4)[torch.arange(n) % 4]
    monkeypatch.setattr(zoo_clip, "_embed", lambda *args: (emb, emb))
    captions = [f"c{i}" for i in range(n)]
    assert retrieval_top1(None, None, None, None, captions, pool=4) == 1.0  # pools 0-3 and 4-7: each finds itself
    assert retrieval_top1(None, None, None, None, captions, pool=8) == 0.5  # one pool: 4-7 find 0-3 first
    assert retrieval_top1(None, None, None, None, captions, pool=100) == 0.5  # fewer pairs than a pool: one pool
    assert retrieval_top1(None, None, None, None, captions, pool=3) == 7 / 8  # pools 0-2 and 3-7 (last joined)
    same = ["a", "b", "c", "d"] * 2
    assert retrieval_top1(None, None, None, None, same, pool=8) == 1.0  # a caption of the same text counts


def _bytes(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def test_clip_is_deterministic_for_a_seed(tmp_path, tok):
    for name, seed, callers_seed in (("a", 0, 1), ("b", 0, 2), ("c", 1, 1)):
        torch.manual_seed(callers_seed)  # whatever the caller's RNG holds, the build is its seed's
        pretrain_clip(tmp_path / name, IMAGES, CAPTIONS, tok, image_size=16, steps=5, seed=seed, **SMALL_CLIP)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b") != _bytes(tmp_path / "c")


def test_siglip_tower_is_a_vision_tower(tmp_path):
    build_siglip_tower(tmp_path / "siglip", image_size=16, hidden_size=16, num_layers=2)
    encoder = VisionEncoder.from_pretrained(str(tmp_path / "siglip"))
    assert not encoder.has_cls_token and encoder.num_patches == 4 and encoder.image_transform().image_size == 16


# ---- Llama --------------------------------------------------------------------------------------------------------

LM_TEXTS = CAPTIONS + QUESTIONS + ANSWERS
SMALL_LM = {"hidden_size": 32, "num_layers": 2, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "progress": False}


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory, tok) -> dict:
    folder = tmp_path_factory.mktemp("llm") / "llama"
    return {"folder": folder, **pretrain_llm(folder, tok, LM_TEXTS * 4, steps=40, seed=0,
                                             heldout_texts=LM_TEXTS[:6], **SMALL_LM)}


def test_llm_loss_decreases_and_loads(llm, tok):
    assert llm["final_loss"] < 0.6 * llm["first_loss"]
    model = AutoModelForCausalLM.from_pretrained(llm["folder"])
    assert isinstance(model, LlamaForCausalLM) and not model.config.tie_word_embeddings
    cfg = model.config
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.vocab_size) == (1, 2, 0, len(tok))
    assert cfg.max_position_embeddings == 1024
    assert load_tokenizer(str(llm["folder"]))(PROMPTS[1])["input_ids"] == tok(PROMPTS[1])["input_ids"]
    assert 1 < llm["heldout_ppl"] < len(tok)
    assert math.isclose(heldout_perplexity(model, tok, LM_TEXTS[:6]), llm["heldout_ppl"], rel_tol=1e-4)


def test_heldout_perplexity_is_token_weighted(llm, tok):
    model = AutoModelForCausalLM.from_pretrained(llm["folder"])
    texts = [CAPTIONS[2], QUESTIONS[3]]
    nll, count = 0.0, 0
    for text in texts:  # each alone, BOS + text + EOS, every token after BOS predicted
        ids = torch.tensor([[1, *tok(text, add_special_tokens=False)["input_ids"], 2]])
        with torch.no_grad():
            nll += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    assert math.isclose(heldout_perplexity(model, tok, texts, batch_size=2), math.exp(nll / count), rel_tol=1e-4)


def test_token_stream_is_framed_and_shuffled_by_the_seed(tok):
    def stream(seed: int) -> list[int]:
        return token_stream(tok, LM_TEXTS, torch.Generator().manual_seed(seed)).tolist()

    assert stream(0) == stream(0) != stream(1)
    ids = stream(0)
    assert ids.count(1) == ids.count(2) == len(LM_TEXTS) and ids[0] == 1 and ids[-1] == 2
    in_order = [t for text in LM_TEXTS for t in (1, *tok(text, add_special_tokens=False)["input_ids"], 2)]
    assert ids != in_order and sorted(ids) == sorted(in_order)


def test_llm_is_deterministic_and_leaves_the_callers_rng(tmp_path, tok):
    for name, seed, callers_seed in (("a", 0, 1), ("b", 0, 2), ("c", 1, 1)):
        torch.manual_seed(callers_seed)
        expected = torch.rand(3)
        torch.manual_seed(callers_seed)
        pretrain_llm(tmp_path / name, tok, LM_TEXTS * 4, steps=4, seed=seed, **SMALL_LM)
        assert torch.equal(torch.rand(3), expected)  # the caller's RNG is where it was
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b") != _bytes(tmp_path / "c")


def test_data_order_follows_the_seed():
    def order(seed: int) -> list[list[int]]:
        with seeded(seed) as gen:
            batches = Batches(10, 4, gen)
            return [batches.next().tolist() for _ in range(5)]

    first = order(0)
    assert first == order(0) != order(1)
    assert sorted(sum(first[:2], []) + first[2][:2]) == list(range(10))  # an epoch visits every item once


def test_pretraining_prints_nothing_but_its_log_line(tmp_path, tok, capfd):
    pretrain_llm(tmp_path / "quiet", tok, LM_TEXTS * 4, steps=2, **SMALL_LM)
    pretrain_clip(tmp_path / "quiet-clip", IMAGES, CAPTIONS, tok, image_size=16, steps=2, **SMALL_CLIP)
    pretrain_clip(tmp_path / "quiet-clip-2", IMAGES, CAPTIONS, tok, image_size=24, steps=0,
                  init_from=tmp_path / "quiet-clip", progress=False)
    out, err = capfd.readouterr()
    assert err == ""
    assert all(line.startswith("[lmm] ") for line in out.splitlines())


def test_hard_negatives_join_every_images_captions(tok):
    """The loss with hard negatives, checked against transformers' own CLIP loss: negatives equal to the captions
    double every image's candidates, adding exactly ln 2 to the image -> text half; and every negative of the batch
    is ranked against every image (permuting them changes nothing), never taken for a target."""
    torch.manual_seed(0)
    model = CLIPModel(zoo_clip.clip_config(len(tok) + 1, len(tok), tok.pad_token_id, tok.bos_token_id, image_size=16,
                                           patch_size=8, hidden_size=16, num_layers=1, text_hidden_size=16,
                                           text_layers=1, max_text_len=32, projection_dim=16))
    text_tok = zoo_clip.clip_text_tokenizer(tok)
    pixels = normalize(crop_pixels(IMAGES[:6], 16))
    ids, lengths = tokenize_captions(text_tok, CAPTIONS[:6], 32)
    texts = zoo_clip._text_batch(ids, lengths, torch.arange(6))
    plain = model(input_ids=texts[0], attention_mask=texts[1], pixel_values=pixels, return_loss=True).loss
    doubled = zoo_clip._loss_with_negatives(model, pixels, texts, texts)
    assert torch.allclose(doubled, plain + math.log(2) / 2, atol=1e-5)
    other_ids, other_lengths = tokenize_captions(text_tok, CAPTIONS[6:12], 32)
    negs = zoo_clip._text_batch(other_ids, other_lengths, torch.arange(6))
    flipped = zoo_clip._text_batch(other_ids, other_lengths, torch.arange(5, -1, -1))
    with_negs = zoo_clip._loss_with_negatives(model, pixels, texts, negs)
    assert torch.allclose(with_negs, zoo_clip._loss_with_negatives(model, pixels, texts, flipped), atol=1e-6)
    assert with_negs > plain


def test_clip_pretrains_with_hard_negatives(tmp_path, tok):
    negatives = [[c.replace("square", "circle") if "square" in c else c.replace("circle", "square")] for c in CAPTIONS]
    out = pretrain_clip(tmp_path / "neg", IMAGES, CAPTIONS, tok, image_size=16, steps=5, negatives=negatives,
                        max_text_len=16, **SMALL_CLIP)
    # continued at a higher resolution: captions and negatives both cut to the model's 16 text positions
    long = [[n[0] + " on a black background" * 4] for n in negatives]  # longer than 16 positions
    pretrain_clip(tmp_path / "neg-high", IMAGES, CAPTIONS, tok, image_size=24, steps=1, negatives=long,
                  init_from=tmp_path / "neg", batch_size=8, progress=False)
    plain = pretrain_clip(tmp_path / "plain", IMAGES, CAPTIONS, tok, image_size=16, steps=5, max_text_len=16,
                          **SMALL_CLIP)
    assert out["first_loss"] != plain["first_loss"] and _bytes(tmp_path / "neg") != _bytes(tmp_path / "plain")
    with pytest.raises(ValueError, match="negatives for 16 captions"):
        pretrain_clip(tmp_path / "bad", IMAGES, CAPTIONS, tok, image_size=16, steps=1, negatives=negatives[:3],
                      **SMALL_CLIP)


def _small_clip(tok) -> CLIPModel:
    torch.manual_seed(0)
    return CLIPModel(zoo_clip.clip_config(len(tok) + 1, len(tok), tok.pad_token_id, tok.bos_token_id, image_size=16,
                                          patch_size=8, hidden_size=16, num_layers=2, text_hidden_size=16,
                                          text_layers=1, max_text_len=32, projection_dim=16))


def test_caption_word_targets_hold_each_captions_words_and_no_special_token(tok):
    text_tok = zoo_clip.clip_text_tokenizer(tok)
    ids, lengths = tokenize_captions(text_tok, ["a red square", "a blue circle on a black background"], 16)
    special = (text_tok.bos_token_id, text_tok.eos_token_id)
    targets = clip_objectives.caption_word_targets(ids, lengths, len(text_tok), special)
    square, circle = text_tok.convert_tokens_to_ids(["▁square", "▁circle"])
    assert targets[0, square] == 1 and targets[0, circle] == 0 and targets[1, circle] == 1
    assert targets[:, list(special)].sum() == 0 and targets[:, text_tok.pad_token_id].sum() == 0  # pad: not a word
    for i, n in enumerate(lengths.tolist()):
        assert targets[i].sum() == len(set(ids[i, :n].tolist()) - set(special))


def test_caption_words_read_the_patches_of_their_layer():
    torch.manual_seed(0)
    head = clip_objectives.CaptionWords(hidden_size=8, vocab_size=5, layer=-2)
    states = [torch.randn(2, 5, 8) for _ in range(4)]
    out = head(states)
    moved = [s.clone() for s in states]
    moved[-2][:, 0] = 100 * torch.randn(2, 8)  # the class token
    moved[-1] = 100 * torch.randn(2, 5, 8)  # another layer
    assert torch.equal(head(moved), out)
    moved[-2][:, 1:] = torch.randn(2, 4, 8)  # the patches of its layer
    assert not torch.equal(head(moved), out)


def test_caption_word_loss_is_clips_plus_a_word_term_summed_over_the_vocabulary(tok):
    """Checked against transformers' own CLIP loss: weight 0 gives it exactly; a head that scores every word 0 adds
    ln 2 per vocabulary entry (a mean over the vocabulary would add ln 2 once)."""
    model, text_tok = _small_clip(tok), zoo_clip.clip_text_tokenizer(tok)
    pixels = normalize(crop_pixels(IMAGES[:6], 16))
    ids, lengths = tokenize_captions(text_tok, CAPTIONS[:6], 32)
    texts = zoo_clip._text_batch(ids, lengths, torch.arange(6))
    plain = model(input_ids=texts[0], attention_mask=texts[1], pixel_values=pixels, return_loss=True).loss
    words = clip_objectives.CaptionWords(16, len(text_tok))
    torch.nn.init.zeros_(words.score.weight)
    torch.nn.init.zeros_(words.score.bias)
    targets = clip_objectives.caption_word_targets(ids, lengths, len(text_tok), (tok.bos_token_id,))
    loss_with = clip_objectives.loss_with_heads
    assert torch.allclose(loss_with(model, pixels, texts, [(0.0, words, targets)]), plain, atol=1e-5)
    with_words = loss_with(model, pixels, texts, [(0.5, words, targets)])
    assert torch.allclose(with_words, plain + 0.5 * len(text_tok) * math.log(2), atol=1e-3)


def test_clip_pretrains_with_caption_words_and_saves_a_plain_clip(tmp_path, tok):
    out = pretrain_clip(tmp_path / "words", IMAGES, CAPTIONS, tok, image_size=16, steps=5, caption_words=1.0,
                        **SMALL_CLIP)
    plain = pretrain_clip(tmp_path / "plain", IMAGES, CAPTIONS, tok, image_size=16, steps=5, **SMALL_CLIP)
    assert out["first_loss"] > plain["first_loss"] and _bytes(tmp_path / "words") != _bytes(tmp_path / "plain")
    saved = CLIPModel.from_pretrained(tmp_path / "words")  # the head is not saved: the checkpoint is a CLIP
    assert set(saved.state_dict()) == set(CLIPModel.from_pretrained(tmp_path / "plain").state_dict())
    with pytest.raises(ValueError, match="separate recipes"):
        pretrain_clip(tmp_path / "both", IMAGES, CAPTIONS, tok, image_size=16, steps=1, caption_words=1.0,
                      negatives=[[c] for c in CAPTIONS], **SMALL_CLIP)


def _world_scenes(n: int) -> list:
    import random

    from lmm.world.scenes import sample_scene

    return [sample_scene(random.Random(f"zoo-{i}")) for i in range(n)]


def test_patch_label_targets_name_the_thing_under_each_patch():
    from lmm.world.scenes import COLORS, KINDS, Obj, Scene, patch_objects

    scenes = [*_world_scenes(5), Scene(64, 64, "white", [Obj("kite", "pink", "large", (0.0, 0.0, 0.5, 0.5))])]
    targets = clip_objectives.patch_label_targets(scenes, 4, "crop")
    assert targets.shape == (6, 16, 2) and targets.dtype == torch.long
    assert targets[5, :, 0].tolist() == [KINDS.index("kite")] * 2 + [len(KINDS)] * 2 + [KINDS.index("kite")] * 2 + [
        len(KINDS)] * 10
    assert set(targets[5, :, 1].tolist()) == {list(COLORS).index("pink"), len(COLORS)}
    for scene, t in zip(scenes, targets, strict=True):
        for o, (kind, colour) in zip(patch_objects(scene, 4, "crop"), t.tolist(), strict=True):
            assert (kind, colour) == ((len(KINDS), len(COLORS)) if o is None
                                      else (KINDS.index(o.kind), list(COLORS).index(o.colour)))


def test_patch_labels_read_each_patch_of_their_layer_and_add_two_cross_entropies(tok):
    """A zero head scores every class alike: the loss is ln(kinds + 1) + ln(colours + 1) whatever the targets; a head
    reads its layer's patches only (not the class token, not another layer); with weight 0 the loss is CLIP's."""
    from lmm.world.scenes import COLORS, KINDS

    torch.manual_seed(0)
    head = clip_objectives.PatchLabels(hidden_size=8, layer=-2)
    states = [torch.randn(2, 5, 8) for _ in range(4)]
    kind, colour = head(states)
    assert kind.shape == (2, 4, len(KINDS) + 1) and colour.shape == (2, 4, len(COLORS) + 1)
    moved = [s.clone() for s in states]
    moved[-2][:, 0], moved[-1] = 100 * torch.randn(2, 8), 100 * torch.randn(2, 5, 8)
    assert torch.equal(head(moved)[0], kind)
    moved[-2][:, 2] = torch.randn(2, 8)
    assert not torch.equal(head(moved)[0], kind)
    targets = torch.randint(0, 9, (2, 4, 2))
    by_hand = sum(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[..., j].reshape(-1))
                  for j, logits in enumerate((kind, colour)))
    assert torch.allclose(head.loss(states, targets), by_hand)
    for layer in (head.kind, head.colour):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    uniform = math.log(len(KINDS) + 1) + math.log(len(COLORS) + 1)
    assert math.isclose(float(head.loss(states, targets).detach()), uniform, rel_tol=1e-6)
    model, text_tok = _small_clip(tok), zoo_clip.clip_text_tokenizer(tok)
    pixels = normalize(crop_pixels(IMAGES[:6], 16))
    ids, lengths = tokenize_captions(text_tok, CAPTIONS[:6], 32)
    texts = zoo_clip._text_batch(ids, lengths, torch.arange(6))
    plain = model(input_ids=texts[0], attention_mask=texts[1], pixel_values=pixels, return_loss=True).loss
    labels = clip_objectives.patch_label_targets(_world_scenes(6), 2, "crop")
    wide = clip_objectives.PatchLabels(16)
    with_head = clip_objectives.loss_with_heads(model, pixels, texts, [(0.5, wide, labels)])
    assert torch.allclose(clip_objectives.loss_with_heads(model, pixels, texts, [(0.0, wide, labels)]), plain)
    assert float(with_head.detach()) > float(plain.detach()) + 0.5


def test_clip_pretrains_with_patch_labels_and_saves_a_plain_clip(tmp_path, tok):
    scenes = _world_scenes(len(IMAGES))
    out = pretrain_clip(tmp_path / "patches", IMAGES, CAPTIONS, tok, image_size=16, steps=5, patch_labels=1.0,
                        scenes=scenes, **SMALL_CLIP)
    plain = pretrain_clip(tmp_path / "plain", IMAGES, CAPTIONS, tok, image_size=16, steps=5, **SMALL_CLIP)
    assert out["first_loss"] > plain["first_loss"] + 2 and _bytes(tmp_path / "patches") != _bytes(tmp_path / "plain")
    saved = CLIPModel.from_pretrained(tmp_path / "patches")
    assert set(saved.state_dict()) == set(CLIPModel.from_pretrained(tmp_path / "plain").state_dict())
    high = pretrain_clip(tmp_path / "high", IMAGES, CAPTIONS, tok, image_size=24, steps=2, patch_labels=1.0,
                         scenes=scenes, init_from=tmp_path / "patches", batch_size=8, progress=False)
    assert high["num_patches"] == 9 and high["first_loss"] > plain["first_loss"]  # a 3 x 3 grid of targets
    with pytest.raises(ValueError, match="the scene of every image"):
        pretrain_clip(tmp_path / "none", IMAGES, CAPTIONS, tok, image_size=16, steps=1, patch_labels=1.0,
                      **SMALL_CLIP)
    with pytest.raises(ValueError, match="separate recipes"):
        pretrain_clip(tmp_path / "neg", IMAGES, CAPTIONS, tok, image_size=16, steps=1, patch_labels=1.0,
                      scenes=scenes, negatives=[[c] for c in CAPTIONS], **SMALL_CLIP)


# ---- the LMs' reading and grid documents (lmm.world.lm_text) and their place in the pretraining ------------------


def test_document_rows_frame_each_document_alone_and_mask_the_padding(tok):
    from lmm.world.pretrain import document_rows

    docs = [CAPTIONS[0], " ".join(CAPTIONS)]
    ids, labels = document_rows(tok, docs, 12)
    first = [1, *tok(docs[0], add_special_tokens=False)["input_ids"], 2]
    assert ids[0, :len(first)].tolist() == first and labels[0, :len(first)].tolist() == first
    assert (labels[0, len(first):] == -100).all() and (ids[0, len(first):] == tok.pad_token_id).all()
    assert ids[1].tolist() == [1, *tok(docs[1], add_special_tokens=False)["input_ids"]][:12]  # cut, from its start
    assert (labels[1] != -100).all()


def _spy_batches(monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    forward = LlamaForCausalLM.forward

    def spy(self, *args, **kwargs):
        if self.training:
            seen.append(kwargs["input_ids"].clone())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", spy)
    return seen


def test_reading_steps_come_first_then_document_rows_join_the_text_blocks(tmp_path, tok, monkeypatch):
    reading = [f"{c} Is there a square? Yes." for c in CAPTIONS]
    docs = [f"{c} {a}" for c, a in zip(QUESTIONS, ANSWERS, strict=True)]
    seen = _spy_batches(monkeypatch)
    out = pretrain_llm(tmp_path / "docs", tok, LM_TEXTS * 4, steps=3, reading=reading, reading_steps=2,
                       documents=docs, documents_share=0.5, **SMALL_LM)
    assert out["steps"] == 5 and len(seen) == 5 and all(b.shape == (4, 32) for b in seen[2:])
    longest = max(len(tok(r)["input_ids"]) for r in reading) + 1  # BOS + document + EOS, no column of padding alone
    assert all(b.shape == (4, longest) for b in seen[:2]) and longest < 32
    reading_rows = {tuple([1, *tok(r, add_special_tokens=False)["input_ids"], 2]) for r in reading}
    doc_rows = {tuple([1, *tok(d, add_special_tokens=False)["input_ids"], 2]) for d in docs}

    def unpadded(row: torch.Tensor) -> tuple[int, ...]:
        n = len(row) - int((row.flip(0).cumsum(0) == 0).sum())  # right padding is the pad id (0)
        return tuple(row[:n].tolist())

    for batch in seen[:2]:  # documents alone, one per row
        assert all(unpadded(row) in reading_rows for row in batch)
    for batch in seen[2:]:  # two text blocks (the packed stream) and two document rows
        assert all(unpadded(row) in doc_rows for row in batch[2:])
        assert not any(unpadded(row) in doc_rows | reading_rows for row in batch[:2])
    with pytest.raises(ValueError, match="no reading documents"):
        pretrain_llm(tmp_path / "x", tok, LM_TEXTS * 4, steps=1, reading_steps=2, **SMALL_LM)
    with pytest.raises(ValueError, match="but no documents"):
        pretrain_llm(tmp_path / "y", tok, LM_TEXTS * 4, steps=1, documents_share=0.5, **SMALL_LM)


def test_a_grown_llama_repeats_each_layer_of_the_smaller_one(llm, tmp_path, tok):
    from lmm.world.pretrain import grown

    small = LlamaForCausalLM.from_pretrained(llm["folder"])
    big = grown(llm["folder"], 2)
    assert big.config.num_hidden_layers == 2 * small.config.num_hidden_layers
    for i, layer in enumerate(small.model.layers):
        for copy in (big.model.layers[2 * i], big.model.layers[2 * i + 1]):
            for (name, p), q in zip(layer.named_parameters(), copy.parameters(), strict=True):
                assert torch.equal(p, q), (i, name)
    assert torch.equal(big.lm_head.weight, small.lm_head.weight)
    assert torch.equal(big.model.embed_tokens.weight, small.model.embed_tokens.weight)
    out = pretrain_llm(tmp_path / "large", tok, LM_TEXTS * 4, steps=3, grow_from=llm["folder"],
                       **{k: v for k, v in SMALL_LM.items() if k not in ("hidden_size", "num_layers")})
    saved = LlamaForCausalLM.from_pretrained(tmp_path / "large")
    assert saved.config.num_hidden_layers == 4 and out["params"] > llm["params"]
    with pytest.raises(ValueError, match="keeps the width"):
        pretrain_llm(tmp_path / "wide", tok, LM_TEXTS * 4, steps=1, grow_from=llm["folder"], **SMALL_LM)


def test_grid_documents_answer_from_the_stand_in_and_copy_its_objects():
    import random
    import re

    from lmm.world.lm_text import grid_documents, patch_words
    from lmm.world.scenes import KINDS, sample_scene

    docs = grid_documents(random.Random(3), 300)
    again = grid_documents(random.Random(3), 300)
    assert docs == again
    answers = {"Yes.": 0, "No.": 0}
    for doc in docs:
        grid, caption, turns = doc.split("\n")
        words = grid.split(" ")
        assert len(words) == 64
        shown = {w for w in words if w in KINDS}
        named = set(re.findall(rf"\b({'|'.join(KINDS)})\b", caption))
        assert named == shown and (caption == "nothing") == (not shown)
        for kind, answer in re.findall(r"Is there an? (\w+) in the image\? (Yes\.|No\.)", turns):
            assert (answer == "Yes.") == (kind in shown)
            answers[answer] += 1
    assert answers["Yes."] > 300 and answers["No."] > 300  # both ways
    scene = sample_scene(random.Random(5))
    words = patch_words(scene)
    assert {w for w in words if w != "background"} <= {o.kind for o in scene.objects} | {o.colour for o in
                                                                                          scene.objects}


def test_reading_stops_once_the_check_reaches_its_target_and_the_checks_are_reported(tmp_path, tok):
    reading = [f"{c} Is there a square? Yes." for c in CAPTIONS]
    scores = iter([0.5, 0.7, 0.95, 0.99, 0.99])
    calls: list[bool] = []

    def check(model) -> float:
        calls.append(model.training)
        return next(scores)

    out = pretrain_llm(tmp_path / "until", tok, LM_TEXTS * 4, steps=2, reading=reading, reading_steps=20,
                       reading_check=check, reading_target=0.9, check_every=3, **SMALL_LM)
    assert out["reading_steps"] == 9 and out["steps"] == 11  # checked after 3, 6, 9 steps; 0.95 >= 0.9 stops
    assert out["reading_checks"] == [(3, 0.5), (6, 0.7), (9, 0.95)] and out["final_check"] == 0.99
    never = pretrain_llm(tmp_path / "never", tok, LM_TEXTS * 4, steps=1, reading=reading, reading_steps=5,
                         reading_check=lambda m: 0.1, reading_target=0.9, check_every=2, **SMALL_LM)
    assert never["reading_steps"] == 5 and [s for s, _ in never["reading_checks"]] == [2, 4]


def test_lookup_auc_scores_whether_the_answer_follows_the_context(tiny_world):
    """A stand-in model that says "Yes" exactly when the asked word occurs earlier scores 1; one that says the
    opposite 0; one that ignores its context 0.5. The grid probes are balanced and answered from the grid."""
    import random
    import re
    from types import SimpleNamespace

    from lmm.world.lm_text import grid_probes, lookup_auc
    from lmm.world.scenes import KINDS
    from tests.conftest import world_root

    tok = load_tokenizer(str(world_root(tiny_world) / "tokenizer"))  # the world's: each kind one token
    probes = grid_probes(random.Random(0), 40)
    assert sum(t for _, t in probes) == 20
    for text, there in probes:
        grid, caption, question = text.split("\n")
        assert (re.search(r"Is there an? (\w+) in", question).group(1) in grid.split(" ")) == there

    class Reader:
        def __init__(self, sign: float) -> None:
            self.sign = sign

        def eval(self) -> None:
            pass

        def __call__(self, input_ids: torch.Tensor) -> SimpleNamespace:
            ids = input_ids[0].tolist()
            asked = next(t for t in reversed(ids) if tok.convert_ids_to_tokens(t).strip("▁") in KINDS)
            logits = torch.zeros(1, len(ids), len(tok))
            yes, no = tok.convert_tokens_to_ids("▁Yes"), tok.convert_tokens_to_ids("▁No")
            before = ids[:len(ids) - 1 - ids[::-1].index(asked)]  # the context before the question's word
            logits[0, -1, yes if asked in before else no] = self.sign
            return SimpleNamespace(logits=logits)

    assert lookup_auc(Reader(1.0), tok, probes) == 1.0
    assert lookup_auc(Reader(-1.0), tok, probes) == 0.0
    assert lookup_auc(Reader(0.0), tok, probes) == 0.5
