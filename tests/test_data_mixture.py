"""Mixtures: exact proportions, determinism, no sample twice across 2 ranks x 2 workers, modality grouping."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lmm.data.args import LoaderArgs, MixtureArgs, StoreArgs
from lmm.data.datamodule import LlavaDataModule
from lmm.data.mixture import MixturePlan, SourceInfo
from lmm.data.portions import apportion, epoch_counts
from lmm.world.noise import write_source
from tests.synthetic import data_kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return data_kit(tmp_path_factory.mktemp("kit"))


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    """Three text-only sources (decoding images is not what these tests are about) of 6000, 4000 and 3000."""
    root = tmp_path_factory.mktemp("sources")
    out = []
    for name, n, seed in (("alpha", 6000, 1), ("beta", 4000, 2), ("gamma", 3000, 3)):
        records, image_root = write_source(root, name, n, image_fraction=0.0, seed=seed, turns=(1, 1), words=(2, 4))
        out.append({"name": name, "records": str(records), "image_root": str(image_root)})
    return out, root


def _module(kit, sources, cache, seed=0, weights=None, num_workers=0, **kwargs):
    weights = weights if weights is not None else {"alpha": 0.5, "beta": 0.3, "gamma": 0.2}
    return LlavaDataModule(sources, **kit, seed=seed, micro_batch_size=25, max_text_length=256,
                           mixture=MixtureArgs(weights=weights, num_samples=10_000),
                           loader=LoaderArgs(num_workers=num_workers),
                           store=StoreArgs(cache_dir=str(cache), progress=False), **kwargs)


def _keys(loader) -> list[tuple[str, str]]:
    return [(s, i) for batch in loader for s, i in zip(batch["sources"], batch["ids"], strict=True)]


def test_weighted_mixture_over_two_ranks_and_two_workers(kit, three_sources, tmp_path):
    sources, _ = three_sources
    cache = tmp_path / "cache"
    per_rank = []
    for rank in (0, 1):
        dm = _module(kit, sources, cache, seed=7, world_size=2, rank=rank, num_workers=2)
        per_rank.append(_keys(dm.train_dataloader()))
    everything = per_rank[0] + per_rank[1]
    assert len(per_rank[0]) == len(per_rank[1]) == 5000
    assert len(set(everything)) == len(everything) == 10_000  # no sample twice, across ranks and workers
    shares = {name: n / len(everything) for name, n in Counter(s for s, _ in everything).items()}
    for name, weight in (("alpha", 0.5), ("beta", 0.3), ("gamma", 0.2)):
        assert abs(shares[name] - weight) <= 0.02, shares
    assert all(i.startswith(s) for s, i in everything)  # ids and sources stay aligned through collation
    # the same seed gives the same samples in the same order (also with another number of workers)
    again = _keys(_module(kit, sources, cache, seed=7, world_size=2, rank=0, num_workers=0).train_dataloader())
    assert again == per_rank[0]
    other = _keys(_module(kit, sources, cache, seed=8, world_size=2, rank=0, num_workers=0).train_dataloader())
    assert other != per_rank[0]


def _infos(sizes, image_every=0, seed=0):
    rng = np.random.default_rng(seed)
    return [SourceInfo(f"s{k}", n, (np.arange(n) % image_every != 0) if image_every else np.ones(n, bool),
                       rng.integers(1, 200, n)) for k, n in enumerate(sizes)]


def test_counts_weights_and_sizes():
    assert epoch_counts([100, 50], weights=[0.5, 0.5], num_samples=10) == [5, 5]
    assert epoch_counts([100, 50]) == [100, 50]
    assert epoch_counts([100, 50], counts=[10, None]) == [10, 50]
    assert sum(apportion(997, [0.5, 0.3, 0.2])) == 997
    with pytest.raises(ValueError, match="weight"):
        epoch_counts([1, 2], weights=[0.5, None])
    assert epoch_counts([100, 50], passes=[3, None]) == [300, 50]
    assert epoch_counts([5, 50], passes=[2.5, 0.5]) == [13, 25]  # half up, as the fraction's rounding
    with pytest.raises(ValueError, match="count or passes"):
        epoch_counts([1, 2], counts=[4, None], passes=[2, None])


def test_passes_apply_to_the_records_the_fraction_keeps(kit, three_sources, tmp_path):
    """`passes` draws a source several times per epoch, over what the data-efficiency fraction kept: the tiny
    preset's 3 passes of LLaVA-Instruct must stay 3 passes of the kept subset in the `fraction` sweep."""
    sources, _ = three_sources
    dm = LlavaDataModule(sources[:2], **kit, seed=0, micro_batch_size=25, max_text_length=256,
                         mixture=MixtureArgs(passes={"alpha": 3}, fraction=0.1),
                         store=StoreArgs(cache_dir=str(tmp_path / "cache"), progress=False))
    assert dm.schedule()["counts"] == {"alpha": 1800, "beta": 400}
    alpha = Counter(i for s, i in _keys(dm.train_dataloader()) if s == "alpha")
    assert len(alpha) == 600 and set(alpha.values()) == {3}  # the 600 kept records, each three times


