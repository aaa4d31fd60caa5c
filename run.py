"""lmm entry point: `python run.py [overrides]` (see README). The run itself is lmm.pipeline; what a sweep needs from
the job (config checked first, the `objective` value returned, failed.json when it raises) is lmm.jobs."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lmm import jobs
from lmm.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    info = jobs.start(cfg)  # a wrong value fails here, in one line, before torch and the models are even imported
    from lmm.pipeline import run

    try:
        value = jobs.objective_value(run(cfg), cfg.get("objective"))
    except Exception as err:  # recorded in failed.json; under a multirun the other jobs go on
        jobs.fail(err, info)
    return jobs.report_objective(cfg, value)


if __name__ == "__main__":
    try:
        main()
    finally:
        jobs.print_failed_jobs()  # the jobs this process ran (all of them under the basic launcher)
