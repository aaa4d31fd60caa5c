"""Weighted mixtures: which samples an epoch holds, in which order, on which rank, and where a resumed run goes on.

The whole order is a pure function of (seed, epoch, sources, batching), computed in the main process of every rank:

1. Each source is an endless stream of passes, each pass a permutation of the source seeded by
   (seed, crc32(name), p). Epoch e takes stream positions [e*c, (e+1)*c) where c is the source's count per epoch
   (weight x num_samples, an absolute count, or its size), so a subsampled source shows new samples every epoch
   and an upsampled one repeats a sample only after all others; adding a source does not change the others'
   orders. Since c is rarely a divisor of the size, an epoch can straddle the end of pass p and the start of pass
   p+1, and plain shuffles would then show a sample twice in that epoch. Rule (applied when c <= size, the case
   where no repeat is possible): pass p+1 starts with the first c - r samples of its shuffle that the straddling
   epoch did not already take from the end of pass p (r of them); the samples held back this way follow right
   after, in their shuffled order, so they are deferred to the next epoch, never dropped. Every pass still shows
   every sample exactly once, and no epoch holds a sample twice. A pass's order depends on the previous pass's end,
   so passes are computed in sequence from pass 0 (one permutation per pass, the last one cached); the order stays
   a pure function of the plan, which is what exact resume needs. An upsampled source (c > size) repeats samples
   within an epoch by necessity and uses the plain shuffles.
2. The counts are interleaved by a seeded permutation of the multiset of source labels: exact proportions per
   epoch, random locally.
3. The epoch is cut into optimizer steps of G = micro x world x accumulate samples; every sample of the epoch is
   trained on. When G does not divide the epoch, its last step is smaller, as LLaVA's (HF Trainer keeps the last,
   partial batch): the r = N mod G samples left are dealt into world x m micro-batches, m = ceil(r / (micro x world))
   per rank (<= accumulate), of sizes differing by at most one. Every rank thus runs the same number of micro-batches
   in every step (collectives stay matched) and the epoch takes ceil(N / G) steps; Lightning steps on the epoch's
   last micro-batch although its accumulation is incomplete, and `estimated_stepping_batches` = ceil(micro-batches
   per rank / accumulate) agrees. Only when r < world x m (fewer samples than ranks, or micro = 1 and r not a
   multiple of world) does a micro-batch get no sample: it stays empty, never a duplicate, and the Collator turns it
   into one 1-token row without loss, so that rank takes part in the step with no supervised token
   (`describe()["filler_micro_batches"]`). With `group_by_modality_length` each step is single-modality and its
   micro-batches are length-balanced (LLaVA's sampler, spec §5.4; a sample's length is its words, plus its image's
   visual tokens when they vary per image: LlavaDataModule.lengths); the leftovers of both modalities (< 2 steps) form
   a whole mixed step if they fill one, then the smaller step, last.
4. Micro-batch j of a step goes to rank j % world: ranks never share a sample and all take the same number of
   micro-batches and steps. Lightning's DistributedSampler is not involved (the loader is not a torch DataLoader).

The loader (`MixtureLoader`) iterates the micro-batches of its rank from its position, through a torch DataLoader
whose workers only load what the main process asks for, in order, so the position (micro-batches handed to the
training loop) is the whole resume state; Lightning stores `state_dict()` in the checkpoint's loop state.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from lmm.data.workers import worker_context


@dataclass
class SourceInfo:
    """What the plan needs of a source: its name, size, and per-sample modality and length proxy (per record).

    `index`: the records the plan draws from when only some are kept (`subsample`): the plan's positions
    0..size-1 stand for the records index[0..size-1]; None: all records, size = their number."""

    name: str
    size: int
    has_image: np.ndarray
    lengths: np.ndarray
    index: np.ndarray | None = None


def subsample(sources: Sequence[SourceInfo], fraction: float | None, seed: int) -> list[SourceInfo]:
    """LLaVA-1.5's data-efficiency study (spec §1.5): keep `fraction` of the records, the same share of every source
    (round(fraction x size), at least one record of a non-empty source), a random subset fixed by the seed: the first
    records of a permutation keyed by (seed, source name), so for one seed a smaller fraction keeps a subset of what a
    larger one keeps. The mixture's weights and counts then apply to what is kept. None or 1: every record."""
    if fraction is None or float(fraction) == 1.0:
        return list(sources)
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the mixture's fraction must be in (0, 1], got {fraction}")
    out = []
    for src in sources:
        keep = min(src.size, max(1, int(np.floor(fraction * src.size + 0.5)))) if src.size else 0
        picked = np.sort(_rng(seed, zlib.crc32(src.name.encode()), 0x46524143).permutation(src.size)[:keep])
        index = picked if src.index is None else np.asarray(src.index)[picked]
        out.append(SourceInfo(src.name, keep, src.has_image, src.lengths, index))
    return out


