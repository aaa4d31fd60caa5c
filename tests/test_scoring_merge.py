"""Two-rank merges: every metric gives the same compute() on one instance as on two instances whose states are
reduced with the metric's own reductions, both through `merge_state` and through torchmetrics' sync path (the
all-gather is emulated in-process, so no process group is needed)."""

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from torch import Tensor
from torchmetrics import Metric

from lmm.eval.scoring import (
    GQAAccuracy,
    LLaVABenchScore,
    MMBenchCircular,
    MMEMetric,
    MMVetScore,
    POPEMetric,
    ScienceQAAccuracy,
    SEEDAccuracy,
    VQAAccuracy,
)

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")


def _items(n: int, make: Callable[[random.Random, int], tuple]) -> list[tuple]:
    rng = random.Random(n)
    return [make(rng, i) for i in range(n)]


def _vqa(rng: random.Random, i: int) -> tuple:
    words = ["2", "two", "3", "red", "Red.", "the cat"]
    return rng.choice(words), [rng.choice(words) for _ in range(10)]


def _mme(rng: random.Random, i: int) -> tuple:
    subtask = ["existence", "OCR", "code_reasoning"][i // 2 % 3]
    return rng.choice(["Yes", "No", "maybe"]), ["Yes", "No"][i % 2], subtask, f"{subtask}/{i // 2}.png"


MMB_OPTIONS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


def _mmbench(rng: random.Random, i: int) -> tuple:
    gold = "ABCD"[i % 4]
    pred = gold if rng.random() < 0.8 else rng.choice(["A", "B", "a dog", "no idea"])
    return pred, gold, (i % 4) * 1_000_000 + i // 4, MMB_OPTIONS, ["ocr", "counting"][i // 4 % 2]


def _transpose(items: Sequence[tuple]) -> list[list[Any]]:
    return [list(column) for column in zip(*items, strict=True)] if items else []


CASES: dict[str, tuple[Callable[[], Metric], list[tuple]]] = {
    "vqa": (VQAAccuracy, _items(40, _vqa)),
    "vqa_official": (lambda: VQAAccuracy(official=True), _items(40, _vqa)),
    "gqa": (GQAAccuracy, _items(30, lambda r, i: (r.choice(["Yes.", "no", "left"]), r.choice(["yes", "left"])))),
    "pope": (POPEMetric, _items(50, lambda r, i: (r.choice(["Yes", "No", "not sure", ""]), r.choice(["yes", "no"])))),
    "pope_splits": (lambda: POPEMetric(categories=["adversarial", "popular", "random"]),
                    _items(60, lambda r, i: (r.choice(["Yes", "No"]), r.choice(["yes", "no"]),
                                             r.choice(["adversarial", "random"])))),
    "mme": (MMEMetric, _items(48, _mme)),
    "sqa": (ScienceQAAccuracy, _items(40, lambda r, i: (r.choice(["A", "B", "C. x", "The answer is B.", "?"]),
                                                        r.randrange(3), 3, r.random() < 0.5))),
    "mmbench": (lambda: MMBenchCircular(categories=["ocr", "counting"]), _items(64, _mmbench)),
    "mmbench_l2": (lambda: MMBenchCircular(categories=["ocr", "counting"], l2_categories=["perception", "logic"]),
                   _items(64, lambda r, i: (*_mmbench(r, i), ["perception", "logic"][i // 4 % 3 // 2]))),
    "seed": (SEEDAccuracy, _items(50, lambda r, i: (r.choice("ABCD"), r.choice("ABCD"), r.randint(1, 12)))),
    "mmvet": (MMVetScore, _items(20, lambda r, i: (r.choice(["x = -1", "a red car", "2"]), "q",
                                                    r.choice(["-1 <AND> -5", "red <OR> blue", "2"]),
                                                    r.sample(["rec", "ocr", "math"], r.randint(1, 2))))),
    "mmvet_runs": (lambda: MMVetScore(runs=2), _items(20, lambda r, i: (r.choice(["x = -1", "a red car", "2"]), "q",
                                                                         r.choice(["-1 <AND> -5", "2"]),
                                                                         r.sample(["rec", "ocr", "math"], 2)))),
    "llava_bench": (LLaVABenchScore, _items(20, lambda r, i: (r.choice(["a red car on a road", "a dog"]), "q",
                                                              "a red car parked on the road", ["a car"],
                                                              r.choice(["conv", "detail", "complex"])))),
}


def _feed(metric: Metric, items: Sequence[tuple], batch: int = 7) -> Metric:
    for start in range(0, len(items), batch):
        metric.update(*_transpose(items[start:start + batch]))
    return metric


def _split(items: list[tuple], how: str) -> tuple[list[tuple], list[tuple]]:
    if how == "interleaved":  # separates every MME image pair and every MMBench circular group
        return items[::2], items[1::2]
    if how == "contiguous":
        return items[: len(items) // 3], items[len(items) // 3:]
    return items, []  # "empty": rank 1 saw no data


def _emulated_sync_compute(ranks: list[Metric]) -> list[dict[str, float]]:
    """compute() on every rank with an all-gather that returns every rank's state tensor, in call order."""
    sent: list[list[Tensor]] = []
    for metric in ranks:  # record what each rank would send
        calls: list[Tensor] = []
        metric.sync(dist_sync_fn=lambda t, group=None, calls=calls: calls.append(t.clone()) or [t],
                    distributed_available=lambda: True)
        metric.unsync()
        sent.append(calls)
    results = []
    for metric in ranks:
        call_index = iter(range(len(sent[0])))

        def all_gather(tensor: Tensor, group: Any = None, call_index=call_index) -> list[Tensor]:
            k = next(call_index)
            assert all(calls[k].dtype == tensor.dtype for calls in sent)  # real gathers need one dtype
            return [calls[k] for calls in sent]

        metric.dist_sync_fn, metric.distributed_available_fn = all_gather, lambda: True
        results.append(metric.compute())
    return results


@pytest.mark.parametrize("how", ["interleaved", "contiguous", "empty"])
@pytest.mark.parametrize("name", list(CASES))
def test_two_rank_merge_equals_single_instance(name: str, how: str) -> None:
    make, items = CASES[name]
    expected = _feed(make(), items).compute()
    assert expected  # the data exercise the metric
    first, second = _split(items, how)

    merged = _feed(make(), first)
    merged.merge_state(_feed(make(), second))
    assert merged.compute() == pytest.approx(expected)

    for result in _emulated_sync_compute([_feed(make(), first), _feed(make(), second)]):
        assert result == pytest.approx(expected)
