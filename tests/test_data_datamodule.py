"""The DataModule as the pipeline builds it from conf/data: the world's mixture composes, streams from stores, applies
format prompts on the fly and serves sample generations, also for a source that exists only as a store; an epoch the
global batch does not divide ends in a smaller step; a misspelled setting fails."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from lmm.config import register_resolvers
from lmm.data.args import LoaderArgs, MixtureArgs, StoreArgs
from lmm.data.datamodule import LlavaDataModule
from lmm.data.formats import SHORT_ANSWER
from lmm.data.templates import VicunaV1Template
from lmm.model.preprocess import ImageTransform
from lmm.train.callbacks import TrainedTally
from tests.conftest import SMALL_WORLD, BatchConsumer, world_root

CONF = Path(__file__).resolve().parents[1] / "conf"
register_resolvers()


# LLaVA-Instruct, VQAv2 and ShareGPT of the small world, weighed 0.5 / 0.3 / 0.2 (ShareGPT upsampled)
THREE_SOURCES = ["data=mix1_vqav2", "data.catalog.sharegpt.enabled=true",
                 "data.instruct.mixture.weights={llava_instruct:0.5,vqav2:0.3,sharegpt:0.2}"]


def _datamodule(tiny_world: Path, *overrides: str) -> LlavaDataModule:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*THREE_SOURCES, SMALL_WORLD, f"paths.cache_dir={tiny_world}",
                                                       "data.instruct.mixture.num_samples=96", "data.num_workers=0",
                                                       # the paper's padded micro-batches (the tiny preset packs;
                                                       # packing has its own tests, test_data_packing.py)
                                                       "data.instruct.loader.pack=false", *overrides])
    OmegaConf.resolve(cfg)
    world = world_root(tiny_world)
    assert Path(cfg.world.root) == world
    return instantiate(cfg.data.instruct)(  # the call of lmm.train.stage.train_stage
        template=VicunaV1Template(), tokenizer=AutoTokenizer.from_pretrained(world / "tokenizer"),
        image_transform=ImageTransform.from_pretrained(world / "clip-tiny-res224"), max_text_length=200,
        micro_batch_size=4, seed=0, output_dir=None, visual_tokens=None)


def test_world_mixture_streams_weighted_single_modality_batches(tiny_world):
    dm = _datamodule(tiny_world)
    assert dm.source_names == ["llava_instruct", "sharegpt", "vqav2"]
    assert dm.loader_args.group_by_modality_length and dm.loader_args.num_workers == 0
    batches = list(dm.train_dataloader())
    counts = Counter(s for b in batches for s in b["sources"])
    assert counts == {"llava_instruct": 48, "vqav2": 29, "sharegpt": 19}
    # micro 4 x accumulate 1 x world 1: every micro-batch is a step, single-modality but the last
    mixed = [k for k, b in enumerate(batches) if 0 < int(b["has_image"].sum()) < len(b["ids"])]
    assert mixed in ([], [len(batches) - 1])


class _Recorder(BatchConsumer):
    """Keeps the (source, id) of every sample trained on, by epoch (not the loss-free filler rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, list[tuple[str, str]]] = {}

    def training_step(self, batch, batch_idx):
        real = [(s, i) for s, i in zip(batch["sources"], batch["ids"], strict=True) if s]
        self.seen.setdefault(self.current_epoch, []).extend(real)
        return super().training_step(batch, batch_idx)


def test_a_remainder_is_trained_in_a_last_smaller_step(tiny_world):
    """Issue 8: 90 samples, global batch 16 (micro 4 x accumulate 4): 5 whole steps and a last one of 10, each
    epoch; the cosine schedule is built for those 12 steps, every sample of each epoch is trained on once."""
    dm = _datamodule(tiny_world, "data.instruct.mixture.num_samples=90")
    module, tally = _Recorder(), TrainedTally("instruct")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, accumulate_grad_batches=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[tally])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == trainer.estimated_stepping_batches == 12 == tally.steps
    plan = dm.loader.sampler.plan
    for epoch in (0, 1):
        planned = Counter((dm.source_names[s], dm.readers[s].record(int(i))[0].id)
                          for s, i in plan.epoch_samples(epoch))
        assert Counter(module.seen[epoch]) == planned and sum(planned.values()) == 90
    summary = tally.summary()
    assert summary["samples"] == 180 and summary["last_step_samples"] == summary["smallest_step_samples"] == 10
    assert summary["epoch_plan"]["steps"] == 6 and summary["epoch_plan"]["num_samples"] == 90


def test_format_prompt_is_a_switch_on_the_same_files(tiny_world):
    def vqa_text(dm: LlavaDataModule) -> str:
        ds = dm.dataset()
        return dm.tokenizer.decode([t for t in ds[(dm.source_names.index("vqav2"), 0)]["input_ids"].tolist() if t >= 0])

    assert SHORT_ANSWER in vqa_text(_datamodule(tiny_world))
    assert SHORT_ANSWER not in vqa_text(_datamodule(tiny_world, "data.catalog.vqav2.format_prompt=false"))


