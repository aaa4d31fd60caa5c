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

from tests.conftest import SMALL_WORLD

ROOT = Path(__file__).resolve().parents[1]
# the small world of tests/conftest.py (built once per session), each stage's epoch 256 samples (8 steps of 32)
SMALL = [SMALL_WORLD, "data.num_workers=0", "data.align.mixture.num_samples=256",
         "data.instruct.mixture.num_samples=256"]


def env_for(tmp: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ, LMM_OUTPUT_DIR=str(tmp / "out"), LMM_CACHE_DIR=str(cache), WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    return env


def wandb_processes_of(pid: int) -> list[str]:
    """W&B's service processes started for process `pid` (wandb-core runs in a session of its own, outside the
    run's, and names the process it serves with `--pid`)."""
    out = subprocess.run(["pgrep", "-af", f"wandb-core.*--pid {pid}( |$)"], capture_output=True, text=True)
    return out.stdout.splitlines()


def run_py(args: list[str], env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def cache(tiny_world) -> Path:
    return tiny_world


def test_default_job_trains_both_stages(tmp_path, cache):
    """No WANDB_MODE and no key: W&B goes offline by itself, says how to sync, and leaves nothing running."""
    env = env_for(tmp_path, cache)
    del env["WANDB_MODE"]
    env["HOME"] = str(tmp_path / "home")  # no ~/.netrc with a W&B key
    proc = subprocess.Popen([sys.executable, "run.py", *SMALL, "run_id=e2e", "stage.align.max_steps=8",
                             "stage.instruct.max_steps=8", "num_sample_generations=3"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    run = tmp_path / "out" / "runs" / "e2e"
    results = json.loads((run / "results.json").read_text())
    for stage, steps in (("align", 8), ("instruct", 8)):  # 256 samples = 8 steps of 32: the whole epoch
        summary = results["stages"][stage]
        assert summary["global_step"] == steps == summary["losses"][-1][0]
        losses = [loss for _, loss in summary["losses"]]
        assert len(losses) == summary["global_step"] and all(torch.isfinite(torch.tensor(losses)))
        assert sum(losses[-3:]) < sum(losses[:3]), (stage, losses)  # the loss falls
        assert len((run / "samples" / f"{stage}.jsonl").read_text().splitlines()) == 3
    assert results["stages"]["align"]["params/trainable"] == results["stages"]["align"]["params/connector"]
    assert results["stages"]["instruct"]["params/trainable"] == (results["stages"]["instruct"]["params/connector"]
                                                                 + results["stages"]["instruct"]["params/llm"])
    assert (run / "config.yaml").exists() and json.loads((run / "meta.json").read_text())["git_commit"]
    assert (run / "instruct" / "model" / "lmm_model.json").exists()
    assert (run / "align" / "checkpoints" / "last.ckpt").exists()
    # the instruct model was evaluated on the preset's suite
    suite = {p.stem for p in (ROOT / "conf" / "eval" / "benchmark").glob("tiny_*.yaml")}
    assert set(results["eval"]["benchmarks"]) == suite
    assert set(json.loads((run / "eval" / "results.json").read_text())["benchmarks"]) == suite
    # W&B: offline by itself, one run, both stages' checkpoints in it as artifacts, and the sync command printed
    wandb_runs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 1 and "wandb sync" in stdout and "W&B run (offline)" in stdout
    records = wandb_runs[0].read_bytes()
    assert b"e2e-align" in records and b"e2e-instruct" in records
    metrics = (run / "logs" / "instruct" / "metrics.csv").read_text().splitlines()[0]
    assert "instruct/loss" in metrics and "instruct/lr" in metrics and "instruct/tokens_per_sec" in metrics
    # nothing left running: W&B's helper process ended with the run
    deadline = time.time() + 10
    while wandb_processes_of(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not wandb_processes_of(proc.pid)

    # a second rung that differs only after align reuses the same align stage
    run_py([*SMALL, "run_id=e2e-b", "stage.align.max_steps=8", "stage.instruct.max_steps=2", "logger=csv",
            "num_sample_generations=0"], env)
    first = (run / "align").resolve()
    second = (tmp_path / "out" / "runs" / "e2e-b" / "align").resolve()
    assert first == second


def trained_weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    """A stage's saved weights: connector.safetensors, after instruct also the model folder's (LLM, encoder)."""
    from safetensors.torch import load_file

    files = sorted(stage_dir.glob("**/*.safetensors"))
    assert files, f"no weights saved in {stage_dir}"
    return {f"{f.relative_to(stage_dir)}:{k}": v for f in files for k, v in load_file(f).items()}


@pytest.mark.parametrize("stage", ["align", "instruct"])
def test_killed_run_resumes_at_its_checkpoint(tmp_path, cache, stage):
    """SIGKILL in the middle of an epoch of a stage; the same command goes on from the last checkpoint (weights,
    optimizer, scheduler, step, data position) and ends where an uninterrupted run does: the same loss at every step
    after the checkpoint and the same trained weights."""
    env = env_for(tmp_path, cache)
    total, epoch_steps = 16, 8  # 256 samples in steps of 32: 2 epochs; checkpoints at 3, 6, 9, 12, 15: mid-epoch
    steps = {s: (total if s == stage else 2) for s in ("align", "instruct")}
    args = [*SMALL, "logger=csv", "num_sample_generations=0", "reuse_align=false", "~eval",
            f"stages={'[align]' if stage == 'align' else '[align,instruct]'}",
            *[f"stage.{s}.max_steps={n}" for s, n in steps.items()],
            f"stage.{stage}.checkpoint_every_n_steps=3", f"stage.{stage}.max_epochs=10"]
    run_py([*args, "run_id=straight"], env)  # the uninterrupted run (it also builds the tiny world before the kill)
    proc = subprocess.Popen([sys.executable, "run.py", *args, "run_id=resume"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = tmp_path / "out" / "runs" / "resume" / stage / "checkpoints" / "last.ckpt"
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)  # a step or two past the checkpoint (Lightning writes it whole, through a temporary file)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the kill"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    saved_step = saved["global_step"]
    assert 0 < saved_step < total and saved_step % epoch_steps  # in the middle of an epoch: the data position counts
    assert saved["optimizer_states"][0]["state"] and saved["lr_schedulers"][0]["last_epoch"] == saved_step

    run_py([*args, "run_id=resume"], env)
    runs = tmp_path / "out" / "runs"
    summary = json.loads((runs / "resume" / "results.json").read_text())["stages"][stage]
    assert summary["resumed_from"] == str(ckpt)
    assert summary["start_step"] == saved_step and summary["global_step"] == total
    assert summary["losses"][0][0] == saved_step + 1
    straight = json.loads((runs / "straight" / "results.json").read_text())["stages"][stage]
    assert straight["resumed_from"] is None and straight["global_step"] == total
    # after the checkpoint the resumed run is the uninterrupted one, step by step (CPU, fp32: to rounding)
    assert [s for s, _ in summary["losses"]] == [s for s, _ in straight["losses"][saved_step:]]
    resumed_losses, straight_losses = (torch.tensor([v for _, v in r["losses"]]) for r in (summary, straight))
    torch.testing.assert_close(resumed_losses, straight_losses[saved_step:], rtol=1e-5, atol=1e-6)
    resumed, uninterrupted = trained_weights(runs / "resume" / stage), trained_weights(runs / "straight" / stage)
    assert resumed.keys() == uninterrupted.keys()
    for name, weight in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weight, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("variant", [["model/connector=qformer_lite"], ["model/connector=linear"], ["input=res336"],
                                     ["model/encoder=siglip"], ["logger=none"],
                                     ["data=mix1_vqav2", "data.catalog.sharegpt.enabled=true",
                                      "trainer.log_every_n_steps=1"]],
                         ids=lambda v: v[0])
def test_variants_run(tmp_path, cache, variant):
    env = env_for(tmp_path, cache)
    logger = [] if any(v.startswith("logger=") for v in variant) else ["logger=csv"]
    run_py([*SMALL, *variant, *logger, "run_id=v", "stage.align.max_steps=2", "stage.instruct.max_steps=2",
            "num_sample_generations=1", "~eval"], env)
    if variant == ["logger=none"]:
        assert not (tmp_path / "out" / "runs" / "v" / "logs").exists()
        assert not (tmp_path / "out" / "runs" / "v" / "wandb").exists()
    if variant[0] == "data=mix1_vqav2":  # a streamed three-source mixture, each source's share logged
        header = (tmp_path / "out" / "runs" / "v" / "logs" / "instruct" / "metrics.csv").read_text().splitlines()[0]
        for source in ("llava_instruct", "vqav2", "sharegpt"):
            assert f"instruct/data/{source}/samples" in header and f"instruct/data/{source}/share" in header
    results = json.loads((tmp_path / "out" / "runs" / "v" / "results.json").read_text())
    tokens = results["stages"]["instruct"]["model/visual_tokens_per_image"]
    expected = {"model/connector=qformer_lite": 32, "model/connector=linear": 64, "input=res336": 144,
                "model/encoder=siglip": 64, "logger=none": 64, "data=mix1_vqav2": 64}[variant[0]]
    assert tokens == expected


def test_a_moved_stage_folder_is_reused_from_where_it_is(tmp_path):
    """stage.json records absolute paths; a stage folder moved or copied (a clone, another disk or machine) must
    hand the next stage its own files, not the paths it was trained at (found when a reused align stage pointed
    into a deleted clone)."""
    from lmm.train.stage import read_summary

    old = "/elsewhere/outputs/stages/align-abc"
    here = tmp_path / "stages" / "align-abc"
    here.mkdir(parents=True)
    (here / "stage.json").write_text(json.dumps({
        "stage": "align", "dir": old, "connector": f"{old}/connector.safetensors", "model": None,
        "resumed_from": f"{old}/checkpoints/last.ckpt", "note": f"{old}-other/connector.safetensors",
        "global_step": 7}))
    summary = read_summary(here)
    assert summary["dir"] == str(here) and summary["connector"] == str(here / "connector.safetensors")
    assert summary["resumed_from"] == str(here / "checkpoints" / "last.ckpt")
    assert summary["note"] == f"{old}-other/connector.safetensors"  # another folder that shares the prefix: kept
    assert summary["model"] is None and summary["global_step"] == 7
