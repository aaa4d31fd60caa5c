"""lmm entry point: `python run.py [overrides]` (see README). All the work happens in lmm.pipeline."""

import hydra
from omegaconf import DictConfig

from lmm.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from lmm.pipeline import run

    run(cfg)


if __name__ == "__main__":
    main()
