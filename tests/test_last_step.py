"""The last, smaller optimizer step (issue 8): an epoch of N samples that the global batch G does not divide trains on
every sample, in ceil(N / G) steps, with every rank running the same number of micro-batches in every step."""

from __future__ import annotations

import math
from collections import Counter

import lightning as L
import numpy as np
import pytest

from lmm.data.args import LoaderArgs, StoreArgs
from lmm.data.datamodule import LlavaDataModule
from lmm.data.mixture import MixturePlan, SourceInfo
from lmm.train.callbacks import TrainedTally
from tests.conftest import BatchConsumer
from tests.synthetic import data_kit, image_and_text_sources


def _infos(sizes: list[int], image_every: int = 3) -> list[SourceInfo]:
    rng = np.random.default_rng(0)
    return [SourceInfo(f"s{k}", n, np.arange(n) % image_every != 0, rng.integers(1, 200, n))
            for k, n in enumerate(sizes)]


# (sizes, counts, micro, world, accumulate): N = sum(counts), G = micro x world x accumulate, N % G != 0
CASES = {
    "1 rank, tail of 2 micro-batches": ([40, 30], [20, 10], 4, 1, 2),  # N 30, G 8: tail 6 = 3 + 3
    "2 ranks, tail below one micro-batch per rank": ([40, 30], [22, 15], 4, 2, 2),  # N 37, G 16: tail 5 = 3 + 2
    "2 ranks, tail of 2 micro-batches per rank": ([1003, 500], [1003, 500], 3, 2, 3),  # N 1503, G 18: tail 9
    "4 ranks, fewer tail samples than ranks": ([40, 30], [30, 21], 2, 4, 2),  # N 51, G 16: tail 3, one filler
    "2 ranks, micro-batches of 1": ([40, 30], [12, 9], 1, 2, 4),  # N 21, G 8: tail 5 over 3 x 2, one filler
    "2 ranks, less than one step": ([40, 30], [3, 2], 4, 2, 2),  # N 5 < G 16: one smaller step
    "2 ranks, leftovers fill a mixed step": ([67], [67], 4, 2, 2),  # 44 image + 23 text: 12 + 7 left, tail 3
}


def _expected_fillers(tail: int, micro: int, world: int) -> int:
    chunks = world * math.ceil(tail / (micro * world))
    return max(chunks - tail, 0)