ORDER_VERSION = 2  # part of the fingerprint: a checkpoint's position from another order rule is refused


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


class MixturePlan:
    """The deterministic order of an epoch's micro-batches over all ranks (see the module docstring)."""

    def __init__(self, sources: Sequence[SourceInfo], counts: Sequence[int], seed: int, micro_batch_size: int,
                 world_size: int = 1, accumulate: int = 1, group_by_modality_length: bool = False,
                 shuffle: bool = True) -> None:
        if len(sources) != len(counts):
            raise ValueError("one count per source")
        for src, c in zip(sources, counts, strict=True):
            if c > 0 and src.size == 0:
                raise ValueError(f"source {src.name!r} has no samples but is asked for {c} per epoch")
        self.sources, self.seed, self.shuffle = list(sources), int(seed), shuffle
        self.micro, self.world, self.accumulate = int(micro_batch_size), int(world_size), int(accumulate)
        self.group = bool(group_by_modality_length)
        self.step_samples = self.micro * self.world * self.accumulate
        self.counts = [int(c) for c in counts]
        self.num_samples = sum(self.counts)
        if self.num_samples <= 0:
            raise ValueError("an epoch of no samples: give the mixture's sources positive counts or weights")
        self.full_steps, self.tail = divmod(self.num_samples, self.step_samples)  # tail: the smaller last step
        self.steps_per_epoch = self.full_steps + (self.tail > 0)
        self.tail_micro_per_rank = -(-self.tail // (self.micro * self.world))  # ceil; 0 without a tail
        self.micro_batches_per_rank = self.full_steps * self.accumulate + self.tail_micro_per_rank
        self._cache: tuple[int, list[np.ndarray]] | None = None
        self._passes: dict[int, tuple[int, np.ndarray]] = {}  # per source: the last pass computed and its order

    def tail_sizes(self) -> list[int]:
        """Sample counts of the last, smaller step's micro-batches in global order (micro-batch j on rank
        j % world): as even as possible, so ranks differ by at most one sample per micro-batch."""
        n = self.world * self.tail_micro_per_rank
        if n == 0:
            return []
        base, extra = divmod(self.tail, n)
        return [base + (j < extra) for j in range(n)]

    @property
    def last_step_samples(self) -> int:
        return self.tail or self.step_samples

    @property
    def filler_micro_batches(self) -> int:
        """Micro-batches per epoch (over all ranks) left without a sample: fewer samples in the last step than its
        micro-batches (see the module docstring)."""
        return sum(size == 0 for size in self.tail_sizes())

    def fingerprint(self) -> str:
        """A hash of everything the order depends on: a checkpoint's position only means something for the same."""
        kept = {s.name: hashlib.sha256(np.asarray(s.index, dtype=np.int64).tobytes()).hexdigest()[:16]
                for s in self.sources if s.index is not None}
        lengths = {s.name: hashlib.sha256(np.asarray(s.lengths, dtype=np.int64).tobytes()).hexdigest()[:16]
                   for s in self.sources} if self.group else {}  # the grouped order follows them
        blob = json.dumps({"sources": [(s.name, s.size) for s in self.sources], "counts": self.counts,
                           "seed": self.seed, "micro": self.micro, "world": self.world, "accumulate": self.accumulate,
                           "group": self.group, "shuffle": self.shuffle, "order": ORDER_VERSION,
                           **({"kept": kept} if kept else {}), **({"lengths": lengths} if lengths else {})})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "step_samples": self.step_samples, "steps": self.steps_per_epoch,
                "last_step_samples": self.last_step_samples, "micro_batches_per_rank": self.micro_batches_per_rank,
                "filler_micro_batches": self.filler_micro_batches,
                "counts": {s.name: c for s, c in zip(self.sources, self.counts, strict=True)},
                "group_by_modality_length": self.group, "order_rule": ORDER_VERSION,
                **({"kept_records": {s.name: [s.size, len(s.has_image)] for s in self.sources}}
                   if any(s.index is not None for s in self.sources) else {})}

    # ------------------------------------------------------------------------------------------------ order
    def stream(self, s: int, start: int, count: int) -> np.ndarray:
        """Positions [start, start + count) of source s's endless stream of passes."""
        src = self.sources[s]
        out, pos = [], start
        while pos < start + count:
            p, offset = divmod(pos, src.size)
            take = min(src.size - offset, start + count - pos)
            out.append(self.pass_order(s, p)[offset:offset + take])
            pos += take
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _shuffle(self, s: int, p: int) -> np.ndarray:
        src = self.sources[s]
        if not self.shuffle:
            return np.arange(src.size)
        return _rng(self.seed, zlib.crc32(src.name.encode()), p).permutation(src.size)

    def pass_order(self, s: int, p: int) -> np.ndarray:
        """The order of pass p over source s: its shuffle, with the straddling epoch's samples held back (see the
        module docstring)."""
        size, c = self.sources[s].size, self.counts[s]
        if p == 0 or c == 0 or c > size:
            return self._shuffle(s, p)
        q, order = self._passes.get(s, (0, None))
        if q > p or order is None:
            q, order = 0, self._shuffle(s, 0)
        while q < p:
            order = self._next_pass(s, q, order)
            q += 1
        self._passes[s] = (p, order)
        return order

    def _next_pass(self, s: int, q: int, previous: np.ndarray) -> np.ndarray:
        """Pass q + 1 from pass q's order: the epoch straddling their boundary took pass q's last r samples, so
        the first c - r of pass q + 1 are chosen among the others (possible since c <= size)."""
        size, c = self.sources[s].size, self.counts[s]
        order = self._shuffle(s, q + 1)
        r = (q + 1) * size % c
        if r == 0:  # an epoch ends exactly at the boundary
            return order
        taken = np.isin(order, previous[size - r:])
        head = np.zeros(size, dtype=bool)
        head[np.flatnonzero(~taken)[: c - r]] = True
        return np.concatenate([order[head], order[~head]])

    def epoch_samples(self, epoch: int) -> np.ndarray:
        """The epoch's samples as an [N, 2] array of (source, record index), interleaved."""
        labels = np.repeat(np.arange(len(self.sources)), self.counts)
        if self.shuffle:
            labels = labels[_rng(self.seed, 0x4D495855, epoch).permutation(len(labels))]
        keys = np.zeros((len(labels), 2), dtype=np.int64)
        keys[:, 0] = labels
        for s, c in enumerate(self.counts):
            positions = self.stream(s, epoch * c, c)
            index = self.sources[s].index
            keys[labels == s, 1] = positions if index is None else np.asarray(index)[positions]
        return keys

    def epoch_micro_batches(self, epoch: int) -> list[np.ndarray]:
        """All ranks' micro-batches of the epoch in global order, each an [n, 2] array of (source, index): n is
        `micro`, except in the smaller last step (see `tail_sizes`). Cached for one epoch."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        keys = self.epoch_samples(epoch)
        order = self._grouped(keys, epoch) if self.group else np.arange(len(keys))
        sizes = [self.micro] * (self.full_steps * self.accumulate * self.world) + self.tail_sizes()
        batches = np.split(keys[order], np.cumsum(sizes)[:-1])
        self._cache = (epoch, batches)
        return batches

    def rank_micro_batches(self, epoch: int, rank: int) -> list[np.ndarray]:
        """The micro-batches of one rank, in the order it trains on them."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} outside a world of {self.world}")
        return self.epoch_micro_batches(epoch)[rank::self.world]

    def _grouped(self, keys: np.ndarray, epoch: int) -> np.ndarray:
        """The epoch's order (indices into `keys`) in single-modality, length-balanced steps."""
        has_image = np.zeros(len(keys), dtype=bool)
        lengths = np.zeros(len(keys), dtype=np.int64)
        for s, src in enumerate(self.sources):
            mine = keys[:, 0] == s
            has_image[mine] = np.asarray(src.has_image)[keys[mine, 1]]
            lengths[mine] = np.asarray(src.lengths)[keys[mine, 1]]
        steps, leftovers = [], []
        for modality in (True, False):
            idx = np.flatnonzero(has_image == modality)
            full = len(idx) // self.step_samples * self.step_samples
            steps += list(idx[:full].reshape(-1, self.step_samples))
            leftovers.append(idx[full:])
        order = list(_rng(self.seed, 0x47525550, epoch).permutation(len(steps))) if self.shuffle else \
            list(range(len(steps)))
        steps = [steps[k] for k in order]
        # the leftovers of both modalities (< 2 steps), last as in LLaVA: a whole mixed step if they fill one, then
        # the epoch's smaller step
        mixed = np.sort(np.concatenate(leftovers))
        if len(mixed) >= self.step_samples:
            steps.append(mixed[:self.step_samples])
            mixed = mixed[self.step_samples:]
        whole = [self.micro] * (self.world * self.accumulate)
        chunks = [self._balance(step, lengths, whole) for step in steps]
        if len(mixed):
            chunks.append(self._balance(mixed, lengths, self.tail_sizes()))
        return np.concatenate(chunks)

    @staticmethod
    def _balance(step: np.ndarray, lengths: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
        """Deal one step's samples, longest first, into micro-batches of the given counts and similar total length."""
        by_length = step[np.argsort(-lengths[step], kind="stable")]
        heap = [(0, c) for c, size in enumerate(sizes) if size > 0]
        members: list[list[int]] = [[] for _ in sizes]
        for i in by_length:
            total, c = heapq.heappop(heap)
            members[c].append(int(i))
            if len(members[c]) < sizes[c]:
                heapq.heappush(heap, (total + int(lengths[i]), c))
        return np.array([i for m in members for i in m], dtype=np.int64)


class MixtureSampler:
    """Batch sampler of one rank: the plan's micro-batches for the current epoch, from a position on."""

    def __init__(self, plan: MixturePlan, rank: int = 0) -> None:
        self.plan, self.rank = plan, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch (through the loader's `batch_sampler`)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.plan.micro_batches_per_rank

    def batches(self, start: int = 0) -> Iterator[list[tuple[int, int]]]:
        for b in self.plan.rank_micro_batches(self.epoch, self.rank)[start:]:
            yield [(int(s), int(i)) for s, i in b]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.batches()


class _FromPosition:
    """The batch sampler handed to torch's DataLoader: the rank's micro-batches from `start` on."""

    def __init__(self, sampler: MixtureSampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __len__(self) -> int:
        return len(self.sampler) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.sampler.batches(self.start)


class MixtureLoader:
    """An exactly resumable loader for one rank: (epoch, micro-batches handed out) is its whole state.

    Workers (a fresh torch DataLoader per pass, so a resumed pass starts at its position) only fetch what the main
    process's batch sampler lists, and torch returns their batches in that order. Lightning calls `state_dict()`
    when it saves a checkpoint and `load_state_dict()` before the first batch of a resumed run; since the loader has
    a length, Lightning does not fetch ahead, so the position counts exactly the batches the loop consumed.
    """

    def __init__(self, dataset: Dataset, sampler: MixtureSampler, collate_fn: Callable, num_workers: int = 0,
                 prefetch_factor: int | None = None, pin_memory: bool = False, timeout: float = 0,
                 worker_init_fn: Callable | None = None) -> None:
        self.dataset, self.sampler, self.collate_fn = dataset, sampler, collate_fn
        self.num_workers, self.prefetch_factor, self.pin_memory = num_workers, prefetch_factor, pin_memory
        self.timeout, self.worker_init_fn = timeout, worker_init_fn
        self.position = 0
        self._epoch_of_position = 0

    @property
    def batch_sampler(self) -> MixtureSampler:
        """Lightning's `_set_sampler_epoch` finds `set_epoch` here."""
        return self.sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def _sync_epoch(self) -> None:
        """A new epoch (set by Lightning, or the previous pass ran to its end) starts at position 0."""
        if self.sampler.epoch != self._epoch_of_position:
            self.position, self._epoch_of_position = 0, self.sampler.epoch
        elif self.position >= len(self):
            self.sampler.set_epoch(self.sampler.epoch + 1)
            self.position, self._epoch_of_position = 0, self.sampler.epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._sync_epoch()
        start = self.position
        if start >= len(self):
            return
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs = {"prefetch_factor": self.prefetch_factor, "worker_init_fn": self.worker_init_fn,
                      "timeout": self.timeout, "multiprocessing_context": worker_context(self.num_workers)}
        loader = DataLoader(self.dataset, batch_sampler=_FromPosition(self.sampler, start),
                            collate_fn=self.collate_fn, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            **kwargs)
        for batch in loader:
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch_of_position, "position": self.position,
                "fingerprint": self.sampler.plan.fingerprint(), "plan": self.sampler.plan.describe()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self.sampler.plan.fingerprint():
            raise ValueError(
                "the checkpoint's data position belongs to a different mixture or batching (sources, counts, seed, "
                f"micro-batch, world size, accumulation or lmm's order rule changed): saved {state.get('plan')}, now "
                f"{self.sampler.plan.describe()}. Exact resume needs the same; start the stage afresh or restore "
                "the configuration.")
        self.sampler.set_epoch(int(state["epoch"]))
        self._epoch_of_position, self.position = int(state["epoch"]), int(state["position"])
