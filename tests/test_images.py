"""Image preprocessing matches LLaVA (mean-colour pad) and HF's CLIP processor (resize + centre crop); the encoder
decides it by one rule; image files load or fail naming the file."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from lmm.data.images import ImageError, load_image
from lmm.model.encoder import VisionEncoder
from lmm.model.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    SIGLIP_MEAN,
    SIGLIP_STD,
    ImageTransform,
    encoder_transform,
    expand_to_square,
)


def _random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _hf_clip(size: int):
    clip = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    return clip.CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def test_pad_colour_is_clip_mean():
    t = ImageTransform(32, aspect="pad")
    assert t.pad_color == (122, 116, 104)
    square = expand_to_square(Image.new("RGB", (10, 30), (255, 0, 0)), t.pad_color)
    assert square.size == (30, 30)
    assert square.getpixel((0, 0)) == (122, 116, 104) and square.getpixel((29, 29)) == (122, 116, 104)
    assert square.getpixel((10, 0)) == (255, 0, 0) and square.getpixel((19, 29)) == (255, 0, 0)  # centred, x 10..19


def test_pad_output_corner_is_normalised_mean_colour():
    x = ImageTransform(16, aspect="pad")(Image.new("RGB", (8, 32), (255, 255, 255)))
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = (torch.tensor([122, 116, 104]) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(x[:, 0, 0], expected.float(), atol=1e-6)


@pytest.mark.parametrize("w,h", [(301, 217), (150, 333)])
def test_crop_matches_hf_clip_processor(w, h):
    img = _random_image(w, h)
    ours = ImageTransform(112, aspect="crop")(img)
    ref = torch.from_numpy(np.asarray(_hf_clip(112)(img, return_tensors="np")["pixel_values"][0]))
    assert ours.shape == ref.shape == (3, 112, 112)
    assert (ours - ref).abs().max().item() < 1e-5  # measured: 0 (same PIL resize, same float32 arithmetic)


def test_pad_matches_hf_clip_processor_on_llava_padded_image():
    img = _random_image(203, 97, seed=1)
    ours = ImageTransform(64, aspect="pad")(img)
    ref = _hf_clip(64)(expand_to_square(img, (122, 116, 104)), return_tensors="np")["pixel_values"][0]
    assert (ours - torch.from_numpy(np.asarray(ref))).abs().max().item() < 1e-5


def test_converts_to_rgb():
    assert ImageTransform(8, aspect="crop")(Image.new("L", (9, 12), 200)).shape == (3, 8, 8)
    assert ImageTransform(8, aspect="pad")(Image.new("RGBA", (9, 12))).shape == (3, 8, 8)


def test_from_pretrained_reads_processor_config(tmp_path):
    cfg = {"crop_size": {"height": 336, "width": 336}, "size": {"shortest_edge": 336}, "do_center_crop": True,
           "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "resample": 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    t = ImageTransform.from_pretrained(tmp_path, aspect="crop")
    assert (t.image_size, t.resize_size, t.aspect) == (336, 336, "crop")
    assert t.mean == CLIP_MEAN and t.std == CLIP_STD and t.resample == Image.Resampling.BICUBIC
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"crop_size": 224, "size": {"shortest_edge": 256}}))
    t = ImageTransform.from_pretrained(tmp_path)
    assert (t.image_size, t.resize_size, t.aspect) == (224, 256, "pad")


def test_bad_aspect_rejected():
    with pytest.raises(ValueError, match="aspect"):
        ImageTransform(8, aspect="anyres")


def _tower(kind: str, image_size: int = 28):
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "image_size": image_size, "patch_size": 14}
    if kind == "clip":
        return CLIPVisionModel(CLIPVisionConfig(**small))
    return SiglipVisionModel(SiglipVisionConfig(**small))


def test_the_encoder_decides_its_preprocessing(tmp_path):
    """One rule for training, saving, evaluation and export (VisionEncoder.image_transform): the processor config
    where the tower came from, a given aspect winning; without one, its family's statistics at its resolution (with
    a warning when a config was expected); a config for another resolution is refused."""
    folder = tmp_path / "clip"
    _tower("clip").save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 32}, "crop_size": {"height": 28, "width": 28}, "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6], "resample": 2, "image_aspect_ratio": "crop"}))
    encoder = VisionEncoder.from_pretrained(str(folder))
    t = encoder.image_transform()
    assert (t.image_size, t.resize_size, t.mean, t.std, int(t.resample), t.aspect) == \
        (28, 32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 2, "crop")
    assert encoder.image_transform("pad").aspect == "pad" and encoder.image_transform("pad").mean == t.mean

    bare = tmp_path / "siglip"
    _tower("siglip").save_pretrained(bare)
    with pytest.warns(UserWarning, match="no image processor config for the encoder .*siglip.*siglip defaults at 28px"):
        t = VisionEncoder.from_pretrained(str(bare)).image_transform()
    assert (t.image_size, t.mean, t.std, t.aspect) == (28, SIGLIP_MEAN, SIGLIP_STD, "pad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an in-memory tower names no source: its family's defaults, quietly
        t = VisionEncoder(_tower("clip", 56)).image_transform("crop")
    assert (t.image_size, t.mean, t.std, t.aspect) == (56, CLIP_MEAN, CLIP_STD, "crop")

    with pytest.raises(ValueError, match="crops images to 28px, but the encoder it belongs to takes 56px"):
        VisionEncoder(_tower("clip", 56)).image_transform(source=folder)
    assert encoder_transform({"model_type": "llava", "vision_config": {"model_type": "siglip_vision_model",
                                                                       "image_size": 42}}).mean == SIGLIP_MEAN


def test_load_image_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg"):
        load_image(missing)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="corrupt.jpg"):
        load_image(corrupt)
    good = tmp_path / "good.png"
    Image.new("L", (4, 3), 7).save(good)
    assert load_image(good).mode == "RGB"
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ImageError, match="truncated.png"):
        load_image(truncated)