def test_example_records_extract_images_of_a_store_only_source(tiny_world, tmp_path):
    dm = _datamodule(tiny_world)
    dm.setup()
    store = dm.readers[0].location
    only = LlavaDataModule([{"name": "conv", "store": store}], template=dm.template, tokenizer=dm.tokenizer,
                           image_transform=dm.image_transform, max_text_length=200, micro_batch_size=4,
                           output_dir=tmp_path)
    examples = only.example_records(3)
    assert len(examples) == 3
    for rec, root in examples:
        assert root == tmp_path / "examples" / "conv" and (root / rec.image).stat().st_size > 0
    first, root = _datamodule(tiny_world).example_records(1)[0]
    assert root == world_root(tiny_world) / "data"  # the source's own image root when it holds the images


def test_packing_needs_the_visual_token_count(tiny_world):
    with pytest.raises(ValueError, match="visual_tokens"):
        _datamodule(tiny_world, "data.instruct.loader.pack=true")


def test_remote_store_is_read_as_is_even_with_records_set(tmp_path, monkeypatch):
    """The source configs keep `records` set; overriding `store` with a URL must read the bucket, not convert the
    records into a local folder named after the URL ("local:/..." under the working directory). The bucket is a
    folder read through litdata's `local:` scheme (its remote code path without a network)."""
    import shutil

    from lmm.data.sources.convert import convert
    from lmm.world.noise import write_source
    from tests.synthetic import data_kit

    monkeypatch.chdir(tmp_path)
    kit = data_kit(tmp_path / "kit")
    remote_records, remote_root = write_source(tmp_path / "remote", "up", 20, image_fraction=0.5, seed=2)
    convert(remote_records, remote_root, tmp_path / "converted", progress=False)
    shutil.copytree(tmp_path / "converted", tmp_path / "bucket" / "up")
    url = f"local:{tmp_path / 'bucket' / 'up'}"
    local_records, local_root = write_source(tmp_path / "local", "loc", 12, image_fraction=0.5, seed=3)
    store = StoreArgs(cache_dir=str(tmp_path / "cache"), remote_cache_dir=str(tmp_path / "remote-cache"),
                      progress=False)
    dm = LlavaDataModule([{"name": "up", "records": str(local_records), "image_root": str(local_root),
                           "store": url}], **kit, max_text_length=256, micro_batch_size=4,
                         mixture=MixtureArgs(shuffle=False), loader=LoaderArgs(num_workers=2), store=store)
    dm.prepare_data()
    ids = [i for b in dm.train_dataloader() for i in b["ids"]]
    assert ids == [f"up-{k}" for k in range(20)]  # the bucket's samples, not the 12 local records
    assert dm.readers[0].location == url and dm.readers[0].remote
    assert not (tmp_path / "local:").exists() and not (tmp_path / "cache").exists()
    assert list((tmp_path / "remote-cache").rglob("chunk-*.bin"))  # litdata's cache, under remote_cache_dir
    empty = LlavaDataModule([{"name": "none", "records": str(local_records), "store": url + "-missing"}], **kit,
                            max_text_length=256, micro_batch_size=4, store=store)
    with pytest.raises(FileNotFoundError, match="never converts into remote storage"):
        empty.setup()


def test_other_conversion_settings_get_their_own_folder(tiny_world):
    """Changing verify_images or chunk_bytes converts anew instead of reusing a conversion made otherwise."""
    base = _datamodule(tiny_world)
    base.setup()
    decode = _datamodule(tiny_world, "data.instruct.policy.verify_images=decode")
    decode.setup()
    assert base.readers[0].location != decode.readers[0].location
    again = _datamodule(tiny_world)
    again.setup()
    assert again.readers[0].location == base.readers[0].location


@pytest.mark.parametrize(("override", "error", "names"), [
    ("+data.instruct.loader.num_worker=2", "num_worker", ["num_worker"]),  # a misspelled setting of a group
    ("+data.catalog.vqav2.wieght=1", "wieght", ["wieght"]),  # ... of a source
    ("data.instruct.policy.on_error=ignore", "on_error", ["error", "skip"]),  # a value outside its closed set
])
def test_a_misspelled_data_setting_fails_when_the_stage_is_built(tiny_world, override, error, names):
    """The `+` forces the key past Hydra's own check of command-line keys (a YAML file can hold it just as well):
    the dataclasses refuse it instead of ignoring it."""
    with pytest.raises(Exception, match=error) as err:
        _datamodule(tiny_world, override)
    assert all(name in str(err.value) for name in names)


def test_the_datamodule_takes_no_loose_options(tiny_world):
    """Every data setting sits in its group: an option given loose (as before the groups) is refused, not ignored."""
    kit = {"template": VicunaV1Template(), "tokenizer": None, "image_transform": None}
    source = [{"name": "s", "records": str(world_root(tiny_world) / "data" / "llava_v1_5_mix665k.json")}]
    with pytest.raises(TypeError, match="num_workers"):
        LlavaDataModule(source, **kit, max_text_length=8, micro_batch_size=1, num_workers=2)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['shards'\] \(`shards` is now called `store`\)"):
        LlavaDataModule([{"name": "s", "shards": "/x"}], **kit, max_text_length=8, micro_batch_size=1)
