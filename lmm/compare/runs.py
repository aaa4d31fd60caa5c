"""Loading run folders into rungs: which rung and seed a run is, its benchmarks' headline numbers, per-question
records and training costs, and the ladder order the table shows them in.

Everything is read from what a run folder already holds (config.yaml, results.json, eval/<benchmark>/scores.json and
per_question.jsonl, .hydra/hydra.yaml), so a comparison never needs the models, the data or the config code.
"""

from __future__ import annotations

import glob
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmm.eval.files import PER_QUESTION_FILE

# Where a composed config.yaml names its rung: `ablation.name` (str), `ablation.row` (int; null for an arm beside the
# ladder) and, for an arm, optionally `ablation.base` (the rung it changes). One constant, to align with conf/ablation.
ABLATION_KEY = "ablation"
# The paper's ladder (spec llava15.md §1.1, rows 0-9) and the arms beside it: the order when a config has no row.
LADDER = ("baseline", "vqav2", "format_prompt", "mlp", "okvqa_ocr", "region", "res336", "gqa", "sharegpt", "llm13b")
ARMS = ("qformer_lite", "loss_llava", "hd", "hd_no_global", "anyres")


@dataclass
class BenchResult:
    """One benchmark of one run: its headline number (the published scale) and where its per-question file is."""

    name: str
    kind: str
    headline: float | None
    metric: str | None
    folder: Path
    _records: list[dict[str, Any]] | None = None

    @property
    def has_records(self) -> bool:
        return self._records is not None or (self.folder / PER_QUESTION_FILE).is_file()

    def records(self) -> list[dict[str, Any]] | None:
        """The per-question records (read once), None when the run predates per_question.jsonl."""
        if self._records is None and (self.folder / PER_QUESTION_FILE).is_file():
            with open(self.folder / PER_QUESTION_FILE, encoding="utf-8") as f:
                self._records = [json.loads(line) for line in f if line.strip()]
        return self._records


@dataclass
class Run:
    """One run folder: the rung and seed it is, its benchmarks and its training costs."""

    run_id: str
    folder: Path
    rung: str
    row: int | None
    seed: int | None
    base: str | None = None  # an arm's reference rung (ablation.base)
    preset: str | None = None
    benchmarks: dict[str, BenchResult] = field(default_factory=dict)
    costs: dict[str, float | None] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rung:
    """All seeds of one rung, in seed order."""

    name: str
    row: int | None
    base: str | None
    runs: list[Run]

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    @property
    def is_arm(self) -> bool:
        """Beside the ladder (no row): a known arm, or any rung whose config names the rung it changes."""
        return self.row is None and (self.name in ARMS or self.base is not None)


def select(cfg: Any, dotted: str, default: Any = None) -> Any:
    """cfg["a"]["b"] for "a.b", or default where any key is missing."""
    node = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "results.json").is_file() or (path / "eval").is_dir())


def find_run_folders(patterns: list[str]) -> list[Path]:
    """Run folders named by paths or globs; a folder that is not a run (e.g. a sweep's output folder) stands for the
    runs directly inside it. Each folder once, in the order given."""
    out: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            warnings.warn(f"no run folder matches {pattern!r}", stacklevel=2)
        for m in matches:
            p = Path(m)
            found = [p] if is_run_folder(p) else sorted(c for c in p.iterdir() if is_run_folder(c)) if p.is_dir() \
                else []
            if not found:
                warnings.warn(f"{p} is not a run folder (no results.json or eval/)", stacklevel=2)
            out += [f for f in found if f.resolve() not in {o.resolve() for o in out}]
    return out


