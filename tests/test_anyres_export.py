"""lmm → Hugging Face export of an anyres model (spec §6.2, §7): LlavaNextForConditionalGeneration and
LlavaNextProcessor load the folder offline and reproduce lmm's logits and greedy generations on wide, tall and square
images; the processor expands `<image>` to exactly lmm's per-image visual token count. Also the lmm folder round trip
of a tiled model (the connector card rebuilds the tiling and keeps image_newline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaNextForConditionalGeneration, LlavaNextProcessor, PreTrainedTokenizerFast

from lmm.export import _main as export_cli
from lmm.export import export_hf_llava
from lmm.model.io import from_hf_llava, load_checkpoint, load_lmm_model, save_lmm_model
from lmm.model.llava import LlavaModel
from lmm.model.tiled import TiledConnector
from lmm.model.tiling import TilingSpec
from lmm.world.zoo import build_tokenizer
from tests.test_anyres_parity import SIZES, picture
from tests.test_export import PROMPT, TEXTS, _collapse, offline, tiny_lmm  # noqa: F401 (offline is a fixture)

PINPOINTS = ((56, 112), (112, 56), (112, 112), (168, 56), (56, 168))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    return build_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=150)


def tiny_anyres(tokenizer: PreTrainedTokenizerFast) -> LlavaModel:
    """tests.test_export's tiny model (56 px tiles) with an anyres connector around its MLP."""
    model = tiny_lmm(tokenizer, "mlp")
    inner = model.connector
    model.connector = TiledConnector(inner.in_dim, inner.out_dim, inner, TilingSpec("anyres", 56, PINPOINTS))
    model.max_length = 512
    return model.eval()


def test_export_anyres_roundtrip(tmp_path: Path, tokenizer: PreTrainedTokenizerFast, offline: None) -> None:  # noqa: F811
    model = tiny_anyres(tokenizer)
    out = export_hf_llava(model, tokenizer, tmp_path / "hf")
    hf, info = LlavaNextForConditionalGeneration.from_pretrained(out, attn_implementation="eager",
                                                                 output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf.eval()
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, LlavaNextProcessor)
    assert [list(p) for p in hf.config.image_grid_pinpoints] == [list(p) for p in PINPOINTS]
    assert torch.equal(hf.model.image_newline, model.connector.image_newline)
    image_id = hf.config.image_token_index
    transform = model.image_transform()
    vocab = len(tokenizer)
    for seed, size in enumerate(SIZES.values()):
        img = picture(size, seed)
        inputs = processor(text=[PROMPT], images=[img], return_tensors="pt")
        assert int((inputs["input_ids"] == image_id).sum()) == model.visual_tokens(size)
        pixels = transform(img)
        torch.testing.assert_close(inputs["pixel_values"][0], pixels, atol=1e-5, rtol=0)
        ids = _collapse(inputs["input_ids"][0], image_id)
        mask, sizes = torch.ones_like(ids), torch.tensor([list(size)])
        with torch.no_grad():
            ours, _ = model(ids, mask, pixels, image_sizes=sizes)
            theirs = hf(**inputs).logits
        assert ours.shape[1] == theirs.shape[1]
        assert (ours - theirs[..., :vocab]).abs().max() <= 1e-5
        greedy = {"max_new_tokens": 8, "do_sample": False}
        with torch.no_grad():
            expected = hf.generate(**inputs, **greedy)[0, inputs["input_ids"].shape[1]:]
        got = model.generate(ids, mask, pixels, image_sizes=sizes, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **greedy)[0]
        assert len(expected) > 1 and got[: len(expected)].tolist() == expected.tolist()

    back, _ = from_hf_llava(out)  # and back into lmm: the same tiled model
    assert back.tiled and back.connector.spec == model.connector.spec
    assert torch.equal(back.connector.image_newline, model.connector.image_newline)


def test_export_refuses_hd(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    model = tiny_anyres(tokenizer)
    model.connector.spec = TilingSpec("hd", 56)
    with pytest.raises(NotImplementedError, match="anyres"):
        export_hf_llava(model, tokenizer, tmp_path / "hf")


def test_lmm_folder_roundtrip(tmp_path: Path, tokenizer: PreTrainedTokenizerFast, offline: None) -> None:  # noqa: F811
    """save_lmm_model / load_lmm_model keep the tiling and image_newline (the connector card rebuilds them); the
    export CLI turns the folder into a LlavaNext folder, which `checkpoint=` (load_checkpoint) reads back tiled."""
    model = tiny_anyres(tokenizer)
    save_lmm_model(model.state_dict(), model, tmp_path, tokenizer=tokenizer,
                   image_transform=model.encoder.image_transform())
    loaded, _ = load_lmm_model(tmp_path / "model")
    assert loaded.tiled and loaded.connector.spec == model.connector.spec
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    export_cli([str(tmp_path / "model"), str(tmp_path / "hf")])
    assert isinstance(AutoProcessor.from_pretrained(tmp_path / "hf"), LlavaNextProcessor)
    back = load_checkpoint(tmp_path / "hf")
    assert back.source == "hf_llava" and back.model.tiled and back.tokenizer is not None
    assert back.model.connector.spec == model.connector.spec
    assert torch.equal(back.model.connector.image_newline, model.connector.image_newline)
