"""End to end through `python run.py`: both stages, the run folder, W&B offline, resume after a kill, variants."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["prepare.0.num_align=256", "prepare.0.num_instruct=256", "prepare.0.num_eval=8", "data.num_workers=0"]


def env_for(tmp: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ, LMM_OUTPUT_DIR=str(tmp / "out"), LMM_CACHE_DIR=str(cache), WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    return env


def run_py(args: list[str], env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_default_job_trains_both_stages(tmp_path, cache):
    env = env_for(tmp_path, cache)
    proc = run_py([*SMALL, "run_id=e2e", "stage.align.max_steps=6", "stage.instruct.max_steps=6",
                   "num_sample_generations=3"], env)
    run = tmp_path / "out" / "runs" / "e2e"
    results = json.loads((run / "results.json").read_text())
    for stage in ("align", "instruct"):
        summary = results["stages"][stage]
        assert summary["global_step"] == 6
        losses = [loss for _, loss in summary["losses"]]
        assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
        assert len((run / "samples" / f"{stage}.jsonl").read_text().splitlines()) == 3
    assert results["stages"]["align"]["params/trainable"] == results["stages"]["align"]["params/connector"]
    assert results["stages"]["instruct"]["params/trainable"] == (results["stages"]["instruct"]["params/connector"]
                                                                 + results["stages"]["instruct"]["params/llm"])
    assert (run / "config.yaml").exists() and json.loads((run / "meta.json").read_text())["git_commit"]
    assert (run / "instruct" / "model" / "lmm_model.json").exists()
    assert (run / "align" / "checkpoints" / "last.ckpt").exists()
    wandb_runs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 1 and "wandb sync" in proc.stdout
    metrics = (run / "logs" / "instruct" / "metrics.csv").read_text().splitlines()[0]
    assert "instruct/loss" in metrics and "lr-AdamW" in metrics
    # nothing left running: W&B's helper processes ended with the run
    left = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True).stdout.strip()
    assert not left

    # a second rung that differs only after align reuses the same align stage
    run_py([*SMALL, "run_id=e2e-b", "stage.align.max_steps=6", "stage.instruct.max_steps=2", "logger=csv",
            "num_sample_generations=0"], env)
    first = (run / "align").resolve()
    second = (tmp_path / "out" / "runs" / "e2e-b" / "align").resolve()
    assert first == second


def test_killed_run_resumes_at_its_checkpoint(tmp_path, cache):
    env = env_for(tmp_path, cache)
    args = [*SMALL, "run_id=resume", "logger=csv", "stages=[align]", "stage.align.max_steps=60",
            "stage.align.checkpoint_every_n_steps=4", "num_sample_generations=0", "reuse_align=false",
            "stage.align.max_epochs=10"]
    run_py([*SMALL, "logger=csv", "stages=[align]", "stage.align.max_steps=1", "num_sample_generations=0"], env)
    proc = subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = tmp_path / "out" / "runs" / "resume" / "align" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the kill"
    saved_step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < saved_step < 60

    run_py(args, env)
    summary = json.loads((tmp_path / "out" / "runs" / "resume" / "results.json").read_text())["stages"]["align"]
    assert summary["resumed_from"] == str(ckpt)
    assert summary["start_step"] == saved_step and summary["global_step"] == 60
    assert summary["losses"][0][0] == saved_step + 1


@pytest.mark.parametrize("variant", [["model/connector=qformer_lite"], ["model/connector=linear"], ["input=res336"],
                                     ["model/encoder=siglip"]])
def test_variants_run(tmp_path, cache, variant):
    env = env_for(tmp_path, cache)
    run_py([*SMALL, *variant, "run_id=v", "logger=csv", "stage.align.max_steps=2", "stage.instruct.max_steps=2",
            "num_sample_generations=1"], env)
    results = json.loads((tmp_path / "out" / "runs" / "v" / "results.json").read_text())
    tokens = results["stages"]["instruct"]["model/visual_tokens_per_image"]
    expected = {"model/connector=qformer_lite": 32, "model/connector=linear": 16, "input=res336": 36,
                "model/encoder=siglip": 16}[variant[0]]
    assert tokens == expected
