"""Input-pipeline benchmark (a script, not a timed test): is data loading the bottleneck of training?

Prints samples/s of lmm's whole input pipeline (read from litdata parts, decode, pad, resize, normalise, tokenise
and mask, collate) with 0 and 2 dataloader workers, beside
  - the tiny preset's train step (instruct stage: forward + backward + AdamW step) consuming micro-batches of 16,
  - a naive baseline: json.load of the whole file + transformers' CLIPImageProcessor per image (+ the same template
    and collate), with 0 and 2 workers,
  - the same two pipelines on COCO-sized JPEGs (640x480 -> 336, pad) for paper-scale decoding costs,
and the padding fraction of plain, modality-length grouped and packed micro-batches, and the memory and time of
json.load against lmm's streamed conversion on a 100K-record file. Writes <out>/report.json.

    python perf/input_pipeline.py [--out /tmp/lmm-bench] [--jpegs 400] [--scale 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmm.data.args import LoaderArgs, StoreArgs  # noqa: E402
from lmm.data.datamodule import LlavaDataModule  # noqa: E402
from lmm.data.dataset import collate, padding_fraction  # noqa: E402
from lmm.data.records import iter_raw_records, parse_record  # noqa: E402
from lmm.data.templates import VicunaV1Template  # noqa: E402
from lmm.model.preprocess import ImageTransform  # noqa: E402


def timed_epoch(loader: Any, limit: int | None = None) -> dict[str, float]:
    """Samples/s over a pass: overall (with worker start-up) and steady (after the first batch)."""
    started = time.perf_counter()
    first = None
    n = n_after_first = 0
    for batch in loader:
        k = len(batch["ids"])
        n += k
        if first is None:
            first = time.perf_counter()
        else:
            n_after_first += k
        if limit and n >= limit:
            break
    end = time.perf_counter()
    return {"samples": n, "samples_per_s": round(n / (end - started), 1),
            "steady_samples_per_s": round(n_after_first / max(end - first, 1e-9), 1),
            "first_batch_s": round(first - started, 3)}


class NaiveDataset(Dataset):
    """The usual LLaVA-style loader: the whole JSON in memory, HF's image processor per image."""

    def __init__(self, records: Path, image_root: Path, processor: Any, template: Any, tokenizer: Any,
                 pad: bool) -> None:
        with open(records) as fh:
            self.items = json.load(fh)
        self.root, self.processor, self.template, self.tokenizer, self.pad = image_root, processor, template, \
            tokenizer, pad

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        from lmm.model.preprocess import expand_to_square

        rec = parse_record(self.items[i], "naive", i)
        enc = self.template.encode(rec.conversations, self.tokenizer, has_image=rec.image is not None)
        size = self.processor.crop_size["height"]
        if rec.image is not None:
            img = Image.open(self.root / rec.image).convert("RGB")
            if self.pad:
                img = expand_to_square(img, tuple(int(255 * m) for m in self.processor.image_mean))
            pixels = self.processor(images=img, return_tensors="pt")["pixel_values"][0]
        else:
            pixels = torch.zeros(3, size, size)
        return {"id": rec.id, "source": "naive", "input_ids": torch.tensor(enc.input_ids),
                "labels": torch.tensor(enc.labels), "image": pixels, "has_image": rec.image is not None}


def naive_loader(records: Path, root: Path, processor: Any, tokenizer: Any, workers: int, micro: int) -> DataLoader:
    ds = NaiveDataset(records, root, processor, VicunaV1Template(), tokenizer, pad=True)
    return DataLoader(ds, batch_size=micro, shuffle=True, num_workers=workers, drop_last=True,
                      collate_fn=partial(collate, pad_token_id=tokenizer.pad_token_id))


def lmm_module(sources: list[dict], tokenizer: Any, transform: Any, cache: Path, workers: int, micro: int,
               visual_tokens: int | None = None, **loader: Any) -> LlavaDataModule:
    return LlavaDataModule(sources, VicunaV1Template(), tokenizer, transform, max_text_length=480,
                           micro_batch_size=micro, seed=0, visual_tokens=visual_tokens,
                           loader=LoaderArgs(num_workers=workers, **loader),
                           store=StoreArgs(cache_dir=str(cache), progress=False))


