"""Probe litdata for lmm's data requirements (run in a throwaway venv that has litdata; not part of lmm's deps).

Measures what experiments/data_pipeline.md records: conversion time, weighted-mix proportions, determinism, exact
mid-epoch resume of CombinedStreamingDataset with 0 and 2 workers, and read throughput. Usage:
    python benchmarks/litdata_probe.py --out /tmp/litdata-probe
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image


def make_sample(index: int) -> dict:
    """A small image (PNG bytes) and a LLaVA-like record, the same shape as the tiny world's samples."""
    rng = np.random.default_rng(index)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"index": index, "image": buf.getvalue(),
            "record": json.dumps({"id": str(index), "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                          {"from": "gpt", "value": "a"}]})}


def _ids_dataset():
    """A StreamingDataset yielding only sample ids (module level: litdata's workers are spawned, so pickled)."""
    return IdsDataset


def _decode_dataset():
    return DecodeDataset


try:
    from litdata import StreamingDataset

    class IdsDataset(StreamingDataset):
        def __getitem__(self, index):  # keep only the id: this part of the probe is about order, not decoding
            return int(super().__getitem__(index)["index"])

    class DecodeDataset(StreamingDataset):
        def __getitem__(self, index):
            s = super().__getitem__(index)
            return np.asarray(Image.open(io.BytesIO(s["image"])).convert("RGB")).shape[0]
except ImportError:  # lmm itself does not depend on litdata
    pass


def build(out: Path, sizes: dict[str, int]) -> dict[str, float]:
    import litdata

    seconds = {}
    for name, n in sizes.items():
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        base = {"lcs": 0, "vqa": 100_000, "text": 200_000}[name]
        started = time.perf_counter()
        litdata.optimize(fn=make_sample, inputs=list(range(base, base + n)), output_dir=str(target),
                         chunk_bytes="8MB", num_workers=1, mode="overwrite")
        seconds[name] = time.perf_counter() - started
    return seconds


def loader(out: Path, names: list[str], weights: list[float], workers: int, batch: int = 8, seed: int = 42):
    from litdata import CombinedStreamingDataset, StreamingDataLoader

    sets = [_ids_dataset()(str(out / n), shuffle=True, drop_last=True, seed=seed) for n in names]
    mix = CombinedStreamingDataset(sets, seed=seed, weights=weights, iterate_over_all=False)
    return StreamingDataLoader(mix, batch_size=batch, num_workers=workers, drop_last=True)


def ids_of(batches) -> list[int]:
    return [int(x) for b in batches for x in b]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/litdata-probe")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"lcs": 6000, "vqa": 4000, "text": 3000}
    report: dict = {"optimize_seconds": build(out, sizes)}
    names, weights = list(sizes), [0.5, 0.3, 0.2]

    # proportions over 10,000 samples and determinism
    for workers in (0, 2):
        runs = []
        for _ in range(2):
            got = []
            for b in loader(out, names, weights, workers):
                got.extend(int(x) for x in b)
                if len(got) >= 10_000:
                    break
            runs.append(got[:10_000])
        src = Counter(i // 100_000 for i in runs[0])
        report[f"proportions_w{workers}"] = {n: src[k] / len(runs[0]) for k, n in enumerate(names)}
        report[f"same_order_same_seed_w{workers}"] = runs[0] == runs[1]
        report[f"duplicates_in_10k_w{workers}"] = len(runs[0]) - len(set(runs[0]))

    # exact mid-epoch resume: stop after batch 9, resume, compare with the uninterrupted run
    for workers in (0, 2):
        full = []
        for i, b in enumerate(loader(out, names, weights, workers)):
            full.append([int(x) for x in b])
            if i == 59:
                break
        dl = loader(out, names, weights, workers)
        first = []
        for i, b in enumerate(dl):
            first.append([int(x) for x in b])
            if i == 9:
                state = dl.state_dict()
                break
        dl2 = loader(out, names, weights, workers)
        dl2.load_state_dict(state)
        rest = []
        for i, b in enumerate(dl2):
            rest.append([int(x) for x in b])
            if len(first) + i + 1 == 60:
                break
        resumed = ids_of(first + rest)
        expected = ids_of(full)
        report[f"resume_exact_w{workers}"] = resumed == expected
        report[f"resume_repeated_w{workers}"] = len(set(ids_of(rest)) & set(ids_of(first)))
        report[f"resume_missing_w{workers}"] = len(set(expected) - set(resumed))

    # read + decode throughput (PNG decode, no model-side transforms)
    from litdata import StreamingDataLoader

    for workers in (0, 2):
        ds = _decode_dataset()(str(out / "lcs"), shuffle=True, drop_last=True, seed=1)
        dl = StreamingDataLoader(ds, batch_size=16, num_workers=workers, drop_last=True)
        started, n = time.perf_counter(), 0
        for b in dl:
            n += len(b)
        report[f"decode_samples_per_s_w{workers}"] = round(n / (time.perf_counter() - started), 1)
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
