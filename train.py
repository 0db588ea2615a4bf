"""Train one experiment: `python train.py +experiment=moe_debug moe.capacity_factor=1.5` (`-m` for a multirun).

Every override is composed and validated before any work starts (multiruns: every combination), so a bad key
or value ends the command with one line naming it and exit status 2. A failure while running (a diverged
loss, a full disk, an unwritable folder, an unreachable tracking store or dataset, a corrupt checkpoint) ends
it with one line and exit status 1, its MLflow run FAILED with the same reason; `--verbose` (or
HYDRA_FULL_ERROR=1) shows the traceback instead. Ctrl-C or SIGTERM stop the run: its MLflow run is KILLED and
`ckpt_path=last` resumes it.
"""

from __future__ import annotations

import dataclasses
import sys

import hydra
from omegaconf import DictConfig

from workbench.config import register_configs, to_object
from workbench.config.errors import interrupt_on_signals, one_line_errors, verbose_requested
from workbench.preflight import check_command_line

VERBOSE = False


def _per_job_output_dir(cfg):
    """In a multirun each job writes its checkpoints to its own folder: Hydra's job folder by default,
    or `<output_dir>/<job number>` when output_dir was given on the command line."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return cfg
    given = any(o.lstrip("+").split("=")[0] == "output_dir" for o in hc.overrides.task)
    return dataclasses.replace(
        cfg, output_dir=f"{cfg.output_dir}/{hc.job.num}" if given else hc.runtime.output_dir
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(dcfg: DictConfig) -> dict[str, float | str | None]:
    from workbench.runner import run

    # run() validates again, and may find bad input only the data reveals (a missing file, an empty split)
    with one_line_errors(VERBOSE):
        result = run(_per_job_output_dir(to_object(dcfg)))
    return {
        "name": result.name,
        "run_id": result.run_id,
        "experiment_id": result.experiment_id,
        **result.metrics,
    }


if __name__ == "__main__":
    VERBOSE = verbose_requested(sys.argv)
    interrupt_on_signals()
    register_configs()
    with one_line_errors(VERBOSE):
        check_command_line(sys.argv[1:])
    try:
        main()
    except KeyboardInterrupt as exc:
        print(
            f"interrupted ({exc or 'Ctrl-C'}): `ckpt_path=last` with the same output_dir resumes",
            file=sys.stderr,
        )
        sys.exit(130)
