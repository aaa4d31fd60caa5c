"""The DataModule's settings from conf/data, in groups by what they decide (as litgpt's args.py groups a recipe's).

Each group is a dataclass that Hydra instantiates (`_target_: lmm.data.args.LoaderArgs`), so a misspelled key fails
when the stage is built instead of being ignored, and each knob is written down once, with its default and why. The
values that belong to the model, the stage or the run (template, tokenizer, image transform, context length, micro
batch, seed, run folder) are not here: the pipeline hands them to the DataModule itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from lmm.config import to_plain
from lmm.constants import ON_ERROR, VERIFY_IMAGES

T = TypeVar("T")


@dataclass
class MixtureArgs:
    """How much of each source an epoch holds (default: all of each, once), and whether its order is shuffled."""

    weights: dict[str, float] | None = None  # source name -> share of num_samples (overrides the sources' `weight`,
    #                                            and their `count` and `passes`: a weighed mixture is all weights)
    counts: dict[str, int] | None = None  # source name -> samples per epoch (overrides the sources' `count`)
    passes: dict[str, float] | None = None  # source name -> passes over its records per epoch (the sources' `passes`)
    num_samples: int | None = None  # the epoch's size with weights (default: the sources' total size)
    shuffle: bool = True
    fraction: float | None = None  # keep this share of every source's records, a subset fixed by the seed (the
    #                                data-efficiency study, lmm.data.mixture.subsample); None: all records

    def __post_init__(self) -> None:
        self.weights = dict(to_plain(self.weights) or {})
        self.counts = dict(to_plain(self.counts) or {})
        self.passes = dict(to_plain(self.passes) or {})
        if self.fraction is not None and not 0.0 < float(self.fraction) <= 1.0:
            raise ValueError(f"mixture.fraction must be in (0, 1] (or null: all records), got {self.fraction}")


@dataclass
class LoaderArgs:
    """How micro-batches are formed and served to the training loop."""

    num_workers: int = 0  # dataloader worker processes (each reads, decodes and tokenises samples)
    prefetch_factor: int = 2  # micro-batches each worker loads ahead
    group_by_modality_length: bool = False  # LLaVA's sampler: single-modality, length-balanced optimizer steps
    pack: bool = False  # several samples per row up to the context length (a flat, unpadded batch)


@dataclass
class PolicyArgs:
    """What bad input does: stop the run naming file, record and reason, or be counted and skipped."""

    on_error: str = "error"  # error | skip (a skipped record is written to rejects.jsonl with its reason)
    truncate: bool = False  # a sample longer than the context: cut (counted as truncated, as LLaVA does) or bad
    max_reject_fraction: float | None = 0.05  # lenient runs: a larger share of bad records is a broken source (a
    #                                           wrong image root skips every image), not noise; None: no check
    verify_images: str = "header"  # the conversion's image check: none | header (open it) | decode (fully)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.verify_images not in VERIFY_IMAGES:
            raise ValueError(f"verify_images must be one of {VERIFY_IMAGES}, got {self.verify_images!r}")


@dataclass
class StoreArgs:
    """Where sources are converted to (their stores) and how; converted once, shared by every run."""

    cache_dir: str = ".cache/lmm/stores"  # stores converted from records, and carved files, keyed by their input
    remote_cache_dir: str | None = None  # litdata's local copy of stores read from a URL (default: a temp folder)
    chunk_bytes: int = 64 << 20  # litdata chunk size of new stores
    progress: bool = True  # progress bars while carving and converting


def coerce(cls: type[T], value: T | Mapping[str, Any] | None) -> T:
    """An instance of the dataclass `cls` from itself, a mapping of its fields (a plain dict, or a config node
    without `_target_`, e.g. a command-line override), or None (its defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):  # OmegaConf's DictConfig too
        return cls(**to_plain(value))
    raise TypeError(f"expected {cls.__name__} or a mapping of its fields, got {type(value).__name__}")
