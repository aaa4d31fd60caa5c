"""Metric states synced by a real all-gather: two CPU processes in a gloo process group each update every scorer
with their share of the data, and compute() (which syncs) must equal one process over all of it.

test_scoring_merge.py emulates the gather in-process; this runs torch.distributed for real, so uneven list states
(MMBench, MME records), a rank that saw nothing and the judged metrics' run dimension go through gloo itself.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.test_scoring_merge import CASES, _feed

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
WORLD = 2
TIMEOUT = 120.0  # seconds for the whole two-process run (process start-up included); collectives time out at 60


def _share(items: list, rank: int, how: str) -> list:
    """Rank 0 gets the first third, rank 1 the rest (uneven list states); "empty": rank 1 gets nothing."""
    cut = len(items) if how == "empty" else len(items) // 3
    return items[:cut] if rank == 0 else items[cut:]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    warnings.filterwarnings("ignore", "The ``compute`` method")  # the rank that saw no data
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        results = {}
        for name, (make, items) in CASES.items():
            for how in ("uneven", "empty"):
                results[f"{name}/{how}"] = _feed(make(), _share(items, rank, how)).compute()
        mmvet_make, mmvet_items = CASES["mmvet_runs"]
        results["mmvet_runs/compute_runs"] = _feed(mmvet_make(), _share(mmvet_items, rank, "uneven")).compute_runs()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_gloo_sync_equals_one_process(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    env = {k: os.environ.pop(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k in os.environ}
    try:
        procs = [ctx.Process(target=_worker, args=(rank, str(tmp_path / "store"), str(tmp_path)), daemon=True)
                 for rank in range(WORLD)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + TIMEOUT
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
            p.join()
    finally:
        os.environ.update(env)
    assert not hung, f"{len(hung)} rank(s) still running after {TIMEOUT:.0f} s: killed"
    assert [p.exitcode for p in procs] == [0] * WORLD

    expected = {}
    for name, (make, items) in CASES.items():
        full = _feed(make(), items).compute()
        expected[f"{name}/uneven"] = expected[f"{name}/empty"] = full
    mmvet_make, mmvet_items = CASES["mmvet_runs"]
    expected["mmvet_runs/compute_runs"] = _feed(mmvet_make(), mmvet_items).compute_runs()
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            pairs = zip(got[key], value, strict=True) if isinstance(value, list) else [(got[key], value)]
            for got_one, want in pairs:
                assert got_one == pytest.approx(want), f"rank {rank}, {key}"
