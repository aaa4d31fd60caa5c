"""`python run.py task=eval checkpoint=<saved model>`: answer files, results.json, W&B table in the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from lmm.model.io import save_lmm_model
from tests.conftest import SMALL_WORLD, world_root
from tests.test_eval_inference import world_model
from tests.test_eval_runner import _bare_encoder, _model_on

ROOT = Path(__file__).resolve().parents[1]
# the session's tiny world (tests/conftest.py), so nothing is rebuilt
WORLD = [SMALL_WORLD]


def _run_eval(tmp_path: Path, tiny_world: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LMM_OUTPUT_DIR=str(tmp_path / "out"), LMM_CACHE_DIR=str(tiny_world), WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run([sys.executable, "run.py", "task=eval", "data.num_workers=0", *WORLD, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_task_eval_on_a_saved_model(tiny_world, tmp_path):
    world = world_root(tiny_world)
    model, tokenizer, _ = world_model(world, seed=2)
    config = OmegaConf.create({"model": {"encoder": {"pretrained": str(world / "clip-tiny-res224")}}})
    save_lmm_model(model.state_dict(), model, tmp_path / "runs" / "saved" / "instruct", tokenizer=tokenizer,
                   config=config)
    _run_eval(tmp_path, tiny_world, f"checkpoint={tmp_path / 'runs' / 'saved'}", "run_id=ev",
              "~eval.benchmarks.tiny_llava_bench", "~eval.benchmarks.tiny_mmbench_cn")
    run = tmp_path / "out" / "runs" / "ev"
    results = json.loads((run / "results.json").read_text())
    benches = results["eval"]["benchmarks"]
    assert len(benches) == 11 and "tiny_mmbench_cn" not in benches  # the tiny suite of 13, less two
    for name, entry in benches.items():
        assert (run / "eval" / name / "answers.jsonl").exists()
        assert entry["num_scored"] == entry["num_questions"] > 0
        assert json.loads((run / "eval" / name / "answers.jsonl").read_text().splitlines()[0])["model_id"] == "saved"
    assert "eval/tiny_gqa" in results["eval"]["summary"]
    assert not (run / "instruct").exists()  # nothing was trained
    tables = list((run / "wandb").glob("offline-run-*/files/media/table/eval/predictions_*.table.json"))
    assert len(tables) == 1


def test_task_eval_with_a_suite_and_a_lightning_checkpoint(tiny_world, tmp_path):
    """eval=<suite> on the command line scores exactly that suite; checkpoint=<run>/instruct/checkpoints/last.ckpt
    evaluates the stage's model folder, at the model's own 96px although the config's encoder is the 64px one."""
    world = world_root(tiny_world)
    model = _model_on(_bare_encoder(world, tmp_path), world)
    _, tokenizer, _ = world_model(world)
    stage = tmp_path / "runs" / "r96" / "instruct"
    save_lmm_model(model.state_dict(), model, stage, tokenizer=tokenizer,
                   config=OmegaConf.create({"stage": {"instruct": {"image_aspect": "pad"}}}))
    (stage / "checkpoints").mkdir()
    (stage / "checkpoints" / "last.ckpt").write_bytes(b"training state (not read by evaluation)")
    proc = _run_eval(tmp_path, tiny_world, f"checkpoint={stage / 'checkpoints' / 'last.ckpt'}", "eval=tiny_ladder",
                     "run_id=ladder", "logger=csv", "input=res224")
    assert f"-> the stage's saved model folder {stage / 'model'}" in proc.stdout
    run = tmp_path / "out" / "runs" / "ladder"
    results = json.loads((run / "results.json").read_text())["eval"]
    assert results["suite"] == "tiny_ladder"
    ladder = ["tiny_gqa", "tiny_mme", "tiny_mmvet", "tiny_refcoco"]
    assert list(results["benchmarks"]) == ladder
    assert sorted(p.name for p in (run / "eval").iterdir() if p.is_dir()) == ladder
    assert {k.split("/")[1] for k in results["summary"]} == set(ladder)
    for entry in results["benchmarks"].values():
        assert entry["num_scored"] == entry["num_questions"] > 0 and entry["headline"] is not None
    assert results["model_id"] == "r96"
    assert results["protocol"]["image_size"] == 96 and results["protocol"]["image_aspect"] == "pad"
