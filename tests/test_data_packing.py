"""Packing: no attention across samples and positions restarting per sample, proven on a Llama's logits; padding
is reported for plain, modality-length grouped and packed batches."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmm.constants import IGNORE_INDEX
from lmm.data.dataset import Collator, padding_fraction
from lmm.data.packing import first_fit_decreasing, pack


def _sample(n: int, seed: int, has_image: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (n,), generator=g)
    ids[0] = 1
    labels = ids.clone()
    labels[: n // 2] = IGNORE_INDEX
    return {"id": f"s{seed}", "source": "src", "input_ids": ids, "labels": labels, "has_image": has_image,
            "image": torch.full((3, 4, 4), float(seed)), "truncated": False}


def test_first_fit_decreasing_respects_capacity():
    bins = first_fit_decreasing([7, 5, 4, 3, 2, 2, 1], capacity=8)
    assert sorted(i for b in bins for i in b) == list(range(7))
    assert all(sum([7, 5, 4, 3, 2, 2, 1][i] for i in b) <= 8 for b in bins) and len(bins) == 3


def test_packed_rows_compute_what_each_sample_computes_alone():
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                       attn_implementation="sdpa")).eval()
    samples = [_sample(n, k) for k, n in enumerate([9, 5, 12, 4, 7])]
    batch = pack(samples, pad_token_id=0, capacity=16)
    assert batch["input_ids"].shape[0] < len(samples)
    with torch.no_grad():
        # no 2-D mask and no cache (as in training): transformers detects the packing from position_ids
        packed = llm(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for r in range(batch["input_ids"].shape[0]):
            for seg in batch["segment_ids"][r].unique().tolist():
                if seg == 0:
                    continue
                where = (batch["segment_ids"][r] == seg).nonzero().flatten()
                ids = batch["input_ids"][r, where]
                assert batch["position_ids"][r, where].tolist() == list(range(len(where)))
                alone = llm(input_ids=ids[None]).logits[0]
                torch.testing.assert_close(packed[r, where], alone, atol=1e-5, rtol=1e-4)
    assert sorted(batch["ids"]) == sorted(s["id"] for s in samples)
    # every sample's first label is masked: no sample learns to predict from its neighbour
    starts = (batch["position_ids"] == 0) & (batch["segment_ids"] > 0)
    assert (batch["labels"][starts] == IGNORE_INDEX).all()
    expected = sum(int((s["labels"][1:] != IGNORE_INDEX).sum()) for s in samples)
    assert int(batch["sample_tokens"].sum()) == expected == int((batch["labels"] != IGNORE_INDEX).sum())


def test_images_follow_placeholder_order_and_padding_is_reported():
    lengths = [30, 4, 6, 28, 5, 3]
    samples = [_sample(n, k, has_image=k % 2 == 0) for k, n in enumerate(lengths)]
    plain = Collator(0, 4, visual_tokens=10)(samples)
    packed = Collator(0, 4, visual_tokens=10, pack_length=48)(samples)
    assert packed["images"][:, 0, 0, 0].tolist() == [float(k) for k, s in zip(
        [int(i[1:]) for i in packed["ids"]], packed["has_image"], strict=True) if s]
    assert 0 <= padding_fraction(packed) < padding_fraction(plain)
    assert plain["positions"].tolist() == [6 * 39, sum(n + 9 * (k % 2 == 0) for k, n in enumerate(lengths))]


def test_packed_forward_through_llava_equals_the_samples_alone():
    """Images spliced into packed rows by the model's one splice: the packed loss and supervised tokens equal the
    per-sample ones."""
    from tests.conftest import tiny_llava

    model = tiny_llava().eval()
    samples = []
    for k, n in enumerate([9, 5, 12, 4, 7]):
        s = _sample(n, k, has_image=k in (0, 2, 3))
        if s["has_image"]:
            s["input_ids"][2] = -200
            s["labels"][2] = IGNORE_INDEX
        s["image"] = torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(k))
        samples.append(s)
    batch = pack(samples, pad_token_id=0, capacity=48, visual_tokens=model.num_visual_tokens)
    assert batch["input_ids"].shape[0] < len(samples)
    with torch.no_grad():
        logits, spliced = model(batch["input_ids"], batch["attention_mask"], batch["images"], batch["labels"],
                                position_ids=batch["position_ids"])
        loss, n = model.token_loss(logits, spliced.labels)
        ref_loss, ref_n = 0.0, 0
        for s in samples:
            out, spliced = model(s["input_ids"][None], torch.ones(1, len(s["input_ids"]), dtype=torch.long),
                                 s["image"][None], s["labels"][None])
            part, m = model.token_loss(out, spliced.labels)
            ref_loss, ref_n = ref_loss + part, ref_n + m
    assert int(n) == int(ref_n) > 0
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-5)