@pytest.mark.parametrize("group", [False, True], ids=["random", "grouped"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_sample_of_the_epoch_once_in_ceil_steps(case, group):
    sizes, counts, micro, world, accumulate = CASES[case]
    plan = MixturePlan(_infos(sizes), counts, seed=4, micro_batch_size=micro, world_size=world,
                       accumulate=accumulate, group_by_modality_length=group)
    n, g = sum(counts), micro * world * accumulate
    assert n % g, "a case with a remainder"
    steps = math.ceil(n / g)
    tail = n - (steps - 1) * g
    assert plan.describe()["steps"] == steps and plan.describe()["last_step_samples"] == tail
    assert plan.filler_micro_batches == _expected_fillers(tail, micro, world)
    for epoch in (0, 1):
        ranks = [plan.rank_micro_batches(epoch, r) for r in range(world)]
        # the same number of micro-batches on every rank: Lightning's ceil(batches / accumulate) steps each
        assert {len(r) for r in ranks} == {plan.micro_batches_per_rank}
        assert math.ceil(plan.micro_batches_per_rank / accumulate) == steps
        keys = np.concatenate([b for r in ranks for b in r])
        assert len(keys) == n and len(np.unique(keys, axis=0)) == n  # every sample once, none twice
        epoch_keys = plan.epoch_samples(epoch)
        assert Counter(map(tuple, keys.tolist())) == Counter(map(tuple, epoch_keys.tolist()))
        assert Counter(epoch_keys[:, 0].tolist()) == dict(enumerate(counts))  # the asked-for counts, none dropped
        # every step but the last is a whole global batch; the last holds the rest, in at most `accumulate`
        # micro-batches per rank, none larger than `micro`; a micro-batch is empty only where there are fewer
        # samples than micro-batches
        for k in range(steps):
            step = [b for r in ranks for b in r[k * accumulate:(k + 1) * accumulate]]
            sizes_k = [len(b) for b in step]
            assert max(sizes_k) <= micro
            if k < steps - 1:
                assert sizes_k == [micro] * (world * accumulate)
            else:
                assert sum(sizes_k) == tail and len(step) <= world * accumulate
                assert sizes_k.count(0) == _expected_fillers(tail, micro, world)
                assert max(sizes_k) - min(sizes_k) <= 1  # dealt evenly over ranks and micro-batches
        if group:  # single-modality steps; the leftovers of both modalities: a whole mixed step, then the tail
            image = [[bool(plan.sources[s].has_image[i]) for s, i in b] for b in plan.epoch_micro_batches(epoch)]
            per_step = [sum(image[k * world * accumulate:(k + 1) * world * accumulate], []) for k in range(steps)]
            mixed = [k for k, row in enumerate(per_step) if 0 < sum(row) < len(row)]
            assert set(mixed) <= {steps - 2, steps - 1}
            if case == "2 ranks, leftovers fill a mixed step":
                assert steps - 2 in mixed  # 19 leftovers (12 image, 7 text): 16 in a mixed step


def test_a_whole_epoch_keeps_its_order():
    """An epoch the global batch divides is cut as before (whole steps only): its checkpoints still resume."""
    plan = MixturePlan(_infos([40, 30]), [20, 12], seed=4, micro_batch_size=4, world_size=2, accumulate=2,
                       group_by_modality_length=True)
    batches = plan.epoch_micro_batches(0)
    assert plan.describe()["steps"] == 2 and plan.filler_micro_batches == 0
    assert [len(b) for b in batches] == [4] * 8


# ------------------------------------------------------------------------------------------------- Trainer runs
@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("last-step")
    return data_kit(root / "kit"), image_and_text_sources(root, 24, 17), root


class IdRecorder(BatchConsumer):
    """BatchConsumer that keeps the (source, id) of every sample of every micro-batch, by epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, list[tuple[str, str]]] = {}
        self.micro_batches = 0

    def training_step(self, batch, batch_idx):
        self.micro_batches += 1
        real = [(s, i) for s, i in zip(batch["sources"], batch["ids"], strict=True) if s]
        self.seen.setdefault(self.current_epoch, []).extend(real)
        return super().training_step(batch, batch_idx)


def _fit(sources, world: int, rank: int, accumulate: int, epochs: int, group: bool, micro: int = 3):
    kit, specs, root = sources
    dm = LlavaDataModule(specs, **kit, max_text_length=512, micro_batch_size=micro, seed=2,
                         loader=LoaderArgs(num_workers=0, group_by_modality_length=group),
                         store=StoreArgs(cache_dir=str(root / "cache"), progress=False), world_size=world, rank=rank)
    module, tally = IdRecorder(), TrainedTally("instruct")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, accumulate_grad_batches=accumulate,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[tally])
    trainer.fit(module, datamodule=dm)
    return trainer, module, tally, dm


@pytest.mark.parametrize("group", [False, True], ids=["random", "grouped"])
@pytest.mark.parametrize(("micro", "world", "accumulate"), [(3, 1, 2), (3, 2, 2), (3, 2, 3), (1, 2, 2)])
def test_trainer_takes_ceil_steps_over_every_sample(sources, micro, world, accumulate, group):
    """41 samples per epoch: G = 6, 12, 18 or 4, never a divisor (with G = 4 the last step holds 1 sample, so
    rank 1 trains on a row without loss there). Ranks are simulated: one Trainer per rank over that rank's loader
    (what each DDP process runs)."""
    n, epochs = 41, 2
    g = micro * world * accumulate
    steps = math.ceil(n / g)
    per_epoch: dict[int, list[tuple[str, str]]] = {e: [] for e in range(epochs)}
    batches, last_steps = [], []
    for rank in range(world):
        trainer, module, tally, dm = _fit(sources, world, rank, accumulate, epochs, group, micro)
        assert trainer.global_step == epochs * steps == trainer.estimated_stepping_batches  # the cosine schedule's
        assert tally.steps == tally.scheduled_steps == epochs * steps
        assert tally.epoch_plan == dm.schedule() and tally.epoch_plan["steps"] == steps
        assert tally.samples == sum(len(v) for v in module.seen.values())
        assert tally.smallest_step_samples == tally.last_step_samples  # the smaller step is the epoch's last
        batches.append(module.micro_batches)
        last_steps.append(tally.last_step_samples)
        for e in range(epochs):
            per_epoch[e] += module.seen[e]
    assert len(set(batches)) == 1  # every rank ran as many micro-batches (DDP's collectives stay matched)
    assert sum(last_steps) == n - (steps - 1) * g  # this rank's share of the last step
    everything = {("img", f"img-{i}") for i in range(24)} | {("txt", f"txt-{i}") for i in range(17)}
    for e in range(epochs):
        assert len(per_epoch[e]) == n and set(per_epoch[e]) == everything  # every sample once per epoch


def test_tally_counts_the_last_smaller_step(sources):
    trainer, module, tally, _ = _fit(sources, world=1, rank=0, accumulate=4, epochs=1, group=False)
    # 41 samples, G = 12: 3 whole steps and one of 5 (micro-batches of 3 + 2)
    assert trainer.global_step == 4
    assert tally.summary() | {"epoch_plan": None} == {
        "optimizer_steps": 4, "samples": 41, "rejected": 0, "last_step_samples": 5, "smallest_step_samples": 5,
        "scheduled_steps": 4, "counted_from_step": 0, "epoch_plan": None}


# ------------------------------------------------------------------------------------------------ 2 processes
def test_ddp_two_processes_train_the_last_step_without_a_hang(sources, tmp_path):
    """Two real DDP processes (gloo): 41 samples in micro-batches of 1, accumulate 2, so G = 4 and the last step
    holds one sample; rank 1 trains on a loss-free row there. Both ranks take 11 steps, all collectives match (a
    mismatch hangs), every sample is trained once, and the tally sums both ranks."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    kit, specs, root = sources
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK")}
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_last_step", json.dumps(specs), str(root),
                             str(tmp_path)], cwd=Path(__file__).resolve().parents[1], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"the 2-process run hung\n{err[-4000:]}")
    assert proc.returncode == 0, err[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["global_step"] for r in ranks] == [11, 11] and ranks[0]["micro_batches"] == ranks[1]["micro_batches"]
    seen = [tuple(x) for r in ranks for x in r["seen"]]
    assert len(seen) == 41 and len(set(seen)) == 41
    tally = ranks[0]["tally"]
    assert tally["optimizer_steps"] == tally["scheduled_steps"] == 11
    assert tally["samples"] == 41 and tally["last_step_samples"] == 1
    assert tally["epoch_plan"]["filler_micro_batches"] == 1


def _ddp_worker(specs: str, root: str, out: str) -> None:
    import json
    import os
    from pathlib import Path

    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set in the process Lightning launches, before it builds this
    kit = data_kit(Path(out) / f"kit{rank}")
    dm = LlavaDataModule(json.loads(specs), **kit, max_text_length=512, micro_batch_size=1, seed=2,
                         loader=LoaderArgs(num_workers=0), store=StoreArgs(cache_dir=str(Path(root) / "cache"),
                                                                           progress=False))
    module, tally = IdRecorder(), TrainedTally("instruct")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, accumulate_grad_batches=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, callbacks=[tally])
    trainer.fit(module, datamodule=dm)
    (Path(out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(
        {"global_step": trainer.global_step, "micro_batches": module.micro_batches, "seen": module.seen.get(0, []),
         "tally": tally.summary()}))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    import sys

    _ddp_worker(sys.argv[1], sys.argv[2], sys.argv[3])
