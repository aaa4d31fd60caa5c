"""The composed model: its one assembly path, connector contracts, splicing, the text-only graph rule, truncation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lmm.config import register_resolvers
from lmm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from lmm.model.build import build_llava
from lmm.model.connector import LinearConnector, MLPConnector, QFormerLite
from tests.conftest import tiny_llava

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_build_llava_takes_parts_built_or_as_configs():
    """The one assembly path (a run's config, an lmm folder, an HF Llava checkpoint): a connector config is
    instantiated and sized from the encoder's and LLM's widths, its saved weights are loaded strictly, cast to dtype."""
    ref = tiny_llava()
    spec = {"_target_": "lmm.model.connector.MLPConnector", "_partial_": True, "depth": 2}
    model = build_llava(ref.encoder, OmegaConf.create(spec), ref.llm, max_length=64,
                        connector_state=ref.connector.state_dict(), dtype="bfloat16")
    assert isinstance(model.connector, MLPConnector) and model.max_length == 64
    assert (model.connector.in_dim, model.connector.out_dim) == (ref.encoder.hidden_size, 32)
    assert model.encoder is ref.encoder and model.llm is ref.llm
    for (name, got), want in zip(model.connector.state_dict().items(), ref.connector.state_dict().values(),
                                 strict=True):
        assert got.dtype == torch.bfloat16 and torch.equal(got, want.to(torch.bfloat16)), name
    with pytest.raises(RuntimeError, match="Missing key"):
        build_llava(ref.encoder, spec, ref.llm, connector_state={"proj.0.weight": ref.connector.proj[0].weight})


@pytest.mark.parametrize("llm", ["vicuna7b", "vicuna13b"])
def test_the_llm_config_carries_its_tokenizer(llm):
    """conf/model/llm/<llm>.yaml writes the LLM and its tokenizer (model.llm, model.tokenizer), so swapping the LLM
    swaps the tokenizer with it."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["preset=paper", f"model/llm={llm}"])
    OmegaConf.resolve(cfg)
    assert cfg.model.llm._target_ == "lmm.model.llm.load_llm"
    assert cfg.model.tokenizer._target_ == "lmm.model.llm.load_tokenizer"
    assert cfg.model.tokenizer.pretrained == cfg.model.llm.pretrained == f"lmsys/vicuna-{llm[len('vicuna'):]}-v1.5"
    assert cfg.model.tokenizer.model_max_length == cfg.model.max_length == 2048
    assert "tokenizer" not in OmegaConf.to_container(OmegaConf.load(CONF / "model" / "llava.yaml"))


@pytest.mark.parametrize(("connector", "params", "tokens"), [
    (LinearConnector(1024, 4096), 4_198_400, 576),          # spec §4.1, 7B linear
    (MLPConnector(1024, 4096), 20_979_712, 576),            # spec §4.1, 7B mlp2x_gelu
    (MLPConnector(1024, 5120), 31_467_520, 576),            # spec §4.1, 13B mlp2x_gelu
    (QFormerLite(1024, 4096, num_queries=32, width=64, depth=1), None, 32),
])
def test_connector_contract(connector, params, tokens):
    if params is not None:
        assert connector.num_parameters == params
    assert connector.num_output_tokens(576) == tokens
    out = connector(torch.randn(2, 576, 1024))
    assert out.shape == (2, tokens, connector.out_dim)


def test_mlp_uses_exact_gelu_and_llava_indices():
    proj = MLPConnector(8, 16).proj
    assert isinstance(proj[1], torch.nn.GELU) and proj[1].approximate == "none"
    assert set(dict(proj.named_parameters())) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def batch(model, lengths, image_at=(1, 1)):
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 90, (n,))
        if image_at[i] is not None:
            ids[i, image_at[i]] = IMAGE_TOKEN_INDEX
        mask[i, :n] = 1
    labels = ids.clone()
    labels[ids == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    return ids, mask, torch.randn(len(lengths), 3, 28, 28), labels


def test_splice_expands_placeholder_and_repads():
    model = tiny_llava()
    ids, mask, images, labels = batch(model, [5, 8], image_at=(1, None))
    s = model.splice(ids, mask, images, labels)
    n_vis = model.num_visual_tokens
    assert n_vis == 4  # (28 / 14)^2 patches, CLS dropped
    assert s.inputs_embeds.shape[:2] == (2, max(5 - 1 + n_vis, 8))
    assert s.attention_mask[0].sum() == 5 - 1 + n_vis and s.attention_mask[1].sum() == 8
    assert (s.labels[0, 1:1 + n_vis] == IGNORE_INDEX).all()
    assert s.position_ids[0, : 5 - 1 + n_vis].tolist() == list(range(5 - 1 + n_vis))


def test_left_padding_pads_the_start_of_the_shorter_row():
    """A text-only prompt of 5 tokens next to an image prompt of 6 (9 once its placeholder is 4 visual tokens):
    left padding puts the 4 pads before the short row's tokens, with the mask, positions and labels moved along."""
    model = tiny_llava()
    ids, mask, images, labels = batch(model, [5, 6], image_at=(None, 1))
    lengths, longest = [5, 6 - 1 + model.num_visual_tokens], 9
    right = model.splice(ids, mask, images, labels)
    left = model.splice(ids, mask, images, labels, padding_side="left")
    assert left.inputs_embeds.shape[:2] == right.inputs_embeds.shape[:2] == (2, longest)
    for b, n in enumerate(lengths):
        pad = longest - n  # 4 for the text-only row, 0 for the image row
        assert left.attention_mask[b].tolist() == [0] * pad + [1] * n
        assert right.attention_mask[b].tolist() == [1] * n + [0] * pad
        assert left.position_ids[b, pad:].tolist() == right.position_ids[b, :n].tolist() == list(range(n))
        assert left.labels[b].tolist() == [IGNORE_INDEX] * pad + right.labels[b, :n].tolist()
        torch.testing.assert_close(left.inputs_embeds[b, pad:], right.inputs_embeds[b, :n], rtol=0, atol=0)


def test_left_padded_batch_generates_what_each_sample_generates_alone():
    """Greedy generation over the left-padded batch (rows of 5 and 9 spliced tokens) gives each sample's own
    tokens and scores: the pads neither shift a row's last position nor are attended to."""
    model = tiny_llava().eval()
    ids, mask, images, _ = batch(model, [5, 6], image_at=(None, 1))
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    together = model.generate(ids, mask, images, **kw)
    for b, n in enumerate([5, 6]):
        alone = model.generate(ids[b:b + 1, :n], mask[b:b + 1, :n], images[b:b + 1], **kw)
        assert together.sequences[b].tolist() == alone.sequences[0].tolist(), b
        for step, (batched, single) in enumerate(zip(together.scores, alone.scores, strict=True)):
            torch.testing.assert_close(batched[b], single[0], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, b=b, step=step: f"row {b}, step {step}: {m}")


def test_text_only_batch_keeps_connector_in_graph():
    """DDP/FSDP need every trainable parameter used in every step, also when no sample has an image."""
    model = tiny_llava()
    ids, mask, images, labels = batch(model, [6, 7], image_at=(None, None))
    logits, s = model(ids, mask, images, labels)
    loss_sum, n = model.token_loss(logits, s.labels)
    (loss_sum / n).backward()
    for name, p in model.connector.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) == 0  # in the graph, but with zero weight