def test_epochs_walk_each_source_stream_without_gaps():
    """A subsampled source shows new samples each epoch, and an epoch holds all it asked for: a remainder that does
    not fill a whole step is trained on in a last, smaller step (issue 8), not dropped."""
    plan = MixturePlan(_infos([50, 30]), counts=[21, 9], seed=3, micro_batch_size=4, world_size=2)
    assert plan.num_samples == 30 and plan.counts == [21, 9]  # 3 steps of 8, then one of 6
    assert plan.describe()["steps"] == 4 and plan.describe()["last_step_samples"] == 6
    seen = [plan.epoch_samples(e) for e in range(3)]
    first = np.concatenate([s[s[:, 0] == 0, 1] for s in seen])
    assert len(first) == 63 and sorted(first[:50].tolist()) == list(range(50))  # all 50 before any repeats
    for s in seen:
        assert len(np.unique(s, axis=0)) == len(s)


def _per_source(plan, epochs):
    return {s: [plan.epoch_samples(e)[plan.epoch_samples(e)[:, 0] == s, 1] for e in epochs]
            for s in range(len(plan.sources))}


@pytest.mark.parametrize(("sizes", "counts", "micro", "world", "accumulate"), [
    ([1003, 500], [1003, 500], 8, 2, 1),  # the audit's case: whole sources, 1503 = 93 steps of 16 + 15
    ([997, 61, 13, 250], [900, 60, 13, 400], 5, 2, 3),  # subsampled, nearly whole, whole, upsampled
])
def test_no_sample_twice_within_an_epoch_when_epochs_straddle_passes(sizes, counts, micro, world, accumulate):
    """Epochs rarely end on a pass boundary: the straddling epoch must not take a sample from both passes, and every
    pass must still show every sample exactly once (held-back samples are deferred, not dropped)."""
    plan = MixturePlan(_infos(sizes), counts, seed=11, micro_batch_size=micro, world_size=world,
                       accumulate=accumulate)
    epochs = range(9)
    streams = _per_source(plan, epochs)
    for s, (size, c) in enumerate(zip(sizes, plan.counts, strict=True)):
        for e, got in zip(epochs, streams[s], strict=True):
            assert len(got) == c
            if c <= size:
                assert len(set(got.tolist())) == c, (s, e)
        if c < size:  # the case under test does happen
            assert any(c * e // size != (c * (e + 1) - 1) // size for e in epochs)
        walked = np.concatenate(streams[s])
        for p in range(len(walked) // size):  # each whole pass is a permutation of the source: nothing skipped
            assert sorted(walked[p * size:(p + 1) * size].tolist()) == list(range(size)), (s, p)
    # a pure function of the plan: a fresh plan asked for a late epoch first (a resumed run) agrees
    fresh = MixturePlan(_infos(sizes), counts, seed=11, micro_batch_size=micro, world_size=world,
                        accumulate=accumulate)
    for e in (7, 2, 8, 0):
        assert _same(fresh.epoch_micro_batches(e), plan.epoch_micro_batches(e))


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """The same micro-batches (of whatever sizes) in the same order."""
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_order_is_deterministic_and_the_same_on_every_rank():
    a = MixturePlan(_infos([40, 40]), [40, 40], seed=1, micro_batch_size=4, world_size=2, accumulate=2)
    b = MixturePlan(_infos([40, 40]), [40, 40], seed=1, micro_batch_size=4, world_size=2, accumulate=2)
    assert _same(a.epoch_micro_batches(0), b.epoch_micro_batches(0))
    assert not _same(a.epoch_micro_batches(0), a.epoch_micro_batches(1))
    ranks = [a.rank_micro_batches(0, r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 10
    keys = np.concatenate([b for r in ranks for b in r])
    assert len(np.unique(keys, axis=0)) == 80


def test_modality_length_grouping_makes_single_modality_steps():
    infos = _infos([300, 196], image_every=4)  # a quarter of each source is text-only; 496 = 31 whole steps of 16
    plan = MixturePlan(infos, [300, 196], seed=0, micro_batch_size=4, world_size=2, accumulate=2,
                       group_by_modality_length=True)
    batches = np.stack(plan.epoch_micro_batches(0))
    step = plan.world * plan.accumulate
    modality = np.array([[infos[s].has_image[i] for s, i in b] for b in batches])
    steps = modality.reshape(-1, step * plan.micro)
    mixed = [k for k, row in enumerate(steps) if row.min() != row.max()]
    assert mixed in ([], [len(steps) - 1])  # only the leftover step may mix, and it comes last
    keys = batches.reshape(-1, 2)
    assert len(np.unique(keys, axis=0)) == plan.num_samples == 496
    # within a step the micro-batches are length-balanced: spread far below that of random micro-batches
    lengths = np.array([[infos[s].lengths[i] for s, i in b] for b in batches]).sum(1).reshape(-1, step)
    random_plan = MixturePlan(infos, [300, 196], seed=0, micro_batch_size=4, world_size=2, accumulate=2)
    random_lengths = np.array([[infos[s].lengths[i] for s, i in b] for b in random_plan.epoch_micro_batches(0)])
    spread = np.mean(lengths.max(1) - lengths.min(1))
    random_steps = random_lengths.sum(1).reshape(-1, step)
    random_spread = np.mean(random_steps.max(1) - random_steps.min(1))
    assert spread < random_spread / 3


def test_mixture_config_mistakes_fail_clearly(kit, three_sources, tmp_path):
    sources, _ = three_sources
    with pytest.raises(ValueError, match="delta"):
        _module(kit, sources, tmp_path, weights={"alpha": 1.0, "delta": 1.0})
    with pytest.raises(ValueError, match="unknown key"):
        _module(kit, [dict(sources[0], wieght=1)], tmp_path, weights={})
    with pytest.raises(ValueError, match="an epoch of no samples"):
        MixturePlan(_infos([3]), [0], seed=0, micro_batch_size=4)
