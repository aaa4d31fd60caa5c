"""The paired bootstrap: every benchmark's headline number recomputed on resamples of its questions, the same
resample for every run, and (with several seeds) on resamples of each rung's seeds.

Why paired: two rungs answer the same questions, so most of the question-sampling noise is shared; resampling the
questions once for both keeps that pairing and gives a much tighter, honest interval for the change than two
independent intervals would. Why recompute the metric on the resample (not just average per-question scores): MME
(acc + acc+ per subtask, summed) and POPE (F1 per split, averaged) are not means of per-question numbers.

The resampling unit and strata follow each benchmark's rule: questions (accuracy-type, MM-Vet's [0,1] grades),
images within subtasks (MME: acc+ needs both questions of an image), base questions (MMBench's circular groups),
questions within splits (POPE). The draws, for a fixed `seed`:

    rng = numpy.random.default_rng(seed)                  # one generator per benchmark
    for each stratum (in sorted order): idx = rng.integers(0, n_units, size=(B, n_units))
    for each rung (in table order):     seeds = rng.integers(0, n_seeds, size=(B, n_seeds))

and a rung's value on resample b is the mean over its resampled seeds of each seed's metric on question resample b.
Intervals are the 2.5th and 97.5th percentiles (numpy's linear interpolation).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
LEVEL = 0.95


@dataclass
class Design:
    """A benchmark's resampling layout: the units of each stratum, in a fixed order shared by every run."""

    strata: list[tuple[Hashable, list[Hashable]]]

    @property
    def signature(self) -> tuple:
        return tuple((s, tuple(units)) for s, units in self.strata)


@dataclass
class Statistic:
    """How to turn one run's per-question records into per-unit sufficient statistics (additive columns) and the
    per-stratum sums of those back into the headline number."""

    name: str
    layout: Callable[[list[dict[str, Any]]], dict[Hashable, dict[Hashable, list[dict[str, Any]]]]]
    unit_stats: Callable[[list[dict[str, Any]]], list[float]]
    value: Callable[[np.ndarray], np.ndarray]  # sums (..., n_strata, k) -> (...)


def _scored(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("score") is not None and r.get("in_headline", True)]


def _by(records: list[dict[str, Any]], stratum: str | None, unit: str) -> dict:
    out: dict[Hashable, dict[Hashable, list[dict[str, Any]]]] = {}
    for r in _scored(records):
        out.setdefault(r[stratum] if stratum else "all", {}).setdefault(r[unit], []).append(r)
    return out


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)


def _mean_value(sums: np.ndarray) -> np.ndarray:
    return 100.0 * _ratio(sums[..., 0, 0], sums[..., 0, 1])


def _mme_value(sums: np.ndarray) -> np.ndarray:
    # columns: correct questions, questions, fully right images, images; subtask score = 100 acc + 100 acc+
    return (100.0 * _ratio(sums[..., 0], sums[..., 1]) + 100.0 * _ratio(sums[..., 2], sums[..., 3])).sum(-1)


def _pope_stats(units: list[dict[str, Any]]) -> list[float]:
    (r,) = units
    yes, positive = r["pred"] == "yes", r["label"] != "no"
    return [float(yes and positive), float(yes and not positive), float(not yes and not positive),
            float(not yes and positive)]


def _pope_value(sums: np.ndarray) -> np.ndarray:
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 3]
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return 100.0 * _ratio(2 * precision * recall, precision + recall).mean(-1)