def test_truncation_never_cuts_visual_tokens():
    model = tiny_llava()
    model.max_length = 6
    ids, mask, images, labels = batch(model, [5, 5], image_at=(1, 1))
    s = model.splice(ids, mask, images, labels)  # sample 0: visual tokens end at 5: kept, tail cut
    assert s.inputs_embeds.shape[1] == 6
    model.max_length = 4
    with pytest.raises(ValueError, match="cut through"):
        model.splice(ids, mask, images, labels)


def test_two_placeholders_rejected():
    model = tiny_llava()
    ids, mask, images, labels = batch(model, [6, 6])
    ids[0, 3] = IMAGE_TOKEN_INDEX
    with pytest.raises(ValueError, match="2 image placeholders"):
        model.splice(ids, mask, images, labels)


def test_encoder_is_frozen_and_without_grad():
    model = tiny_llava()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert not model.encoder.tower.training
    feats = model.encoder(torch.randn(1, 3, 28, 28))
    assert not feats.requires_grad and feats.shape == (1, 4, 24)


def test_a_full_clip_checkpoint_loads_as_a_tower_but_missing_vision_weights_are_an_error(tmp_path):
    """openai/clip-vit-large-patch14 (and the tiny world's CLIP) is a full CLIP: its text tower goes unused; a vision
    weight that is not in the file is an error, never a random init."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPConfig, CLIPModel

    from lmm.model.encoder import load_vision_tower

    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**small, "vocab_size": 50}, vision_config={**small, "image_size": 16,
                                                                             "patch_size": 8})
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    tower = load_vision_tower(str(tmp_path / "clip"))
    assert type(tower).__name__ == "CLIPVisionModel"
    weights = load_file(tmp_path / "clip" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "vision_model.encoder.layers.1." not in k},
              tmp_path / "clip" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="are missing"):
        load_vision_tower(str(tmp_path / "clip"))
