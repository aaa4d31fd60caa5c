"""The data path of high-resolution input (input=hd/anyres): each sample carries its own tiles, size and visual token
count; batching, packing, truncation and the padding accounting use that count, and packed tiled batches compute
what the samples compute alone."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lmm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from lmm.data.datamodule import LlavaDataModule
from lmm.data.dataset import Collator, SampleBuilder
from lmm.data.packing import pack
from lmm.data.records import Record, Turn
from lmm.data.templates import PlainTemplate
from lmm.model.build import tile_model
from lmm.model.llava import LlavaModel
from lmm.world.noise import write_source
from lmm.world.zoo import build_tokenizer
from tests.conftest import tiny_llava
from tests.synthetic import data_kit

SIZES = [(20, 60), (60, 20), (28, 28), (50, 50)]  # (height, width): wide, tall, one tile, a 2x2 grid


def tiled_model(mode: str = "anyres", vocab: int = 96) -> LlavaModel:
    """conftest's tiny model (28 px tiles, 2x2 features per tile) made tiled."""
    tiling = {"mode": "anyres", "grid": [[1, 2], [2, 1], [2, 2]]} if mode == "anyres" else \
        {"mode": "hd", "max_tiles": 4}
    return tile_model(tiny_llava(vocab=vocab), tiling).eval()


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def sample(model: LlavaModel, n: int, seed: int, size: tuple[int, int] | None) -> dict:
    """A sample as SampleBuilder makes it: ids with one placeholder, the image's tiles, size and token count."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (n,), generator=g)
    ids[0] = 1
    labels = ids.clone()
    labels[: n // 2] = IGNORE_INDEX
    transform = model.image_transform()
    s = {"id": f"s{seed}", "source": "src", "input_ids": ids, "labels": labels, "has_image": size is not None,
         "truncated": False}
    if size is None:
        s["image"], s["image_size"] = transform.blank()
        s["visual_tokens"] = 0
        return s
    ids[2], labels[2] = IMAGE_TOKEN_INDEX, IGNORE_INDEX
    s["image"], s["image_size"] = transform(picture(size, seed)), size
    s["visual_tokens"] = transform.visual_tokens(size)
    return s


def test_tile_model_grows_the_context_by_the_largest_grid() -> None:
    plain = tiny_llava()
    model = tiled_model()
    # 2x2 grid at 2 features per tile side: 4 base + 4 * (4 + 1) = 24 tokens, 20 more than one image's 4
    assert model.connector.spec.max_visual_tokens(2) == 24
    assert model.max_length == plain.max_length + 24 - 4
    counts = [model.visual_tokens(s) for s in SIZES]
    # wide 20x60: 1x2 grid, a 2x4 map; int(20 * 4 / 60) = 1 row shows the image, (2 - 1) // 2 = 0 cut: 2 rows of 4+1
    # tall 60x20: 2x1, a 4x2 map, nothing cut either: 4 rows of 2+1; 28x28: 1x2 (the first of the least wasteful),
    # a 2x4 map, int(28 * 2 / 28) = 2 columns kept, 1 cut each side: 2 rows of 2+1; 50x50: 2x2, 4 rows of 4+1
    assert counts == [4 + 2 * 5, 4 + 4 * 3, 4 + 2 * 3, 4 + 4 * 5]


@pytest.mark.parametrize("mode", ["anyres", "hd"])
def test_batches_carry_each_images_tiles_sizes_and_tokens(mode: str) -> None:
    model = tiled_model(mode)
    samples = [sample(model, 6 + k, k, size) for k, size in enumerate([*SIZES, None])]
    batch = Collator(0, 28, visual_tokens=model.num_visual_tokens, blank=model.image_transform().blank)(samples)
    tiles = [model.connector.spec.num_tiles(s) for s in [*SIZES, (28, 28)]]
    assert batch["images"].shape[0] == sum(tiles)
    assert batch["image_sizes"].tolist() == [list(s) for s in [*SIZES, (28, 28)]]
    counts = [model.visual_tokens(s) for s in SIZES]
    assert batch["visual_tokens"].tolist() == [*counts, 0]
    real = sum(len(s["input_ids"]) for s in samples) + sum(counts) - len(SIZES)
    assert batch["positions"].tolist()[1] == real  # the accounting counts each image's real number
    with torch.no_grad():
        _, spliced = model(batch["input_ids"], batch["attention_mask"], batch["images"], batch["labels"],
                           image_sizes=batch["image_sizes"])
    assert spliced.attention_mask.sum(1).tolist() == [len(s["input_ids"]) + c - 1 for s, c in
                                                     zip(samples, [*counts, 1], strict=True)][:4] + [6 + 4]


def test_packed_tiled_rows_equal_the_samples_alone() -> None:
    """Packing by each image's own count, images in placeholder order: the packed loss equals the per-sample sum."""
    model = tiled_model()
    samples = [sample(model, n, k, size) for k, (n, size) in
               enumerate(zip([9, 5, 12, 4, 7], [SIZES[0], None, SIZES[1], SIZES[3], SIZES[2]], strict=True))]
    capacity = 48
    batch = pack(samples, pad_token_id=0, capacity=capacity, visual_tokens=model.num_visual_tokens)
    assert batch["input_ids"].shape[0] < len(samples)
    costs = [len(s["input_ids"]) + (s["visual_tokens"] - 1 if s["has_image"] else 0) for s in samples]
    assert batch["positions"].tolist()[1] == sum(costs)
    with torch.no_grad():
        logits, spliced = model(batch["input_ids"], batch["attention_mask"], batch["images"], batch["labels"],
                                position_ids=batch["position_ids"], image_sizes=batch["image_sizes"])
        assert spliced.attention_mask.sum(1).max() <= capacity  # the rows hold what the packer counted
        loss, n = model.token_loss(logits, spliced.labels)
        ref_loss, ref_n = 0.0, 0
        for s in samples:
            sizes = torch.tensor([list(s["image_size"])])
            out, sp = model(s["input_ids"][None], torch.ones(1, len(s["input_ids"]), dtype=torch.long), s["image"],
                            s["labels"][None], image_sizes=sizes)
            part, m = model.token_loss(out, sp.labels)
            ref_loss, ref_n = ref_loss + part, ref_n + m
    assert int(n) == int(ref_n) > 0
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-5)


