"""Numerical parity between lmm's tiled LlavaModel and transformers' LlavaNextForConditionalGeneration (spec §6.2).

A tiny random LlavaNext is built in-process, saved with save_pretrained and loaded into lmm with `from_hf_llava`. On
images of three aspect ratios (wide, tall, square) lmm must compute the same logits (fp32, max abs diff <= 1e-5) and
the same greedy generations; the pixels come from lmm's TiledTransform and must equal LlavaNextImageProcessor's.
If lmm chose another grid, tiled in another order, unpadded differently, put the base image elsewhere or forgot
`image_newline`, the visual tokens (and so the logits) would differ.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
)

from lmm.constants import IMAGE_TOKEN_INDEX
from lmm.model.io import from_hf_llava
from lmm.model.llava import LlavaModel
from lmm.model.tiled import TiledConnector
from lmm.model.tiles import TiledTransform

VOCAB = 200
IMAGE_ID = VOCAB - 1
PAD, BOS, EOS = 0, 1, 2
TILE, PATCH = 56, 14  # 4 x 4 = 16 patch features per tile
PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]  # HF's default list, at a 56 px tile
# (height, width); "odd" fits its canvas at a fractional width (150 * 56 / 61 = 137.7: rounded up to 138, as HF does)
SIZES = {"wide": (60, 150), "tall": (130, 70), "square": (90, 90), "odd": (61, 150)}
PROMPTS = [[BOS, 5, 6, IMAGE_TOKEN_INDEX, 7, 8, 9], [BOS, 10, IMAGE_TOKEN_INDEX, 11], [BOS, IMAGE_TOKEN_INDEX, 12],
           [BOS, 13, 14, IMAGE_TOKEN_INDEX]]


def tiny_hf_llava_next(seed: int = 0) -> LlavaNextForConditionalGeneration:
    """A random fp32 LlavaNext (tiny CLIP + tiny Llama), eager attention on both towers."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              image_size=TILE, patch_size=PATCH, projection_dim=48)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.2,
                       tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE_ID,
                             image_grid_pinpoints=PINPOINTS, projector_hidden_act="gelu",
                             vision_feature_select_strategy="default", vision_feature_layer=-2)
    return LlavaNextForConditionalGeneration._from_config(config, attn_implementation="eager",
                                                          dtype=torch.float32).eval()


def hf_processor() -> LlavaNextImageProcessorPil:
    return LlavaNextImageProcessorPil(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE},
                                      image_grid_pinpoints=PINPOINTS)


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    """A random RGB image of (height, width)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[LlavaNextForConditionalGeneration, LlavaModel]:
    hf = tiny_hf_llava_next()
    folder = tmp_path_factory.mktemp("llava_next")
    hf.save_pretrained(folder)
    hf_processor().save_pretrained(folder)
    model, tokenizer = from_hf_llava(folder)
    assert tokenizer is None
    return hf, model.eval()


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [picture(size, seed) for seed, size in enumerate(SIZES.values())]


def tiles_of(model: LlavaModel, imgs: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """lmm's batch form: all tiles concatenated, and each image's (height, width)."""
    transform = model.image_transform()
    assert isinstance(transform, TiledTransform)
    return torch.cat([transform(i) for i in imgs]), torch.tensor([[i.height, i.width] for i in imgs])


def hf_ids(prompt: list[int], n: int) -> list[int]:
    return [x for t in prompt for x in ([IMAGE_ID] * n if t == IMAGE_TOKEN_INDEX else [t])]


def pad_rows(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(longest - len(r), longest)
        ids[i, span], mask[i, span] = torch.tensor(r), 1
    return ids, mask


def test_import_structure(pair: tuple[LlavaNextForConditionalGeneration, LlavaModel]) -> None:
    """The LlavaNext becomes a tiled lmm model holding HF's pinpoints (height, width) and its image_newline."""
    hf, model = pair
    assert model.tiled and isinstance(model.connector, TiledConnector)
    assert model.connector.spec.mode == "anyres" and model.connector.spec.tile == TILE
    assert [list(p) for p in model.connector.spec.grid_pinpoints] == PINPOINTS
    assert torch.equal(model.connector.image_newline, hf.model.image_newline)


