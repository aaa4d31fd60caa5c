"""Sweeps (sweeps/README.md): a multirun in which a job fails still runs the others and says which failed (the basic
launcher, submitit's local launcher and joblib's parallel one), the Optuna search runs on the objective a job
returns, the sweep configs compose, run ids made in the same second differ, and the data-efficiency fraction keeps a
seeded share of each source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir

from lmm.config import ConfigError, new_run_id, register_resolvers
from lmm.data.args import MixtureArgs
from lmm.data.mixture import MixturePlan, SourceInfo, subsample
from lmm.jobs import check_objective, objective_value
from tests.conftest import SMALL_WORLD
from tests.test_config import cfg_of

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
register_resolvers()
# real lmm jobs cut to the bone: the tests' small world, the align stage only, one or two steps of 32 samples
QUICK = [SMALL_WORLD, "data.num_workers=0", "stages=[align]", "logger=none", "num_sample_generations=0", "~eval",
         "reuse_align=false"]


def env_for(tmp: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ, LMM_OUTPUT_DIR=str(tmp / "out"), LMM_CACHE_DIR=str(cache), WANDB_MODE="disabled")
    env.pop("WANDB_API_KEY", None)
    return env


def multirun(args: list[str], env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_folders(tmp: Path) -> dict[str, Path]:
    """Each job's run folder by the overrides Hydra saved in it."""
    out = {}
    for d in sorted((tmp / "out" / "runs").iterdir()):
        overrides = d / ".hydra" / "overrides.yaml"
        if overrides.exists():
            out[" ".join(yaml.safe_load(overrides.read_text()))] = d
    return out


def check_one_failed(tmp: Path, proc: subprocess.CompletedProcess, bad: str, good: str, error: str) -> None:
    """The job with override `bad` failed (failed.json, named on stderr), the one with `good` finished anyway."""
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode != 0, log  # the sweep says that a job failed...
    folders = run_folders(tmp)
    assert len(folders) == 2 and len(set(folders.values())) == 2, folders  # ...each job in a folder of its own
    (failed,) = [d for k, d in folders.items() if bad in k.split()]
    (ok,) = [d for k, d in folders.items() if good in k.split()]
    results = json.loads((ok / "results.json").read_text())  # ...and the other job still ran to its end
    assert results["stages"]["align"]["global_step"] == 1 and not (ok / "failed.json").exists(), log
    record = json.loads((failed / "failed.json").read_text())
    assert record["error"] == error and bad in record["overrides"] and record["traceback"], record
    assert not (failed / "results.json").exists()
    assert bad in proc.stderr, log  # the failed job is named (Hydra's error and lmm's summary)


def test_a_failed_job_does_not_stop_the_multirun(tmp_path, tiny_world):
    """The basic launcher runs the jobs one after another in one process: a job with a misspelled value (a config
    error, which a single run reports with sys.exit) must fail as that job only; the next one still runs."""
    bad, good = "stage.align.image_aspect=padd", "stage.align.image_aspect=crop"
    proc = multirun(["-m", *QUICK, "stage.align.max_steps=1", "data.align.mixture.num_samples=32",
                     "stage.align.image_aspect=padd,crop"], env_for(tmp_path, tiny_world))
    check_one_failed(tmp_path, proc, bad, good, "ConfigError")
    assert "1 job(s) of this multirun failed" in proc.stderr


def test_a_failed_job_through_submitit_local(tmp_path, tiny_world):
    """hydra/launcher=local (submitit's local executor, the code path of hydra/launcher=slurm): each job in a process
    of its own; a job that fails inside the pipeline (after its run folder exists) leaves the other to finish."""
    bad, good = "data.align.mixture.num_samples=0", "data.align.mixture.num_samples=32"
    proc = multirun(["-m", "hydra/launcher=local", *QUICK, "stage.align.max_steps=1",
                     "data.align.mixture.num_samples=0,32"], env_for(tmp_path, tiny_world))
    check_one_failed(tmp_path, proc, bad, good, "ValueError")
    failed = [d for k, d in run_folders(tmp_path).items() if bad in k.split()][0]
    assert (failed / "meta.json").exists()  # it failed inside the pipeline, not before
    assert list((tmp_path / "out" / "submitit").glob("*/*_log.out"))  # submitit ran them (its own folder)


