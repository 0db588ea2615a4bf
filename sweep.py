"""Run or resume an Optuna study: `python sweep.py sweeps/capacity_factor.yaml [overrides] [--workers N]`.

The workbench drives Optuna 5 itself (the Hydra Optuna sweeper pins Optuna < 3 and cannot prune) and composes
each trial's config with Hydra's compose API, the same configs as `python train.py`. See workbench/sweeps/.
"""

import sys

from workbench.sweeps.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
