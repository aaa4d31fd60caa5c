"""W&B, only when online: the comparison and its flipped questions as wandb.Tables in a run of their own, and
reading runs back from a W&B project. Offline (the default without an API key) every function here returns at once
with a message: a comparison must never wait on a network it does not have.

Not testable on these machines (no network): kept small and guarded; every W&B failure becomes a warning.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import yaml

from lmm.compare.flips import FlipSet
from lmm.compare.render import rows
from lmm.compare.table import Comparison

TIMEOUT = 30  # seconds, every W&B network call
PER_QUESTION_NAME = "per_question.jsonl"
# class name in config eval.benchmarks.<name>._target_ -> scores.json "kind"
KIND_OF_CLASS = {"GQA": "gqa", "MME": "mme", "MMVet": "mmvet", "POPE": "pope", "VQAv2": "vqav2", "VizWiz": "vizwiz",
                 "TextVQA": "textvqa", "ScienceQA": "scienceqa", "SEED": "seed", "MMBench": "mmbench",
                 "LLaVABench": "llava_bench", "RefCOCO": "refcoco"}


def wandb_mode() -> str:
    """What lmm's runs do: WANDB_MODE when set, else online only with WANDB_API_KEY in the environment."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def log_comparison(c: Comparison, sets: list[FlipSet], project: str, out_dir: Path) -> str:
    """Log the table and one flips table per rung pair to a new W&B run (job_type=compare); returns what happened."""
    if wandb_mode() != "online":
        return "W&B: offline, skipped (the HTML page holds the flipped questions)"
    try:
        import wandb

        entity, _, name = project.rpartition("/")
        run = wandb.init(project=name, entity=entity or None, job_type="compare", dir=str(out_dir),
                         settings=wandb.Settings(init_timeout=TIMEOUT))
        header, body = rows(c, costs=True)
        data: dict[str, Any] = {"compare/table": wandb.Table(columns=header, data=body)}
        columns = ["benchmark", "question_id", "image", "question", "reference", "before", "after", "fixed"]
        for s in sets:
            table = wandb.Table(columns=columns)
            for bench, flips in s.flips.items():
                for f in flips:
                    image = wandb.Image(f.image) if f.image and Path(f.image).is_file() else None
                    table.add_data(bench, str(f.question_id), image, f.question, f.reference, f.answer_before,
                                   f.answer_after, f.fixed)
            data[f"compare/flips/{s.before}->{s.after}"] = table
        run.log(data)
        url = run.url
        run.finish()
        return f"W&B: {url}"
    except Exception as e:  # noqa: BLE001 - W&B trouble must not lose the local outputs
        warnings.warn(f"W&B logging failed: {e}", stacklevel=2)
        return f"W&B: failed ({e})"


def pull_project(path: str, dest: Path) -> list[Path]:
    """Mirror the runs of W&B project `entity/project` as run folders under dest (config.yaml, results.json,
    eval/<benchmark>/scores.json from the summary's eval/<benchmark>, and per_question.jsonl where a run logged it in
    an artifact). Returns the folders; [] offline."""
    if wandb_mode() != "online":
        warnings.warn("--wandb-project needs W&B online (WANDB_API_KEY or WANDB_MODE=online): nothing pulled",
                      stacklevel=2)
        return []
    import wandb

    folders = []
    try:
        api = wandb.Api(timeout=TIMEOUT)
        for run in api.runs(path):
            folder = dest / run.id
            (folder / "eval").mkdir(parents=True, exist_ok=True)
            config = {k: v for k, v in run.config.items() if not k.startswith("_")}
            (folder / "config.yaml").write_text(yaml.safe_dump(config))
            (folder / "results.json").write_text(json.dumps({"run_id": run.name, "stages": {}}))
            benches = (config.get("eval") or {}).get("benchmarks") or {}
            summary = dict(run.summary)
            for name, spec in benches.items():
                kind = KIND_OF_CLASS.get(str((spec or {}).get("_target_", "")).rsplit(".", 1)[-1], name)
                bdir = folder / "eval" / name
                bdir.mkdir(exist_ok=True)
                (bdir / "scores.json").write_text(json.dumps({"kind": kind, "headline": summary.get(f"eval/{name}")}))
            for artifact in run.logged_artifacts():
                for entry in artifact.files():
                    if entry.name.endswith(PER_QUESTION_NAME):
                        bench = Path(entry.name).parent.name
                        if (folder / "eval" / bench).is_dir():
                            entry.download(root=str(folder / "eval" / bench), replace=True)
                            downloaded = folder / "eval" / bench / entry.name
                            downloaded.replace(folder / "eval" / bench / PER_QUESTION_NAME)
            folders.append(folder)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"reading W&B project {path} failed: {e}", stacklevel=2)
    return folders
