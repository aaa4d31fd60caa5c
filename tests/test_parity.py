"""Numerical parity between lmm's LlavaModel and Hugging Face's LlavaForConditionalGeneration (spec §7.4).

A tiny random HF Llava is built in-process and loaded into lmm with `from_hf_llava`; if lmm computed anything
differently from HF (splicing, positions, feature selection, projector, generation with padding), these fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from lmm.constants import IMAGE_TOKEN_INDEX
from lmm.model.connector import LinearConnector, MLPConnector
from lmm.model.io import from_hf_llava, split_llava_state
from lmm.model.llava import LlavaModel

VOCAB = 200
IMAGE_ID = VOCAB - 1  # the HF image token is the last row of the vocabulary
PAD, BOS, EOS = 0, 1, 2
NUM_VISUAL = (56 // 14) ** 2  # 16 patches, CLS dropped
PROMPTS = [[BOS, 5, 6, IMAGE_TOKEN_INDEX, 7, 8, 9], [BOS, 10, IMAGE_TOKEN_INDEX, 11]]


def tiny_hf_llava(seed: int = 0, projector_act: str = "gelu",
                  strategy: str = "default") -> LlavaForConditionalGeneration:
    """A random fp32 Llava small enough to build and run in milliseconds (eager attention on both towers)."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              image_size=56, patch_size=14, projection_dim=48)
    # A larger init than HF's 0.02 makes the logits peaked, so greedy decoding is not decided by rounding noise.
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.2,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE_ID,
                         image_seq_length=NUM_VISUAL + int(strategy == "full"), projector_hidden_act=projector_act,
                         vision_feature_select_strategy=strategy, vision_feature_layer=-2)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def hf_ids(prompt: list[int], num_visual: int = NUM_VISUAL) -> list[int]:
    """The HF form of an lmm prompt: the single placeholder becomes `num_visual` image tokens."""
    out: list[int] = []
    for t in prompt:
        out.extend([IMAGE_ID] * num_visual if t == IMAGE_TOKEN_INDEX else [t])
    return out


def pad_batch(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to a batch with PAD on `side`; returns (input_ids, attention_mask)."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(longest - len(r), longest)
        ids[i, span] = torch.tensor(r)
        mask[i, span] = 1
    return ids, mask


@pytest.fixture(scope="module")
def pair() -> tuple[LlavaForConditionalGeneration, LlavaModel]:
    hf = tiny_hf_llava()
    model, tokenizer = from_hf_llava(hf)
    assert tokenizer is None  # an instance carries no tokenizer
    return hf, model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))


def test_structure(pair: tuple[LlavaForConditionalGeneration, LlavaModel]) -> None:
    """The import maps every HF knob to its lmm counterpart and keeps the full vocabulary."""
    hf, model = pair
    assert isinstance(model.connector, MLPConnector)
    assert model.encoder.select_layer == -2 and model.encoder.select_feature == "patch"
    assert model.num_visual_tokens == NUM_VISUAL
    assert model.llm.get_input_embeddings().weight.shape[0] == VOCAB
    assert torch.equal(model.llm.get_input_embeddings().weight, hf.get_input_embeddings().weight)
    assert model.llm.get_input_embeddings().weight.data_ptr() != hf.get_input_embeddings().weight.data_ptr()


def test_logits_match_right_padded(pair: tuple[LlavaForConditionalGeneration, LlavaModel],
                                   images: torch.Tensor) -> None:
    """(a) one -200 in lmm == N image tokens in HF: same logits at every non-pad position of a padded batch."""
    hf, model = pair
    ids, mask = pad_batch(PROMPTS, "right")
    hids, hmask = pad_batch([hf_ids(p) for p in PROMPTS], "right")
    with torch.no_grad():
        ours, spliced = model(ids, mask, images)
        theirs = hf(input_ids=hids, attention_mask=hmask, pixel_values=images).logits
    assert ours.shape == theirs.shape
    assert torch.equal(spliced.attention_mask, hmask)
    for b in range(len(PROMPTS)):
        n = int(hmask[b].sum())
        torch.testing.assert_close(ours[b, :n], theirs[b, :n], atol=1e-5, rtol=0)


def test_vision_path_exact(pair: tuple[LlavaForConditionalGeneration, LlavaModel], images: torch.Tensor) -> None:
    """(b) spec §7.4.5: lmm's encoder output is HF's hidden_states[-2] without CLS, bit for bit."""
    hf, model = pair
    with torch.no_grad():
        ours = model.encoder(images)
        theirs = hf.model.vision_tower(images, output_hidden_states=True).hidden_states[-2][:, 1:]
        assert torch.equal(ours, theirs)
        assert torch.equal(model.encode_images(images), torch.stack(hf.get_image_features(images).pooler_output))


