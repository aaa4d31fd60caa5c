"""lmm → Hugging Face export (spec §7): the exported folder must load offline and reproduce lmm's outputs.

Also covers lmm's own save/load round trip and the `python -m lmm.export` entry point, since the CLI exports what
`save_lmm_model` wrote.
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from lmm.constants import IMAGE_TOKEN_INDEX
from lmm.data.images import ImageTransform
from lmm.export import _main as export_cli
from lmm.export import export_hf_llava, from_hf_llava
from lmm.model.connector import LinearConnector, MLPConnector, QFormerLite
from lmm.model.encoder import VisionEncoder
from lmm.model.io import load_lmm_model, save_lmm_model
from lmm.model.llava import LlavaModel
from lmm.world.tiny import build_tokenizer

TEXTS = ["a red ball is on the left of a blue cube.", "what colour is the ball?", "the cube is blue.",
         "USER: how many objects are there? ASSISTANT: two objects.", "a green cone stands behind the cube."]
NUM_VISUAL = (56 // 14) ** 2
PROMPT = "<image>\nwhat colour is the ball?"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    """A small Llama-like BPE tokenizer (<unk>=0 <s>=1 </s>=2, pad = <unk>)."""
    return build_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=150)


def tiny_lmm(tokenizer: PreTrainedTokenizerFast, connector: str = "mlp", seed: int = 0) -> LlavaModel:
    """A random lmm LLaVA (CLIP 2 layers/48 wide/56 px; Llama 2 layers/64 wide), fp32, eager attention."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              image_size=56, patch_size=14, projection_dim=48)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, initializer_range=0.2, tie_word_embeddings=False)
    tower = CLIPVisionModel._from_config(vision, attn_implementation="eager")
    llm = LlamaForCausalLM._from_config(text, attn_implementation="eager")
    factory = {"mlp": MLPConnector, "linear": LinearConnector, "qformer": QFormerLite}[connector]
    model = LlavaModel(VisionEncoder(tower), factory, llm)
    with torch.no_grad():  # connector biases are zero-initialised by HF-style init elsewhere; make them matter here
        for p in model.connector.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1, also for the already-imported hub client (it reads the variable at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _image(seed: int = 0, size: tuple[int, int] = (70, 50)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _collapse(ids: torch.Tensor, image_id: int) -> torch.Tensor:
    """HF input_ids (one row) → lmm's: the run of image tokens becomes one IMAGE_TOKEN_INDEX."""
    out, prev = [], None
    for t in ids.tolist():
        if t == image_id:
            if prev != image_id:
                out.append(IMAGE_TOKEN_INDEX)
        else:
            out.append(t)
        prev = t
    return torch.tensor([out])


def _check_roundtrip(model: LlavaModel, out: Path, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    """Reload `out` like a user would and compare logits and greedy generations with the lmm model."""
    hf = LlavaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, LlavaProcessor)
    image_id = hf.config.image_token_index
    assert processor.tokenizer.convert_ids_to_tokens(image_id) == "<image>"
    assert hf.config.image_seq_length == model.num_visual_tokens

    inputs = processor(text=[PROMPT], images=[_image()], return_tensors="pt")
    assert int((inputs["input_ids"] == image_id).sum()) == hf.config.image_seq_length
    # The processor pads to a mean-coloured square like lmm's own image pipeline does.
    lmm_pixels = ImageTransform(56, aspect="pad")(_image())
    torch.testing.assert_close(inputs["pixel_values"][0], lmm_pixels, atol=1e-6, rtol=0)

    ids = _collapse(inputs["input_ids"][0], image_id)
    mask = torch.ones_like(ids)
    vocab = len(tokenizer)
    with torch.no_grad():
        ours, _ = model(ids, mask, inputs["pixel_values"])
        theirs = hf(**inputs).logits
    assert ours.shape[1] == theirs.shape[1]
    torch.testing.assert_close(ours, theirs[..., :vocab], atol=1e-5, rtol=0)

    greedy = {"max_new_tokens": 8, "do_sample": False}
    with torch.no_grad():
        expected = hf.generate(**inputs, **greedy)[0, inputs["input_ids"].shape[1]:]
    got = model.generate(ids, mask, inputs["pixel_values"], eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **greedy)[0]
    assert len(expected) > 1 and got.tolist() == expected.tolist()
    return hf


def test_export_mlp_roundtrip(tmp_path: Path, tokenizer: PreTrainedTokenizerFast, offline: None) -> None:
    """mlp2x_gelu: HF reproduces lmm; importing the export back gives the same model plus the image-token row."""
    model = tiny_lmm(tokenizer, "mlp")
    out = export_hf_llava(model, tokenizer, tmp_path / "hf")
    hf = _check_roundtrip(model, out, tokenizer)
    assert hf.config.projector_hidden_act == "gelu"
    assert hf.config.vision_feature_select_strategy == "default" and hf.config.vision_feature_layer == -2
    assert "<image>" not in tokenizer.get_vocab()  # the caller's tokenizer is left alone
    assert model.llm.get_input_embeddings().weight.shape[0] == len(tokenizer)  # and so is the model

    back, back_tok = from_hf_llava(out)
    assert isinstance(back.connector, MLPConnector) and back_tok is not None
    assert back.llm.get_input_embeddings().weight.shape[0] == len(tokenizer) + 1
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7]])
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(ids, torch.ones_like(ids), pixels)[0][..., :len(tokenizer)],
                                   model(ids, torch.ones_like(ids), pixels)[0], atol=1e-5, rtol=0)


