"""Train one experiment: `python train.py +experiment=moe_debug moe.capacity_factor=1.5` (`-m` for a multirun).

Every override is composed and validated before any work starts (multiruns: every combination), so a bad key
or value ends the command with one line naming it and exit status 2.
"""

from __future__ import annotations

import dataclasses
import sys

import hydra
from omegaconf import DictConfig

from workbench.config import ConfigError, register_configs, to_object
from workbench.preflight import check_command_line


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

    try:
        # run() validates, and may still find bad input that only the data reveals (a missing file, an
        # empty split): one line, exit status 2, like a bad override
        result = run(_per_job_output_dir(to_object(dcfg)))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return {"name": result.name, "run_id": result.run_id, **result.metrics}


if __name__ == "__main__":
    register_configs()
    try:
        check_command_line(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    main()
