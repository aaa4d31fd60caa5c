"""One run as a job of a sweep: what a sweeper needs from it, beyond the run itself (lmm.pipeline).

A sweeper needs three things from each job: a number to optimise, a failure that stays the job's own, and, at the
end, the list of what failed. So a job checks before anything runs that its `objective` names a metric the run will
produce, returns that metric's value when the run finishes (a float, what a sweeper such as Optuna optimises, or
None), and, when it raises, writes `failed.json` (error, traceback, overrides) into its run folder, logs one line
naming itself and re-raises, so Hydra records it as failed and goes on with the others (the basic sweeper exits
non-zero after all jobs of its batch ran, the Optuna sweeper marks the trial failed within `max_failure_rate`).
Outside a multirun a config error ends the process with one line instead. sweeps/README.md has the user's view.

Nothing here imports torch or Lightning at module import time: run.py validates the config before either is loaded.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from lmm.config import STAGES, ConfigError, validate

FAILURE_FILE = "failed.json"  # in the run folder of a job that raised; removed when the same run starts again
FAILED_JOBS: list[str] = []  # this process's failed jobs (the basic launcher runs a whole sweep in one process)


# ------------------------------------------------------------------------------------------------------- objective
def check_objective(cfg: DictConfig) -> None:
    """`objective` names a metric the run will produce: `eval/<benchmark>[/<metric>]` of the eval suite (its run
    summary keys, the same names W&B shows) or `<stage>/loss` of a trained stage. Checked before anything runs."""
    name = cfg.get("objective")
    if not name:
        return
    parts = str(name).split("/")
    benchmarks = sorted((OmegaConf.select(cfg, "eval.benchmarks") or {}).keys())
    if parts[0] == "eval" and (len(parts) < 2 or not parts[1]):
        raise ConfigError(f"objective={name} names no benchmark: eval/<benchmark>[/<metric>], one of the eval "
                          f"suite's: {', '.join(benchmarks) or 'none'}")
    if parts[0] == "eval":
        if cfg.task == "train" and "instruct" not in cfg.stages:
            raise ConfigError(f"objective={name}: no evaluation runs without the instruct stage")
        if parts[1] not in benchmarks:
            raise ConfigError(f"objective={name}: {parts[1]!r} is not in the eval suite; its benchmarks: "
                              f"{', '.join(benchmarks) or 'none'}")
        return
    if len(parts) == 2 and parts[0] in STAGES and parts[1] == "loss":
        if cfg.task != "train" or parts[0] not in cfg.stages:
            raise ConfigError(f"objective={name}: the {parts[0]} stage does not run (stages={list(cfg.stages)})")
        return
    raise ConfigError(f"objective={name} is not a metric a run produces: eval/<benchmark>[/<metric>] (benchmarks: "
                      f"{', '.join(benchmarks) or 'none'}) or <stage>/loss ({', '.join(STAGES)})")


def objective_value(results: dict[str, Any], name: str | None) -> float | None:
    """The metric `name` of a finished run's results (see check_objective): an eval summary score, or a stage's last
    logged loss (what W&B's run summary shows under the same name). NaN stays NaN: Optuna marks that trial failed."""
    if not name:
        return None
    parts = str(name).split("/")
    if parts[0] == "eval":
        summary = (results.get("eval") or {}).get("summary") or {}
        if name not in summary:
            raise KeyError(f"objective={name} is not among the run's eval scores: {', '.join(sorted(summary))}")
        return float(summary[name])
    losses = ((results.get("stages") or {}).get(parts[0]) or {}).get("losses") or []
    if not losses:
        raise KeyError(f"objective={name}: the run logged no {parts[0]} loss")
    return float(losses[-1][1])


def report_objective(cfg: DictConfig, value: float | None) -> float | None:
    """Logs the job's objective value (when it has one) and returns it, for the sweeper."""
    if value is not None:
        from lmm.log import log

        log.info(f"objective {cfg.objective} = {value}" + (" (NaN: a sweeper counts the job failed)"
                                                           if math.isnan(value) else ""))
    return value


# ------------------------------------------------------------------------------------------------------ job start
def start(cfg: DictConfig) -> dict[str, Any]:
    """A job begins: its Hydra job info (mode, overrides, run folder, job number), a `failed.json` left by an earlier
    attempt of the same run removed, and the config and objective validated (a ConfigError fails the job here,
    before torch and the models are even imported). Returns the job info that `fail` needs."""
    info = job_info()
    if info.get("output_dir"):
        (Path(info["output_dir"]) / FAILURE_FILE).unlink(missing_ok=True)  # a run resumed by name starts clean
    try:
        validate(cfg)
        check_objective(cfg)
    except ConfigError as err:
        fail(err, info, "lmm: config error")
    return info


def job_info() -> dict[str, Any]:
    """What Hydra knows of the running job; empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    info: dict[str, Any] = {"mode": str(hc.mode.name) if hc.mode is not None else None,
                            "overrides": list(hc.overrides.task), "output_dir": hc.runtime.output_dir}
    if OmegaConf.select(hc, "job.num") is not None:
        info["job_num"] = hc.job.num
    if OmegaConf.select(hc, "job.id") is not None:
        info["job_id"] = hc.job.id
    return info


# -------------------------------------------------------------------------------------------------------- failures
def _failure_file(run_dir: Path) -> Path:
    from lmm.log import is_global_zero

    if is_global_zero():
        return run_dir / FAILURE_FILE
    from lightning.pytorch.utilities import rank_zero_only

    return run_dir / f"failed-rank{getattr(rank_zero_only, 'rank', 'x')}.json"  # a rank of a distributed job


def record_failure(err: BaseException, info: dict[str, Any]) -> Path | None:
    """failed.json in the job's run folder (error, traceback, overrides); under a multirun also one log line naming
    the job. Returns the file written."""
    from lmm.log import log

    out = info.get("output_dir")
    if info.get("mode") == "MULTIRUN":
        desc = " ".join(info.get("overrides") or []) or "(no overrides)"
        job = f"job #{info['job_num']}" if "job_num" in info else "job"
        where = f"; see {Path(out) / FAILURE_FILE}" if out else ""
        log.error(f"{job} failed: {type(err).__name__}: {err} [{desc}]{where}")
        FAILED_JOBS.append(f"{job} [{desc}]: {type(err).__name__}: {err}")
    if not out:
        return None
    path = _failure_file(Path(out))
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"error": type(err).__name__, "message": str(err), "failed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              **info, "traceback": traceback.format_exception(type(err), err, err.__traceback__)}
    path.write_text(json.dumps(record, indent=2, default=str))
    return path


def fail(err: Exception, info: dict[str, Any], prefix: str = "lmm") -> NoReturn:
    """A failed job: recorded; under a multirun raised to Hydra, which marks the job failed and runs the others.
    Outside a multirun a ConfigError ends the process with one line, `<prefix>: <error>`, no traceback: the value to
    fix is named (e.g. a training stage that cannot fit its devices, lmm/train/memory.py)."""
    record_failure(err, info)
    if info.get("mode") != "MULTIRUN" and isinstance(err, ConfigError):
        sys.exit(f"{prefix}: {err}")
    raise err


def print_failed_jobs() -> None:
    """The end-of-sweep summary on stderr: the jobs this process ran that failed (all of them under the basic
    launcher, which runs a whole sweep in one process)."""
    if FAILED_JOBS:
        print(f"lmm: {len(FAILED_JOBS)} job(s) of this multirun failed; each one's run folder has {FAILURE_FILE}:"
              "\n  " + "\n  ".join(FAILED_JOBS), file=sys.stderr)
