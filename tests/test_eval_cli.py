"""`python run.py task=eval checkpoint=<saved model>`: answer files, results.json, W&B table in the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import lmm.pipeline
from lmm.model.io import save_lmm_model
from tests.test_eval_inference import world_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not hasattr(lmm.pipeline, "eval_stage"), reason="lmm.pipeline has no task=eval branch yet")
def test_task_eval_on_a_saved_model(tiny_world, tmp_path):
    world = tiny_world / "tiny-world"
    model, tokenizer, _ = world_model(world, seed=2)
    config = OmegaConf.create({"model": {"encoder": {"pretrained": str(world / "clip-tiny-res224")}}})
    save_lmm_model(model.state_dict(), model, tmp_path / "runs" / "saved" / "instruct", tokenizer=tokenizer,
                   config=config)
    env = dict(os.environ, LMM_OUTPUT_DIR=str(tmp_path / "out"), LMM_CACHE_DIR=str(tiny_world), WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    args = ["task=eval", f"checkpoint={tmp_path / 'runs' / 'saved'}", "run_id=ev", "data.num_workers=0",
            # the session's tiny world (tests/conftest.py), so nothing is rebuilt
            "prepare.0.num_align=96", "prepare.0.num_instruct=96", "prepare.0.num_eval=16",
            "~eval.benchmarks.tiny_llava_bench", "~eval.benchmarks.tiny_mmbench_cn"]
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "out" / "runs" / "ev"
    results = json.loads((run / "results.json").read_text())
    benches = results["eval"]["benchmarks"]
    assert len(benches) == 10 and "tiny_mmbench_cn" not in benches
    for name, entry in benches.items():
        assert (run / "eval" / name / "answers.jsonl").exists()
        assert entry["num_scored"] == entry["num_questions"] > 0
        assert json.loads((run / "eval" / name / "answers.jsonl").read_text().splitlines()[0])["model_id"] == "saved"
    assert "eval/tiny_gqa" in results["eval"]["summary"]
    assert not (run / "instruct").exists()  # nothing was trained
    tables = list((run / "wandb").glob("offline-run-*/files/media/table/eval/predictions_*.table.json"))
    assert len(tables) == 1
