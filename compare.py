"""python compare.py <run folders or globs> [options]: the ablation table of a set of runs, beside run.py that makes
them (the same as python -m lmm.compare; see lmm/compare/__main__.py)."""

import sys

from lmm.compare.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