STATISTICS: dict[str, Statistic] = {
    # accuracy-type and MM-Vet: 100 x mean per-question score; the unit is the question (its uid)
    "mean": Statistic("mean of per-question scores x100", lambda rs: _by(rs, None, "uid"),
                      lambda us: [float(us[0]["score"]), 1.0], _mean_value),
    "mme": Statistic("MME perception: sum over subtasks of 100 acc + 100 acc+, images resampled within subtasks",
                     lambda rs: _by(rs, "subtask", "image_id"),
                     lambda us: [sum(float(u["score"] >= 0.5) for u in us), float(len(us)),
                                 float(all(u["score"] >= 0.5 for u in us)), 1.0], _mme_value),
    "pope": Statistic("POPE: mean over splits of the F1 of resampled answers, questions resampled within splits",
                      lambda rs: _by(rs, "split", "uid"), _pope_stats, _pope_value),
    "mmbench": Statistic("MMBench circular: base questions resampled, right only if every rotation is",
                         lambda rs: _by(rs, None, "group"),
                         lambda us: [float(all(u["score"] >= 0.5 for u in us)), 1.0], _mean_value),
}
KIND_STATISTIC = {"mme": "mme", "pope": "pope", "mmbench": "mmbench", "llava_bench": None}  # others: "mean"


def statistic_for(kind: str) -> Statistic | None:
    """None: no per-question form of this benchmark's metric (LLaVA-Bench's ratio of judge means)."""
    name = KIND_STATISTIC.get(kind, "mean")
    return STATISTICS[name] if name else None


def unit_table(stat: Statistic, records: list[dict[str, Any]]) -> tuple[Design, np.ndarray]:
    """(design, per-unit sufficient statistics in design order) of one run's records."""
    layout = stat.layout(records)
    strata = [(s, list(layout[s])) for s in sorted(layout, key=str)]
    rows = [stat.unit_stats(layout[s][u]) for s, units in strata for u in units]
    return Design(strata), np.asarray(rows, dtype=float).reshape(len(rows), -1)


def point_value(stat: Statistic, design: Design, table: np.ndarray) -> float:
    """The metric on the full sample (every unit once): must equal the run's recorded headline."""
    sums, start = [], 0
    for _, units in design.strata:
        sums.append(table[start:start + len(units)].sum(0))
        start += len(units)
    return float(stat.value(np.stack(sums)[None])[0])


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each unit appears in each resample: (B, n) counts of the (B, n) drawn indices."""
    b = idx.shape[0]
    return np.bincount((idx + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(float)


def question_resamples(rng: np.random.Generator, design: Design, resamples: int) -> list[np.ndarray]:
    """One (B, n_units) count matrix per stratum, drawn in stratum order."""
    return [_counts(rng.integers(0, len(units), size=(resamples, len(units))), len(units))
            for _, units in design.strata]


def resampled_values(stat: Statistic, design: Design, table: np.ndarray, counts: list[np.ndarray]) -> np.ndarray:
    """The metric of one run on every question resample: (B,)."""
    sums, start = [], 0
    for c, (_, units) in zip(counts, design.strata, strict=True):
        sums.append(c @ table[start:start + len(units)])
        start += len(units)
    return stat.value(np.stack(sums, axis=1))


def bootstrap_rungs(stat: Statistic, tables: list[list[tuple[Design, np.ndarray] | None]], resamples: int,
                    seed: int) -> tuple[list[np.ndarray | None], str | None]:
    """Each rung's value on B paired resamples (questions shared by all runs, then seeds within each rung).

    `tables[i]` holds the unit tables of rung i's seeds (None: a seed without per-question records). A rung gets
    None when any of its seeds lacks records or answers other questions than the first run's design. Returns the
    (B,) arrays and a note on what was left out."""
    designs = [t[0] for rung in tables for t in rung if t is not None]
    if not designs:
        return [None] * len(tables), "no per-question records"
    design = designs[0]
    rng = np.random.default_rng(seed)
    counts = question_resamples(rng, design, resamples)
    out: list[np.ndarray | None] = []
    note = None
    for rung in tables:
        seed_idx = rng.integers(0, len(rung), size=(resamples, len(rung)))
        if any(t is None for t in rung):
            out.append(None)
            note = "some runs have no per_question.jsonl"
            continue
        if any(t[0].signature != design.signature for t in rung):
            out.append(None)
            note = "runs answered different question sets: not paired"
            continue
        values = np.stack([resampled_values(stat, design, t[1], counts) for t in rung])  # (seeds, B)
        out.append(values[seed_idx, np.arange(resamples)[:, None]].mean(axis=1))
    return out, note


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap samples."""
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return float(lo), float(hi)
