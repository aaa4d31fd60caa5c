"""lmm entry point: `python run.py [overrides]` (see README). All the work happens in lmm.pipeline."""

import sys

import hydra
from omegaconf import DictConfig

from lmm.config import ConfigError, register_resolvers, validate

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        validate(cfg)  # a wrong value fails here, in one line, before torch and the models are even imported
    except ConfigError as err:
        sys.exit(f"lmm: config error: {err}")
    from lmm.pipeline import run

    try:
        run(cfg)
    except ConfigError as err:  # e.g. a training stage that cannot fit its devices (lmm/train/memory.py)
        sys.exit(f"lmm: {err}")


if __name__ == "__main__":
    main()
