"""Probe the streaming layers for lmm's data requirements: litdata (lmm's), mosaicml-streaming, lmm's store.

Measures what experiments/data_pipeline.md records, on the same synthetic samples (64x64 PNG + a LLaVA-like record;
three sources of 6,000 / 4,000 / 3,000): conversion time; random-access read + PNG decode in a fixed random order
(what lmm's sampler asks of a store) with 0 and 2 dataloader workers; and, for the two libraries, their own weighted
mix (0.5/0.3/0.2 over 10,000 samples), its determinism, its mid-epoch resume with 0 and 2 workers (stop after batch
10 of 60, resume from the loader's state_dict, compare with an uninterrupted run) and their own shuffled streaming
read. Each library runs in the venv that has it; `lmm` runs on the lmm checkout the script sits in (a copy of the
script in an older checkout measures lmm's own shard format of before):

    python perf/litdata_probe.py litdata --out /tmp/probe-litdata    # lmm's venv (litdata 0.2.76)
    python perf/litdata_probe.py mosaic --out /tmp/probe-mosaic      # a throwaway venv with mosaicml-streaming
    python perf/litdata_probe.py lmm --out /tmp/probe-lmm            # lmm's venv
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = {"lcs": 6000, "vqa": 4000, "text": 3000}
BASES = {"lcs": 0, "vqa": 100_000, "text": 200_000}  # sample id // 100_000 tells the source
WEIGHTS = [0.5, 0.3, 0.2]


def make_sample(index: int) -> dict:
    """A small image (PNG bytes) and a LLaVA-like record, the same shape as the tiny world's samples."""
    rng = np.random.default_rng(index)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"index": index, "image": buf.getvalue(),
            "record": json.dumps({"id": str(index), "image": f"images/{index}.png",
                                  "conversations": [{"from": "human", "value": "<image>\nq"},
                                                    {"from": "gpt", "value": "a"}]})}


def decoded(image: bytes) -> int:
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).shape[0]


class RandomAccess:
    """A map-style dataset over `get(i) -> image bytes` that decodes the image (torch forks it into workers)."""

    def __init__(self, get: Callable[[int], bytes], n: int) -> None:
        self.get, self.n = get, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return decoded(self.get(int(i)))


def fork(workers: int) -> dict:
    """Workers forked, as lmm's loader forks them (litdata.optimize sets the default start method to spawn)."""
    return {"multiprocessing_context": "fork"} if workers else {}


def random_access_rate(get: Callable[[int], bytes], n: int, label: str = "") -> dict[str, float]:
    """Samples/s of read + decode in one fixed random order, batches of 16, with 0 and 2 workers."""
    from torch.utils.data import DataLoader

    order = np.random.default_rng(0).permutation(n).tolist()
    rates = {}
    for workers in (0, 2):
        loader = DataLoader(RandomAccess(get, n), batch_size=16, sampler=order, num_workers=workers,
                            collate_fn=list, **fork(workers))
        started, k = time.perf_counter(), 0
        for batch in loader:
            k += len(batch)
        rates[f"random_read_decode{label}_samples_per_s_w{workers}"] = round(k / (time.perf_counter() - started), 1)
    return rates


def resume_check(make_loader: Callable[[], object], workers: int, stop: int = 10, total: int = 60) -> dict:
    """Stop after `stop` batches, resume a fresh loader from the state_dict, compare with an uninterrupted run."""
    def take(loader, k: int) -> list[list[int]]:
        got = []
        for b in loader:
            got.append([int(x) for x in b])
            if len(got) == k:
                break
        return got

    full = take(make_loader(), total)
    loader = make_loader()
    first = take(loader, stop)
    state = loader.state_dict()
    loader2 = make_loader()
    loader2.load_state_dict(state)
    rest = take(loader2, total - stop)
    flat = lambda bs: [x for b in bs for x in b]
    resumed, expected = flat(first + rest), flat(full)
    return {f"resume_exact_w{workers}": resumed == expected,
            f"resume_repeated_w{workers}": len(set(flat(rest)) & set(flat(first))),
            f"resume_missing_w{workers}": len(set(expected) - set(resumed))}