def test_a_failed_job_through_the_parallel_launcher(tmp_path, tiny_world):
    """hydra/launcher=parallel (joblib): two jobs at once, each in a worker process with cpu_count // n_jobs torch
    threads (so one each on a 2-core machine) and DataLoader workers started by the platform's method (loky's own
    cannot start them); a job that fails leaves the other to finish."""
    bad, good = "data.align.mixture.num_samples=0", "data.align.mixture.num_samples=32"
    proc = multirun(["-m", "hydra/launcher=parallel", *QUICK, "data.num_workers=1", "stage.align.max_steps=1",
                     "data.align.mixture.num_samples=0,32"], env_for(tmp_path, tiny_world))
    check_one_failed(tmp_path, proc, bad, good, "ValueError")
    threads = {json.loads((d / "meta.json").read_text())["torch_threads"] for d in run_folders(tmp_path).values()}
    assert threads == {max(1, (os.cpu_count() or 1) // 2)}, threads


def test_loader_workers_start_by_a_standard_method(monkeypatch):
    """Inside a process whose default start method is a launcher's own (loky's), loaders get the platform's."""
    import multiprocessing

    from lmm.data.workers import STANDARD, worker_context

    assert worker_context(2) is None  # this process: torch's default
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "loky")
    assert worker_context(2).get_start_method() in STANDARD and worker_context(0) is None


def test_optuna_search_optimises_the_objective_each_job_returns(tmp_path, tiny_world):
    """+sweep=lr_optuna with 2 trials on a quick objective (the align loss after 2 steps): each job returns it and
    the best trial's value and parameters are those of the job with the lowest loss."""
    proc = multirun(["+sweep=lr_optuna", "hydra.sweeper.n_trials=2", "objective=align/loss",
                     "hydra.sweeper.direction=minimize", *QUICK, "stage.align.max_steps=2",
                     "stage.align.warmup_ratio=0", "data.align.mixture.num_samples=64"], env_for(tmp_path, tiny_world))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [json.loads((d / "results.json").read_text()) for d in run_folders(tmp_path).values()]
    assert len(runs) == 2
    losses = [r["stages"]["align"]["losses"][-1][1] for r in runs]
    assert losses[0] != losses[1]  # the two learning rates made a difference
    best = yaml.safe_load((tmp_path / "out" / "runs" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(losses))
    lrs = [yaml.safe_load((d / "config.yaml").read_text())["stage"]["align"]["lr"]
           for d in run_folders(tmp_path).values()]
    assert best["best_params"]["stage.align.lr"] == pytest.approx(lrs[int(np.argmin(losses))])
    assert f"objective align/loss = {min(losses)}" in proc.stdout


# ------------------------------------------------------------------------------------------------- objective
def test_objective_names_a_metric_the_run_produces():
    check_objective(cfg_of(SMALL_WORLD, "objective=eval/tiny_gqa"))
    check_objective(cfg_of(SMALL_WORLD, "objective=align/loss"))
    for bad, match in (("eval/gqa", "not in the eval suite"), ("align/los", "not a metric"),
                       ("accuracy", "not a metric")):
        with pytest.raises(ConfigError, match=match):
            check_objective(cfg_of(SMALL_WORLD, f"objective={bad}"))
    with pytest.raises(ConfigError, match="does not run"):
        check_objective(cfg_of(SMALL_WORLD, "objective=align/loss", "stages=[instruct]"))
    results = {"stages": {"align": {"losses": [[1, 3.0], [2, 2.5]]}},
               "eval": {"summary": {"eval/tiny_gqa": 37.5, "eval/tiny_gqa/acc": 0.375}}}
    assert objective_value(results, "align/loss") == 2.5
    assert objective_value(results, "eval/tiny_gqa") == 37.5
    assert objective_value(results, None) is None
    with pytest.raises(KeyError):
        objective_value(results, "eval/tiny_mme")


@pytest.mark.parametrize("bare", ["eval", "eval/"])
def test_objective_eval_without_a_benchmark_is_rejected(bare):
    """`objective=eval` alone names no metric (the run summary has eval/<benchmark> keys, no `eval`): rejected before
    anything runs, the error saying a benchmark is missing and listing the suite's."""
    with pytest.raises(ConfigError, match=r"names no benchmark: eval/<benchmark>.*tiny_gqa"):
        check_objective(cfg_of(SMALL_WORLD, f"objective={bare}"))


# ------------------------------------------------------------------------------------------------ sweep configs
def hydra_cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_sweep_configs_compose():
    ladder = hydra_cfg_of("+sweep=ladder").hydra
    assert ladder.mode.name == "MULTIRUN" and ladder.sweeper.params.seed == "1,2,3"
    rungs = ladder.sweeper.params["+ablation"].split(",")
    assert len(rungs) == 10 and rungs[0] == "baseline" and rungs[-1] == "llm13b"
    missing = [r for r in rungs if not (CONF / "ablation" / f"{r}.yaml").exists()]
    assert not missing, f"the ladder sweep names rungs with no conf/ablation config: {missing}"
    half = hydra_cfg_of("+sweep=ladder_half", "+ablation=gqa")  # a job of it: the rung's mixture, halved
    assert sorted(half.hydra.sweeper.params["+ablation"].split(",")) == sorted(rungs)
    assert half.hydra.launcher._target_.endswith("JoblibLauncher") and half.data.instruct.mixture.fraction == 0.5
    assert half.hydra.runtime.choices.data == "mix7_gqa"

    optuna = hydra_cfg_of("+sweep=lr_optuna")
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper") and optuna.objective == "eval/tiny_gqa"
    assert set(optuna.hydra.sweeper.params) == {"stage.align.lr", "stage.instruct.lr"}
    assert "tiny_gqa" in optuna.eval.benchmarks  # the objective's benchmark is in the default suite

    fractions = hydra_cfg_of("+sweep=data_fraction").hydra.sweeper.params["data.instruct.mixture.fraction"]
    assert [float(f) for f in fractions.split(",")] == pytest.approx([k / 10 for k in range(1, 11)])

    slurm = hydra_cfg_of("preset=paper", "hydra/launcher=slurm")
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == launcher.tasks_per_node == 8 and launcher.nodes == 1
    assert launcher.submitit_folder == str(Path(slurm.paths.output_dir) / "submitit" / "%j")
    assert hydra_cfg_of("hydra/launcher=local").hydra.launcher._target_.endswith("LocalLauncher")
    parallel = hydra_cfg_of("hydra/launcher=parallel").hydra.launcher
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2 and int(parallel.batch_size) == 1

    wandb = yaml.safe_load((ROOT / "sweeps" / "wandb_lr.yaml").read_text())
    assert wandb["program"] == "run.py" and "${args_no_hyphens}" in wandb["command"]
    assert set(wandb["parameters"]) == set(optuna.hydra.sweeper.params)  # the same search
    assert wandb["metric"]["name"] == optuna.objective and wandb["metric"]["goal"] == "maximize"


# --------------------------------------------------------------------------------------------------- run ids
def test_run_ids_made_in_the_same_second_differ(monkeypatch):
    monkeypatch.setattr("lmm.config.time.strftime", lambda fmt: "20260101-000000")  # every id in the same second
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    # 32 random bits: 300 ids in one second collide with probability 1e-5 (24 bits: 3e-3, 4000 ids: 0.5)
    ids = [new_run_id() for _ in range(300)]
    assert len(set(ids)) == len(ids) and all(i.startswith("20260101-000000-") for i in ids)
    assert new_run_id(None, "baseline-seed1") != new_run_id(None, "baseline-seed1")
    assert new_run_id("mine") == "mine"
    # a SLURM job of one task (a job of a sweep): its own id still; of 8 tasks (8 ranks): one id, its folder
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert new_run_id() != new_run_id()
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert new_run_id() == new_run_id() == "slurm4242.0"


def test_two_jobs_of_one_sweep_never_share_a_folder():
    """Hydra resolves each job's folder from its own config: the same resolver call yields a new id per job, and
    the same id within one job (it is cached per config)."""
    from omegaconf import OmegaConf

    jobs = [OmegaConf.create({"run_id": None, "dir": "${lmm_run_id:${run_id}}", "again": "${lmm_run_id:${run_id}}"})
            for _ in range(50)]
    dirs = [(c.dir, c.again) for c in jobs]
    assert all(a == b for a, b in dirs) and len({a for a, _ in dirs}) == len(jobs)


# ------------------------------------------------------------------------------------------- data fraction
def sources(sizes=(1000, 400, 37)) -> list[SourceInfo]:
    rng = np.random.default_rng(0)
    return [SourceInfo(f"s{k}", n, np.arange(n) % 3 != 0, rng.integers(1, 200, n)) for k, n in enumerate(sizes)]


def test_fraction_keeps_a_seeded_share_of_every_source():
    full = sources()
    kept = subsample(full, 0.3, seed=1)
    assert [s.size for s in kept] == [300, 120, 11] == [len(s.index) for s in kept]  # round(0.3 x size) each
    assert all(len(set(s.index)) == s.size and s.index.max() < f.size for s, f in zip(kept, full, strict=True))
    again, other = subsample(full, 0.3, seed=1), subsample(full, 0.3, seed=2)
    assert all(np.array_equal(a.index, b.index) for a, b in zip(kept, again, strict=True))  # seeded
    assert not any(np.array_equal(a.index, b.index) for a, b in zip(kept, other, strict=True))  # differs by seed
    smaller = subsample(full, 0.1, seed=1)  # nested: a smaller fraction keeps part of what a larger one keeps
    assert all(set(s.index) <= set(k.index) for s, k in zip(smaller, kept, strict=True))
    assert subsample(full, None, seed=1) == full and subsample(full, 1.0, seed=1) == full
    assert [s.size for s in subsample(sources((5, 3)), 0.1, seed=0)] == [1, 1]  # no source vanishes
    with pytest.raises(ValueError, match="fraction"):
        MixtureArgs(fraction=0.0)


def test_an_epoch_of_a_fraction_holds_only_the_kept_records():
    full = sources()
    kept = subsample(full, 0.5, seed=3)
    plan = MixturePlan(kept, [s.size for s in kept], seed=3, micro_batch_size=8, group_by_modality_length=True)
    keys = np.concatenate(plan.epoch_micro_batches(0))
    for s, src in enumerate(kept):
        mine = keys[keys[:, 0] == s, 1]
        assert sorted(mine) == sorted(src.index)  # every kept record once, nothing else
    assert plan.describe()["kept_records"] == {"s0": [500, 1000], "s1": [200, 400], "s2": [19, 37]}
    assert plan.fingerprint() != MixturePlan(subsample(full, 0.5, seed=4), [s.size for s in kept], seed=3,
                                             micro_batch_size=8, group_by_modality_length=True).fingerprint()


def test_fraction_reaches_the_instruct_datamodule():
    cfg = cfg_of("data.instruct.mixture.fraction=0.25")
    assert cfg.data.instruct.mixture.fraction == 0.25 and cfg.data.align.mixture.get("fraction") is None
    from hydra.utils import instantiate

    assert instantiate(cfg.data.instruct.mixture).fraction == 0.25


def test_fraction_in_the_datamodule_plan(tmp_path):
    """LlavaDataModule applies mixture.fraction with its seed: the epoch plan keeps round(f x size) per source and
    says so (`kept_records`, in the stage's results through the trained tally)."""
    from lmm.data.args import StoreArgs
    from lmm.data.datamodule import LlavaDataModule
    from tests.synthetic import data_kit, image_and_text_sources

    specs = image_and_text_sources(tmp_path / "src", 40, 30)
    kit = data_kit(tmp_path / "kit")

    def plan(seed, fraction):
        dm = LlavaDataModule(specs, **kit, seed=seed, micro_batch_size=4, max_text_length=256,
                             mixture=MixtureArgs(fraction=fraction),
                             store=StoreArgs(cache_dir=str(tmp_path / "cache"), progress=False))
        return dm.plan()

    half = plan(1, 0.5)
    assert half.describe()["counts"] == {"img": 20, "txt": 15}
    assert half.describe()["kept_records"] == {"img": [20, 40], "txt": [15, 30]}
    assert plan(1, None).describe()["counts"] == {"img": 40, "txt": 30}
    assert [list(s.index) for s in half.sources] == [list(s.index) for s in plan(1, 0.5).sources]
    assert [list(s.index) for s in half.sources] != [list(s.index) for s in plan(2, 0.5).sources]