def test_truncation_leaves_room_for_each_images_tokens(tmp_path) -> None:
    """A long conversation is cut to max_length less this image's visual tokens, so the spliced sample fits exactly
    and the cut never reaches the visual tokens; a bigger image leaves less text."""
    tok = build_tokenizer(["a red ball is on the left of a blue cube . what colour is it ?"] * 4, tmp_path, 120)
    model = tiled_model(vocab=len(tok))
    model.max_length = 60
    transform = model.image_transform()
    nominal = model.num_visual_tokens
    builder = SampleBuilder(PlainTemplate(), tok, transform, max_text_length=model.max_length - nominal + 1,
                            truncate=True, text_only_extra=nominal - 1)
    long = " ".join(["a red ball is on the left of a blue cube ."] * 12)
    rec = Record("r", "x.png", [Turn("human", "<image>"), Turn("gpt", long)])
    texts = []
    for size in ((20, 60), (50, 50)):
        img = picture(size, 0)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        s = builder.build(rec, buf.getvalue(), None, "src", "here")
        assert s["truncated"] and s["visual_tokens"] == model.visual_tokens(size) and s["image_size"] == size
        assert len(s["input_ids"]) + s["visual_tokens"] - 1 == model.max_length
        with torch.no_grad():
            _, spliced = model(s["input_ids"][None], torch.ones(1, len(s["input_ids"]), dtype=torch.long),
                               s["image"], s["labels"][None], image_sizes=torch.tensor([list(size)]))
        assert spliced.attention_mask.shape[1] == model.max_length
        texts.append(len(s["input_ids"]))
    assert texts[0] - texts[1] == model.visual_tokens((50, 50)) - model.visual_tokens((20, 60))


def test_instruct_starts_from_the_align_connector(tmp_path) -> None:
    """The align stage's (plain) connector loads into the tiled connector's inner one; image_newline keeps its init;
    a whole tiled connector (an instruct stage's) loads as it is."""
    from safetensors.torch import save_file

    from lmm.train.module import load_connector

    align = tiny_llava(seed=1).connector
    save_file({k: v.contiguous() for k, v in align.state_dict().items()}, str(tmp_path / "align.safetensors"))
    model = tiled_model()
    newline = model.connector.image_newline.detach().clone()
    load_connector(model, str(tmp_path / "align.safetensors"))
    for k, v in align.state_dict().items():
        assert torch.equal(model.connector.inner.state_dict()[k], v), k
    assert torch.equal(model.connector.image_newline, newline)
    with torch.no_grad():
        model.connector.image_newline.add_(1.0)
    save_file({k: v.contiguous() for k, v in model.connector.state_dict().items()}, str(tmp_path / "tiled.safetensors"))
    other = tiled_model()
    load_connector(other, str(tmp_path / "tiled.safetensors"))
    assert torch.equal(other.connector.image_newline, model.connector.image_newline)


def test_grouping_by_length_counts_each_images_visual_tokens(tmp_path: Path) -> None:
    """LLaVA's grouping length is the words of a sample; tiled images differ in visual tokens by more than their
    words differ, so the plan adds each image's own count, read from the size the store keeps."""
    model = tiled_model("anyres")
    transform = model.image_transform()
    kit = data_kit(tmp_path)
    specs = []
    for name, (height, width) in (("wide", SIZES[0]), ("square", SIZES[3])):
        records, root = write_source(tmp_path, name, 6, image_fraction=0.5, seed=len(name),
                                     image_size=(width, height))
        specs.append({"name": name, "records": str(records), "image_root": str(root)})

    def datamodule(image_transform, group: bool = True) -> LlavaDataModule:
        return LlavaDataModule(specs, template=kit["template"], tokenizer=kit["tokenizer"],
                               image_transform=image_transform, max_text_length=64, micro_batch_size=2,
                               loader={"group_by_modality_length": group}, store={"cache_dir": str(tmp_path / "c")})

    dm = datamodule(transform)
    plan = dm.plan()
    for info, reader, size in zip(plan.sources, dm.readers, (SIZES[0], SIZES[3]), strict=True):
        assert reader.image_sizes[reader.has_image].tolist() == [list(size)] * int(reader.has_image.sum())
        assert (reader.image_sizes[~reader.has_image] == 0).all()
        expected = reader.words + np.where(reader.has_image, model.visual_tokens(size), 0)
        assert np.asarray(info.lengths).tolist() == expected.tolist()
    # a fixed input keeps LLaVA's words (the same count on every image changes no single-modality step); so does
    # a plan that does not group
    for other in (datamodule(kit["image_transform"]), datamodule(transform, group=False)):
        assert [np.asarray(i.lengths).tolist() for i in other.plan().sources] == \
            [r.words.tolist() for r in other.readers]
    # the grouped order follows the lengths: a resumed run under other lengths is refused, not silently reordered
    assert plan.fingerprint() != datamodule(kit["image_transform"]).plan().fingerprint()
