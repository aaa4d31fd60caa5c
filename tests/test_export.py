"""lmm → Hugging Face export (spec §7): the exported folder must load offline and reproduce lmm's outputs.

Also covers lmm's own save/load round trip and the `python -m lmm.export` entry point, since the CLI exports what
`save_lmm_model` wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from jinja2 import TemplateError
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoProcessor,
    AutoTokenizer,
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
from lmm.data.records import Turn
from lmm.data.templates import VicunaV1Template, tokenize_prompt
from lmm.export import _main as export_cli
from lmm.export import export_hf_llava
from lmm.model.connector import LinearConnector, MLPConnector, QFormerLite
from lmm.model.encoder import VisionEncoder
from lmm.model.io import from_hf_llava, load_lmm_model, save_lmm_model
from lmm.model.llava import LlavaModel
from lmm.model.llm import load_tokenizer
from lmm.model.preprocess import ImageTransform
from lmm.world.zoo import build_tokenizer
from tests.conftest import tiny_llava

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


def _check_legacy_keys(model: LlavaModel, out: Path) -> None:
    """The weights carry the transformers-4 names (spec §7.2, §7.3): `vision_tower.vision_model.*`, not 5's flat
    `vision_tower.embeddings.*` (which 4.x skips, leaving a random tower) nor 5's `model.*` layout. The config also
    spells rope_theta the way 4.x reads it (4.x ignores rope_parameters)."""
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    head = set() if model.llm.config.tie_word_embeddings else {"language_model.lm_head.weight"}
    expected = ({f"vision_tower.vision_model.{k}" for k in model.encoder.tower.state_dict()}
                | {f"multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
                | {f"language_model.model.{k}" for k in model.llm.model.state_dict()} | head)
    assert keys == expected
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert not any(k.startswith(("model.", "lm_head.", "vision_tower.embeddings.")) for k in keys)
    text_config = json.loads((out / "config.json").read_text())["text_config"]
    assert text_config["rope_theta"] == model.llm.config.rope_parameters["rope_theta"]


def _check_roundtrip(model: LlavaModel, out: Path, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    """Reload `out` like a user would and compare logits and greedy generations with the lmm model."""
    _check_legacy_keys(model, out)
    hf, info = LlavaForConditionalGeneration.from_pretrained(out, attn_implementation="eager",
                                                             output_loading_info=True)
    hf.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
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


QUESTION, ANSWER, QUESTION2, ANSWER2 = ("what colour is the ball?", "the ball is red.", "how many objects are there?",
                                        "two objects.")
# HF's message format; the image sits after the text, as in half of LLaVA's data (the template moves it in front).
CONVERSATION = [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image"}]},
                {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
                {"role": "user", "content": [{"type": "text", "text": QUESTION2}]},
                {"role": "assistant", "content": [{"type": "text", "text": ANSWER2}]}]
# The same conversation as an lmm training record.
TURNS = [{"from": "human", "value": f"{QUESTION}\n<image>"}, {"from": "gpt", "value": ANSWER},
         {"from": "human", "value": QUESTION2}, {"from": "gpt", "value": ANSWER2}]
# Spelled out (spec §3.2), so the check does not rest on lmm's template code alone.
VICUNA_V1_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the user's questions. USER: <image>\nwhat colour is "
                    "the ball? ASSISTANT:")


def test_export_chat_template_is_vicuna_v1(tmp_path: Path, tokenizer: PreTrainedTokenizerFast,
                                           offline: None) -> None:
    """processor.apply_chat_template renders exactly the vicuna_v1 text lmm trains and prompts with."""
    out = export_hf_llava(tiny_lmm(tokenizer), tokenizer, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(out)
    template = VicunaV1Template()
    single = processor.apply_chat_template(CONVERSATION[:1], add_generation_prompt=True)
    assert single == VICUNA_V1_PROMPT
    assert tokenize_prompt(single, tokenizer) == template.prompt_ids(QUESTION, tokenizer)
    # Multi-turn: the prompt after an assistant answer, continued by the answer as lmm formats it, is exactly the
    # sequence lmm trains on; without the generation prompt the whole conversation renders the same.
    second = processor.apply_chat_template(CONVERSATION[:3], add_generation_prompt=True)
    assert second.startswith(VICUNA_V1_PROMPT + f" {ANSWER}</s>USER: {QUESTION2} ASSISTANT:")
    trained = template.encode(TURNS, tokenizer).input_ids
    assert tokenize_prompt(second + f" {ANSWER2}</s>", tokenizer) == trained
    assert processor.apply_chat_template(CONVERSATION) == second + f" {ANSWER2}</s>"
    # Plain-string content with an inline <image>, a system message, and the tokenizer's own copy of the template.
    assert processor.apply_chat_template([{"role": "user", "content": f" <image> {QUESTION} "}],
                                         add_generation_prompt=True) == VICUNA_V1_PROMPT
    system = processor.apply_chat_template([{"role": "system", "content": "Be brief."}, CONVERSATION[0]],
                                           add_generation_prompt=True)
    assert system == "Be brief. USER: " + VICUNA_V1_PROMPT.split(" USER: ", 1)[1]
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer.apply_chat_template(CONVERSATION[:1], add_generation_prompt=True, tokenize=False) == single
    # Where transformers 4.4x looks for it: chat_template.json (processor), tokenizer_config.json (tokenizer).
    for name in ("chat_template.json", "tokenizer_config.json"):
        assert json.loads((out / name).read_text())["chat_template"] == processor.chat_template, name
    with pytest.raises(TemplateError, match="alternate"):
        processor.apply_chat_template([CONVERSATION[0], CONVERSATION[2]])


def test_export_chat_template_ids_and_logits_real_tokenizer(tmp_path: Path, llama_tokenizer_dir: Path,
                                                             offline: None) -> None:
    """With the real Llama tokenizer as lmm trains with it (legacy=True), the processor's ids for the templated
    conversation are lmm's ids (one <image> per visual token), single-turn prompt and multi-turn training sequence
    alike, so the export answers the chat-templated prompt exactly as lmm answers its own."""
    tok = load_tokenizer(str(llama_tokenizer_dir))
    model = tiny_lmm(tok)
    out = export_hf_llava(model, tok, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(out)
    hf = LlavaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    image_id = hf.config.image_token_index

    def hf_ids(conversation: list[dict], **kwargs: bool) -> tuple[list[int], dict]:
        inputs = processor(text=[processor.apply_chat_template(conversation, **kwargs)], images=[_image(3)],
                           return_tensors="pt")
        return _collapse(inputs["input_ids"][0], image_id)[0].tolist(), inputs

    template = VicunaV1Template()
    assert hf_ids(CONVERSATION)[0] == template.encode(TURNS, tok).input_ids
    got, inputs = hf_ids(CONVERSATION[:1], add_generation_prompt=True)
    ids = torch.tensor([template.prompt_ids(QUESTION, tok)])
    assert got == ids[0].tolist()
    with torch.no_grad():
        ours, _ = model(ids, torch.ones_like(ids), inputs["pixel_values"])
        theirs = hf(**inputs).logits[..., :len(tok)]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # transformers 4.5x refuses a list under extra_special_tokens (its dict of named tokens); 5 reads the old name.
    assert not isinstance(json.loads((out / "tokenizer_config.json").read_text()).get("extra_special_tokens"), list)
    assert set(processor.tokenizer.all_special_tokens) == set(tok.all_special_tokens)


def test_saved_llama_tokenizer_keeps_legacy(tmp_path: Path, llama_tokenizer_dir: Path, offline: None) -> None:
    """Transformers 5 leaves Llama's `legacy` out of tokenizer_config.json: a tokenizer saved legacy and read back
    would come back non-legacy, and "Red</s>USER: Yes" (every turn after the first, LLaVA's chunks around <image>)
    would tokenize differently. An lmm model folder keeps the flag and the ids; an HF export writes it too."""
    text = "<image>\nRed</s>USER: Yes"
    turns = [Turn("human", "<image>\nWhat color is the bus?"), Turn("gpt", "Red"), Turn("human", "Is it big?"),
             Turn("gpt", "Yes")]
    model = tiny_llava()
    for legacy in (True, False):
        tok = load_tokenizer(str(llama_tokenizer_dir), legacy=legacy)
        expected = tokenize_prompt(text, tok)
        assert expected[5:] == ([2, 3148, 1001, 29901, 3869] if legacy else [2, 11889, 29901, 3869])  # </s>USER: Yes
        save_lmm_model(model.state_dict(), model, tmp_path / f"lmm-{legacy}", tokenizer=tok,
                       image_transform=ImageTransform(model.encoder.image_size))
        _, back = load_lmm_model(tmp_path / f"lmm-{legacy}")
        assert back.legacy is legacy and tokenize_prompt(text, back) == expected
        assert VicunaV1Template().encode(turns, back).input_ids == VicunaV1Template().encode(turns, tok).input_ids
        out = export_hf_llava(model, tok, tmp_path / f"hf-{legacy}")
        assert json.loads((out / "tokenizer_config.json").read_text())["legacy"] is legacy  # for any reader
        assert tokenize_prompt(text, from_hf_llava(out)[1]) == expected


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