def _generate_hf_each(hf: LlavaForConditionalGeneration, images: torch.Tensor, **kw) -> list[list[int]]:
    outs = []
    for b, p in enumerate(PROMPTS):
        ids = torch.tensor([hf_ids(p)])
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=images[b:b + 1], **kw)
        outs.append(out[0, ids.shape[1]:].tolist())
    return outs


def _strip(row: torch.Tensor, n: int) -> list[int]:
    """The first n new tokens of an lmm row; what follows must be padding (after an EOS)."""
    assert (row[n:] == PAD).all()
    return row[:n].tolist()


GREEDY = {"max_new_tokens": 8, "do_sample": False, "eos_token_id": EOS, "pad_token_id": PAD}


def test_greedy_generation_matches_hf(pair: tuple[LlavaForConditionalGeneration, LlavaModel],
                                      images: torch.Tensor) -> None:
    """(c) lmm's left-padded batched generation == HF generating each sample alone."""
    hf, model = pair
    expected = _generate_hf_each(hf, images, **GREEDY)
    ids, mask = pad_batch(PROMPTS, "left")
    ours = model.generate(ids, mask, images, **GREEDY)
    assert ours.shape[0] == 2 and ours.shape[1] <= 8
    assert any(len(e) > 1 for e in expected)  # the comparison is not vacuous
    for b, exp in enumerate(expected):
        assert _strip(ours[b], len(exp)) == exp


def test_batched_generation_equals_single(pair: tuple[LlavaForConditionalGeneration, LlavaModel],
                                          images: torch.Tensor) -> None:
    """(d) padding inside a batch must not change what lmm generates (positions/masks after left padding)."""
    _, model = pair
    ids, mask = pad_batch(PROMPTS, "right")  # splice re-pads on the left itself
    batched = model.generate(ids, mask, images, **GREEDY)
    for b, p in enumerate(PROMPTS):
        single = model.generate(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), images[b:b + 1], **GREEDY)
        assert _strip(batched[b], single.shape[1]) == single[0].tolist()


def test_sampling_is_seeded(pair: tuple[LlavaForConditionalGeneration, LlavaModel], images: torch.Tensor) -> None:
    """(e) sampling runs, and a seed makes it reproducible."""
    _, model = pair
    ids, mask = pad_batch(PROMPTS, "left")
    kw = {"max_new_tokens": 8, "do_sample": True, "temperature": 1.0, "top_k": 0, "eos_token_id": EOS,
          "pad_token_id": PAD}
    torch.manual_seed(123)
    first = model.generate(ids, mask, images, **kw)
    torch.manual_seed(123)
    second = model.generate(ids, mask, images, **kw)
    assert first.shape[0] == 2 and 1 <= first.shape[1] <= 8
    assert torch.equal(first, second)
    assert ((first >= 0) & (first < VOCAB)).all()


def test_linear_projector_and_full_strategy() -> None:
    """Act "linear" with an identity linear_2 imports as a LinearConnector; strategy "full" keeps CLS."""
    hf = tiny_hf_llava(seed=3, projector_act="linear", strategy="full")
    with torch.no_grad():
        hf.model.multi_modal_projector.linear_2.weight.copy_(torch.eye(64))
        hf.model.multi_modal_projector.linear_2.bias.zero_()
    model, _ = from_hf_llava(hf)
    assert isinstance(model.connector, LinearConnector)
    assert model.encoder.select_feature == "cls_patch" and model.num_visual_tokens == NUM_VISUAL + 1
    prompt = PROMPTS[1]
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, _ = model.eval()(torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), pixels)
        hids = torch.tensor([hf_ids(prompt, NUM_VISUAL + 1)])
        theirs = hf(input_ids=hids, attention_mask=torch.ones_like(hids), pixel_values=pixels).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_legacy_layout_and_folder(tmp_path: Path, pair: tuple[LlavaForConditionalGeneration, LlavaModel]) -> None:
    """A saved folder loads, and the legacy key layout splits the same as the new one."""
    hf, model = pair
    hf.save_pretrained(tmp_path)
    loaded, tokenizer = from_hf_llava(tmp_path)
    assert tokenizer is None
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    new = hf.state_dict()
    renames = (("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."),
               ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))
    legacy = {}
    for k, v in new.items():
        for a, b in renames:
            if k.startswith(a):
                legacy[b + k[len(a):]] = v
    for part_new, part_legacy in zip(split_llava_state(new), split_llava_state(legacy), strict=True):
        assert part_new.keys() == part_legacy.keys() and part_new
    old_dir = tmp_path / "legacy"
    old_dir.mkdir()
    save_file({k: v.contiguous() for k, v in legacy.items()}, str(old_dir / "model.safetensors"))
    shutil.copy(tmp_path / "config.json", old_dir / "config.json")
    from_legacy, _ = from_hf_llava(old_dir)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), from_legacy.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