def test_pixels_match_hf_processor(pair: tuple[LlavaNextForConditionalGeneration, LlavaModel],
                                   images: list[Image.Image]) -> None:
    """TiledTransform == LlavaNextImageProcessor (PIL): same tile count, order, padding and values."""
    _, model = pair
    transform = model.image_transform()
    theirs = hf_processor()(images, return_tensors="pt")
    for b, img in enumerate(images):
        ours = transform(img)
        assert theirs["image_sizes"][b].tolist() == [img.height, img.width]
        torch.testing.assert_close(ours, theirs["pixel_values"][b, : len(ours)], atol=1e-5, rtol=0)
        assert not theirs["pixel_values"][b, len(ours):].any()  # the rest is HF's batch padding


def test_visual_token_counts_match_hf(pair: tuple[LlavaNextForConditionalGeneration, LlavaModel],
                                      images: list[Image.Image]) -> None:
    """lmm's per-image count == the features HF packs, for every aspect ratio; the counts differ between them."""
    hf, model = pair
    pixels, sizes = tiles_of(model, images)
    with torch.no_grad():
        ours = model.encode_images(pixels, sizes)
        theirs = hf.model.get_image_features(hf_processor()(images, return_tensors="pt")["pixel_values"],
                                             sizes).pooler_output
    counts = [model.visual_tokens((i.height, i.width)) for i in images]
    assert [len(v) for v in ours] == [len(t) for t in theirs] == counts
    assert len(set(counts)) >= 3  # the aspect ratios really give different token counts
    for v, t in zip(ours, theirs, strict=True):
        torch.testing.assert_close(v, t, atol=1e-5, rtol=0)


def test_logits_match(pair: tuple[LlavaNextForConditionalGeneration, LlavaModel], images: list[Image.Image]) -> None:
    """A right-padded batch of four images (wide, tall, square, odd): the same logits at every real position."""
    hf, model = pair
    pixels, sizes = tiles_of(model, images)
    counts = [model.visual_tokens((i.height, i.width)) for i in images]
    ids, mask = pad_rows(PROMPTS, "right")
    hids, hmask = pad_rows([hf_ids(p, n) for p, n in zip(PROMPTS, counts, strict=True)], "right")
    hf_pixels = hf_processor()(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ours, spliced = model(ids, mask, pixels, image_sizes=sizes)
        theirs = hf(input_ids=hids, attention_mask=hmask, pixel_values=hf_pixels, image_sizes=sizes).logits
    assert torch.equal(spliced.attention_mask, hmask)
    for b in range(len(PROMPTS)):
        n = int(hmask[b].sum())
        assert (ours[b, :n] - theirs[b, :n]).abs().max() <= 1e-5


GREEDY = {"max_new_tokens": 8, "do_sample": False, "eos_token_id": EOS, "pad_token_id": PAD}


def test_greedy_generation_matches(pair: tuple[LlavaNextForConditionalGeneration, LlavaModel],
                                   images: list[Image.Image]) -> None:
    """lmm's left-padded batched generation == HF generating each sample alone."""
    hf, model = pair
    pixels, sizes = tiles_of(model, images)
    hf_pixels = hf_processor()(images, return_tensors="pt")["pixel_values"]
    expected = []
    for b, p in enumerate(PROMPTS):
        h = torch.tensor([hf_ids(p, model.visual_tokens(tuple(sizes[b].tolist())))])
        out = hf.generate(input_ids=h, attention_mask=torch.ones_like(h), pixel_values=hf_pixels[b:b + 1],
                          image_sizes=sizes[b:b + 1], **GREEDY)
        expected.append(out[0, h.shape[1]:].tolist())
    assert any(len(e) > 1 for e in expected)
    ids, mask = pad_rows(PROMPTS, "left")
    ours = model.generate(ids, mask, pixels, image_sizes=sizes, **GREEDY)
    for b, exp in enumerate(expected):
        assert ours[b, : len(exp)].tolist() == exp
        assert (ours[b, len(exp):] == PAD).all()