def train_step_rate(world: Path, batches: list[dict[str, Any]]) -> dict[str, float]:
    """The tiny preset's instruct step (connector + LLM learn), as the pipeline builds the model."""
    from hydra import compose, initialize_config_dir

    from lmm.config import register_resolvers
    from lmm.train.stage import build_model

    register_resolvers()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"paths.cache_dir={world.parent.parent}"])
    model = build_model(cfg)
    model.encoder.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if not n.startswith("encoder")]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step(b: dict[str, Any]) -> None:
        logits, spliced = model(b["input_ids"], b["attention_mask"], b["images"], b["labels"])
        loss, n = model.token_loss(logits, spliced.labels)
        (loss / n.clamp(min=1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[:3]:
        step(b)
    started = time.perf_counter()
    n = 0
    for b in batches[3:]:
        step(b)
        n += len(b["ids"])
    seconds = time.perf_counter() - started
    return {"samples": n, "samples_per_s": round(n / seconds, 1), "ms_per_micro_batch_of_16": round(
        1000 * seconds / len(batches[3:]), 1), "visual_tokens": model.num_visual_tokens,
        "max_length": model.max_length}


def padding_report(sources: list[dict], tokenizer: Any, transform: Any, cache: Path, visual: int) -> dict[str, Any]:
    out = {}
    for label, kwargs in (("plain", {}), ("modality_length_grouped", {"group_by_modality_length": True}),
                          ("packed", {"pack": True})):
        dm = lmm_module(sources, tokenizer, transform, cache, 0, 16, visual_tokens=visual, **kwargs)
        fractions, rows = [], 0
        total = real = 0
        for b in dm.train_dataloader():
            t, r = (int(x) for x in b["positions"])
            total, real = total + t, real + r
            fractions.append(padding_fraction(b))
            rows += b["input_ids"].shape[0]
        out[label] = {"pad_fraction": round((total - real) / total, 4), "rows_per_micro_batch_of_16": round(
            rows / len(fractions), 2)}
    return out


def conversion_rate(sources: list[dict], out: Path) -> dict[str, float]:
    """A fresh conversion (not the cached one): records/s with the default header check of every image."""
    import shutil
    import tempfile

    from lmm.data.sources.convert import convert

    target = Path(tempfile.mkdtemp(dir=out, prefix="convert-"))
    try:
        started = time.perf_counter()
        index = convert(sources[0]["records"], sources[0]["image_root"], target / "store", progress=False)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(target)
    return {"records": index["num_samples"], "seconds": round(seconds, 2),
            "records_per_s": round(index["num_samples"] / seconds, 1)}


def json_scale(out: Path, n: int) -> dict[str, Any]:
    """json.load versus lmm's streaming reader on an n-record LLaVA-like file (text only: the records are the cost)."""
    from lmm.world.noise import make_records

    path = out / f"scale-{n}.json"
    if not path.exists():
        recs = make_records("scale", n, image_fraction=0.0, seed=0, turns=(2, 6), words=(8, 40))
        for k, r in enumerate(recs):
            r["image"] = f"coco/train2017/{k:012d}.jpg"
        path.write_text(json.dumps(recs))
    report: dict[str, Any] = {"records": n, "file_mb": round(path.stat().st_size / 2**20, 1)}
    tracemalloc.start()
    started = time.perf_counter()
    with open(path) as fh:
        data = json.load(fh)
    report["json_load_s"] = round(time.perf_counter() - started, 2)
    report["json_load_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    del data
    tracemalloc.stop()
    tracemalloc.start()
    started = time.perf_counter()
    count = sum(1 for _ in iter_raw_records(path))
    report["lmm_stream_s"] = round(time.perf_counter() - started, 2)
    report["lmm_stream_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    tracemalloc.stop()
    report["lmm_meta_bytes_per_sample"] = 9
    assert count == n
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/lmm-bench")
    parser.add_argument("--cache-dir", help="an LMM_CACHE_DIR whose tiny-world to use (default: <out>/cache)")
    parser.add_argument("--jpegs", type=int, default=400)
    parser.add_argument("--scale", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=40, help="train steps timed for the consumption rate")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(2)

    from transformers import AutoTokenizer, CLIPImageProcessorPil

    from lmm.world.build import configured_world

    world = configured_world(Path(args.cache_dir or out / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(world / "tokenizer")
    tower = world / "clip-tiny-res224"
    transform = ImageTransform.from_pretrained(tower, aspect="pad")
    processor = CLIPImageProcessorPil.from_pretrained(tower)
    data = world / "data"
    mix = data / "llava_v1_5_mix665k.json"  # the world's whole stage-2 mixture, read as one source
    tiny = [{"name": "instruct_mix", "records": str(mix), "image_root": str(data)}]
    cache = out / "stores"
    report: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}

    report["tiny_conversion"] = conversion_rate(tiny, out)
    lmm_module(tiny, tokenizer, transform, cache, 0, 16).setup()

    rows = {}
    for workers in (0, 2):
        rows[f"lmm_tiny_w{workers}"] = timed_epoch(lmm_module(tiny, tokenizer, transform, cache, workers, 16)
                                                   .train_dataloader())
        rows[f"naive_tiny_w{workers}"] = timed_epoch(naive_loader(mix, data, processor, tokenizer,
                                                                  workers, 16))
    batches = list(lmm_module(tiny, tokenizer, transform, cache, 0, 16).train_dataloader())[: args.steps + 3]
    rows["train_step_tiny"] = train_step_rate(world, batches)

    if args.jpegs:
        from lmm.world.noise import write_source

        big = out / "jpeg-src"
        if not (big / "coco.json").exists():
            write_source(big, "coco", args.jpegs, image_fraction=1.0, seed=0, image_size=(640, 480), ext="jpg",
                         turns=(1, 4), words=(5, 30))
        src = [{"name": "coco", "records": str(big / "coco.json"), "image_root": str(big)}]
        t336 = ImageTransform(336, aspect="pad")
        p336 = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        report["coco640_conversion"] = conversion_rate(src, out)
        for workers in (0, 2):
            rows[f"lmm_coco640_to336_w{workers}"] = timed_epoch(
                lmm_module(src, tokenizer, t336, cache, workers, 16).train_dataloader())
            rows[f"naive_coco640_to336_w{workers}"] = timed_epoch(
                naive_loader(big / "coco.json", big, p336, tokenizer, workers, 16))
    report["throughput"] = rows
    report["padding_tiny_instruct"] = padding_report(tiny, tokenizer, transform, cache, visual=16)
    if args.scale:
        report["json_scale"] = json_scale(out, args.scale)

    print(f"{'pipeline':<28}{'samples/s':>12}{'steady/s':>12}{'first batch s':>15}")
    for name, r in rows.items():
        print(f"{name:<28}{r['samples_per_s']:>12}{r.get('steady_samples_per_s', ''):>12}"
              f"{r.get('first_batch_s', ''):>15}")
    print(json.dumps({k: v for k, v in report.items() if k != "throughput"}, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