def test_export_linear_connector(tmp_path: Path, tokenizer: PreTrainedTokenizerFast, offline: None) -> None:
    """A single Linear exports as act "linear" + identity linear_2 (spec §7.3) and imports back as LinearConnector."""
    model = tiny_lmm(tokenizer, "linear", seed=1)
    out = export_hf_llava(model, tokenizer, tmp_path / "hf", pad_vocab_to_multiple_of=64)
    hf = _check_roundtrip(model, out, tokenizer)
    assert hf.config.projector_hidden_act == "linear"
    assert hf.config.text_config.vocab_size % 64 == 0
    back, _ = from_hf_llava(out)
    assert isinstance(back.connector, LinearConnector)
    assert torch.equal(back.connector.proj.weight, model.connector.proj.weight)


def test_export_qformer_raises(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    """QFormerLite has no HF Llava counterpart: refuse clearly instead of writing a wrong model."""
    model = tiny_lmm(tokenizer, "qformer")
    with pytest.raises(NotImplementedError, match="QFormerLite"):
        export_hf_llava(model, tokenizer, tmp_path / "hf")


def test_save_load_lmm_and_cli(tmp_path: Path, tokenizer: PreTrainedTokenizerFast, offline: None) -> None:
    """save_lmm_model/load_lmm_model round-trip exactly enough, and the CLI exports what they wrote."""
    model = tiny_lmm(tokenizer, "mlp", seed=2)
    encoder_src = tmp_path / "encoder_src"
    CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(
        encoder_src)
    cfg = OmegaConf.create({"model": {
        "connector": {"_target_": "lmm.model.connector.MLPConnector", "_partial_": True, "depth": 2},
        "encoder": {"pretrained": str(encoder_src)}}})
    save_lmm_model(model.state_dict(), model, tmp_path / "run", tokenizer=tokenizer, config=cfg)
    loaded, loaded_tok = load_lmm_model(tmp_path / "run")
    loaded.eval()
    assert loaded_tok.get_vocab() == tokenizer.get_vocab()
    ids = torch.tensor([[1, 5, 6, IMAGE_TOKEN_INDEX, 7], [1, IMAGE_TOKEN_INDEX, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ours, s = model(ids, mask, pixels)
        theirs, _ = loaded(ids, mask, pixels)
    keep = s.attention_mask.bool()
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=0)

    export_cli([str(tmp_path / "run"), str(tmp_path / "hf")])
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    assert processor.image_processor.do_pad
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    inputs = processor(text=[PROMPT], images=[_image(1)], return_tensors="pt")
    with torch.no_grad():
        ours, _ = model(_collapse(inputs["input_ids"][0], hf.config.image_token_index),
                        torch.ones(1, inputs["input_ids"].shape[1] - NUM_VISUAL + 1, dtype=torch.long),
                        inputs["pixel_values"])
        theirs = hf(**inputs).logits[..., :len(tokenizer)]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_export_cli_takes_the_saved_preprocessing(tmp_path: Path, tokenizer: PreTrainedTokenizerFast,
                                                  offline: None) -> None:
    """The model folder's recorded preprocessing (here: crop, custom statistics) is what the export carries."""
    model = tiny_lmm(tokenizer, "mlp", seed=3)
    encoder_src = tmp_path / "encoder_src"
    CLIPImageProcessorPil(size={"shortest_edge": 60}, crop_size={"height": 56, "width": 56},
                          image_mean=[0.1, 0.2, 0.3], image_std=[0.3, 0.2, 0.1]).save_pretrained(encoder_src)
    cfg = OmegaConf.create({"model": {"encoder": {"pretrained": str(encoder_src)}},
                            "stage": {"instruct": {"image_aspect": "crop"}}})
    save_lmm_model(model.state_dict(), model, tmp_path / "run", tokenizer=tokenizer, config=cfg)
    export_cli([str(tmp_path / "run" / "model"), str(tmp_path / "hf")])
    proc = AutoProcessor.from_pretrained(tmp_path / "hf").image_processor
    assert not proc.do_pad  # trained with crop: no square padding
    assert list(proc.image_mean) == pytest.approx([0.1, 0.2, 0.3]) and proc.size["shortest_edge"] == 60
    ours = ImageTransform.from_pretrained(tmp_path / "run" / "model" / "encoder", aspect="crop")
    theirs = proc(images=[_image(2)], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours(_image(2)), theirs, atol=1e-5, rtol=0)