def _costs(results: dict[str, Any]) -> dict[str, float | None]:
    """Training costs of a run from results.json's stage summaries (None where a run does not record one)."""
    stages = results.get("stages") or {}
    last = stages.get("instruct") or stages.get("align") or {}

    def peak(stage: dict[str, Any]) -> float | None:
        keys = [k for k in stage if "peak" in k.lower() and "mem" in k.lower()]
        return float(stage[keys[0]]) if keys and isinstance(stage[keys[0]], int | float) else None

    # this run's own training: an align stage it reused was trained (and timed) by an earlier run
    seconds = [s.get("seconds") for s in stages.values()
               if isinstance(s.get("seconds"), int | float) and not s.get("reused")]
    samples_per_sec = last.get("samples_per_sec")
    if samples_per_sec is None and last.get("seconds"):
        samples = select(last, "trained.samples")
        samples_per_sec = samples / last["seconds"] if isinstance(samples, int | float) else None
    tokens = select(last, "trained.visual_tokens_per_image")  # tiled input: the mean over the images trained on
    if tokens is None:
        tokens = last.get("model/visual_tokens_per_image", select(results, "eval.model.visual_tokens_per_image"))
    peaks = [p for p in (peak(s) for s in stages.values()) if p is not None]
    return {"trainable_params": last.get("params/trainable"), "visual_tokens": tokens,
            "train_seconds": sum(seconds) if seconds else None, "samples_per_sec": samples_per_sec,
            "peak_memory_gb": max(peaks) if peaks else None}


def load_run(folder: Path) -> Run:
    """Read one run folder; the rung comes from config `ablation.name` (else the run id), the seed from `seed`."""
    folder = Path(folder)
    config = _read_yaml(folder / "config.yaml")
    results = _read_json(folder / "results.json")
    run_id = str(results.get("run_id") or config.get("run_id") or folder.name)
    rung = select(config, f"{ABLATION_KEY}.name")
    row = select(config, f"{ABLATION_KEY}.row")
    preset = select(_read_yaml(folder / ".hydra" / "hydra.yaml"), "hydra.runtime.choices.preset")
    run = Run(run_id=run_id, folder=folder, rung=str(rung) if rung is not None else run_id,
              row=int(row) if isinstance(row, int | float) and not isinstance(row, bool) else None,
              seed=config.get("seed"), base=select(config, f"{ABLATION_KEY}.base"), preset=preset,
              costs=_costs(results), config=config)
    eval_dir = folder / "eval"
    for scores_file in sorted(eval_dir.glob("*/scores.json")) if eval_dir.is_dir() else []:
        scores = _read_json(scores_file)
        name = scores_file.parent.name
        run.benchmarks[name] = BenchResult(name=name, kind=str(scores.get("kind", name)),
                                           headline=scores.get("headline"), metric=scores.get("headline_metric"),
                                           folder=scores_file.parent)
    return run


def _order_key(rung: Rung, first_seen: int) -> tuple:
    """Ladder rows first (by row), then arms, then anything else in the order the runs were given."""
    if rung.row is not None:
        return (0, rung.row, 0, first_seen)
    if rung.name in LADDER:
        return (0, LADDER.index(rung.name), 1, first_seen)
    if rung.name in ARMS:
        return (1, ARMS.index(rung.name), 0, first_seen)
    return (2, 0, 0, first_seen)


def group_rungs(runs: list[Run]) -> list[Rung]:
    """Runs of the same rung (its seeds) together, rungs in ladder order."""
    by_name: dict[str, list[Run]] = {}
    for run in runs:
        by_name.setdefault(run.rung, []).append(run)
    rungs = []
    for name, members in by_name.items():
        members.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, r.run_id))
        seeds = [r.seed for r in members]
        if len(set(seeds)) < len(seeds):
            warnings.warn(f"rung {name!r}: several runs with the same seed ({seeds}); each counts as one sample",
                          stacklevel=2)
        rows = {r.row for r in members}
        if len(rows) > 1:
            warnings.warn(f"rung {name!r}: runs disagree on ablation.row ({sorted(map(str, rows))})", stacklevel=2)
        rungs.append(Rung(name=name, row=members[0].row, base=members[0].base, runs=members))
    first = {name: i for i, name in enumerate(by_name)}
    return sorted(rungs, key=lambda r: _order_key(r, first[r.name]))


def load_rungs(patterns: list[str]) -> list[Rung]:
    return group_rungs([load_run(f) for f in find_run_folders(patterns)])