def mix_check(make_loader: Callable[[], object], workers: int, n: int = 10_000) -> dict:
    runs = []
    for _ in range(2):
        got = []
        for b in make_loader():
            got.extend(int(x) for x in b)
            if len(got) >= n:
                break
        runs.append(got[:n])
    src = Counter(i // 100_000 for i in runs[0])
    return {f"proportions_w{workers}": {name: src[k] / len(runs[0]) for k, name in enumerate(SIZES)},
            f"same_order_same_seed_w{workers}": runs[0] == runs[1],
            f"duplicates_in_{n}_w{workers}": len(runs[0]) - len(set(runs[0]))}


# ---------------------------------------------------------------------------------------------------- litdata
try:
    from litdata import StreamingDataset as _LitDataset

    class LitIds(_LitDataset):
        def __getitem__(self, index):  # only the id: this part of the probe is about order, not decoding
            return int(super().__getitem__(index)["index"])

    class LitDecode(_LitDataset):
        def __getitem__(self, index):
            return decoded(super().__getitem__(index)["image"])
except ImportError:  # litdata lives in lmm's venv, not in mosaic's
    pass


def probe_litdata(out: Path) -> dict:
    import litdata
    from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset
    from litdata.streaming.writer import BinaryWriter

    report: dict = {"litdata": litdata.__version__}
    seconds = {}
    for name, n in SIZES.items():  # litdata.optimize: what litdata offers for conversion (spawns workers)
        target = out / "optimize" / name
        shutil.rmtree(target, ignore_errors=True)
        started = time.perf_counter()
        litdata.optimize(fn=make_sample, inputs=list(range(BASES[name], BASES[name] + n)), output_dir=str(target),
                         chunk_bytes="8MB", num_workers=1, mode="overwrite")
        seconds[name] = round(time.perf_counter() - started, 2)
    report["optimize_seconds"] = seconds  # sample making included: optimize calls make_sample in its workers
    seconds = {}
    for name, n in SIZES.items():  # BinaryWriter in-process (what lmm's converter uses), samples made first
        target = out / "writer" / name
        shutil.rmtree(target, ignore_errors=True)
        samples = [make_sample(i) for i in range(BASES[name], BASES[name] + n)]
        started = time.perf_counter()
        writer = BinaryWriter(str(target), chunk_bytes="8MB")
        for i, sample in enumerate(samples):
            writer[i] = sample
        writer.done()
        writer.merge()
        seconds[name] = round(time.perf_counter() - started, 3)
    report["writer_seconds"] = seconds
    target = out / "writer" / "lcs"

    names = list(SIZES)

    def mixed(workers: int):
        sets = [LitIds(str(out / "optimize" / n), shuffle=True, drop_last=True, seed=42) for n in names]
        mix = CombinedStreamingDataset(sets, seed=42, weights=WEIGHTS, iterate_over_all=False)
        return StreamingDataLoader(mix, batch_size=8, num_workers=workers, drop_last=True, **fork(workers))

    for workers in (0, 2):
        report.update(mix_check(lambda w=workers: mixed(w), workers))
        report.update(resume_check(lambda w=workers: mixed(w), workers))
    for workers in (0, 2):  # litdata's own shuffled streaming read
        loader = StreamingDataLoader(LitDecode(str(out / "optimize" / "lcs"), shuffle=True, drop_last=True, seed=1),
                                     batch_size=16, num_workers=workers, drop_last=True, **fork(workers))
        started, n = time.perf_counter(), 0
        for b in loader:
            n += len(b)
        report[f"streaming_read_decode_samples_per_s_w{workers}"] = round(n / (time.perf_counter() - started), 1)
    chunks = len(list(target.glob("*.bin")))
    report["chunks_lcs"] = chunks
    plain = StreamingDataset(str(target))  # random access, litdata's defaults
    report.update(random_access_rate(lambda i: plain[i]["image"], SIZES["lcs"], "_defaults"))
    tuned = StreamingDataset(str(target), batch_decode=0, max_pre_download=chunks)  # as lmm's store reads
    report.update(random_access_rate(lambda i: tuned[i]["image"], SIZES["lcs"], "_as_lmm"))
    return report


# ----------------------------------------------------------------------------------------------------- mosaic
def probe_mosaic(out: Path) -> dict:
    import streaming
    from streaming import MDSWriter, Stream, StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    report: dict = {"mosaicml_streaming": streaming.__version__}
    seconds = {}
    for name, n in SIZES.items():  # samples made first: the time is the writer's
        target = out / "mds" / name
        shutil.rmtree(target, ignore_errors=True)
        samples = [make_sample(i) for i in range(BASES[name], BASES[name] + n)]
        started = time.perf_counter()
        with MDSWriter(out=str(target), columns={"index": "int", "image": "bytes", "record": "str"},
                       size_limit="8mb") as writer:
            for sample in samples:
                writer.write(sample)
        seconds[name] = round(time.perf_counter() - started, 3)
    report["writer_seconds"] = seconds

    class Ids(StreamingDataset):
        def __getitem__(self, index):
            return int(super().__getitem__(index)["index"])

    live: list = []

    def fresh() -> None:  # mosaic allows one dataset per local folder and process at a time
        live.clear()
        import gc

        gc.collect()
        clean_stale_shared_memory()

    def mixed(workers: int):
        fresh()
        streams = [Stream(local=str(out / "mds" / n), proportion=w) for n, w in zip(SIZES, WEIGHTS, strict=True)]
        ds = Ids(streams=streams, shuffle=True, shuffle_seed=42, batch_size=8, epoch_size=10_000)
        loader = StreamingDataLoader(ds, batch_size=8, num_workers=workers, drop_last=True, **fork(workers))
        live.append(loader)
        return loader

    for workers in (0, 2):
        report.update(mix_check(lambda w=workers: mixed(w), workers))
        report.update(resume_check(lambda w=workers: mixed(w), workers))

    class Decode(StreamingDataset):
        def __getitem__(self, index):
            return decoded(super().__getitem__(index)["image"])

    for workers in (0, 2):
        fresh()
        loader = StreamingDataLoader(Decode(local=str(out / "mds" / "lcs"), shuffle=True, shuffle_seed=1,
                                            batch_size=16), batch_size=16, num_workers=workers, drop_last=True,
                                     **fork(workers))
        live.append(loader)
        started, n = time.perf_counter(), 0
        for b in loader:
            n += len(b)
        report[f"streaming_read_decode_samples_per_s_w{workers}"] = round(n / (time.perf_counter() - started), 1)
    fresh()
    ds = StreamingDataset(local=str(out / "mds" / "lcs"))
    live.append(ds)
    report.update(random_access_rate(lambda i: ds[i]["image"], SIZES["lcs"]))
    return report


# -------------------------------------------------------------------------------------------------------- lmm
def probe_lmm(out: Path) -> dict:
    """lmm's converter (validation and an image-header check included) and reader, on a LLaVA JSON + PNG folder."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from lmm.data.sources.convert import convert
        from lmm.data.sources.store import StoreReader as Reader
        layout = "litdata parts"
    except ImportError:  # a checkout from before litdata (lmm's own shard format)
        from lmm.data.shards import ShardReader as Reader
        from lmm.data.shards import convert
        layout = "lmm shards"
    src = out / "llava"
    if not (src / "lcs.json").exists():
        (src / "images").mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(SIZES["lcs"]):
            s = make_sample(i)
            (src / "images" / f"{i}.png").write_bytes(s["image"])
            records.append(json.loads(s["record"]))
        (src / "lcs.json").write_text(json.dumps(records))
    target = out / "converted"
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    convert(src / "lcs.json", src, target, progress=False)
    report: dict = {"layout": layout, "convert_seconds_lcs": round(time.perf_counter() - started, 3)}
    reader = Reader(target)
    report.update(random_access_rate(lambda i: reader.read(i)[1], len(reader)))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layer", choices=["litdata", "mosaic", "lmm"])
    parser.add_argument("--out", default=None, help="working folder (default /tmp/probe-<layer>)")
    args = parser.parse_args()
    out = Path(args.out or f"/tmp/probe-{args.layer}")
    out.mkdir(parents=True, exist_ok=True)
    report = {"litdata": probe_litdata, "mosaic": probe_mosaic, "lmm": probe_lmm}[args.layer](out)
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
