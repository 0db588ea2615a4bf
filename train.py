"""Train one experiment: `python train.py +experiment=moe_debug moe.capacity_factor=1.5` (`-m` for a multirun).

Every override is composed and validated before any work starts (sweeps: every combination), so a bad key
or value ends the command with one line naming it and exit status 2.
"""

from __future__ import annotations

import dataclasses
import sys
from itertools import product

import hydra
from omegaconf import DictConfig

from workbench.config import ConfigError, compose, to_object, validate
from workbench.config.store import register_configs

_NO_PREFLIGHT = (
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--cfg",
    "-c",
    "--shell-completion",
    "-sc",
    "--config-path",
    "-cp",
    "--config-dir",
    "-cd",
    "--config-name",
    "-cn",
    "--experimental-rerun",
)
_MAX_PREFLIGHT = 256


def preflight(argv: list[str]) -> None:
    """Compose and validate what the command line asks for; raise ConfigError on the first bad value."""
    if any(a.split("=")[0] in _NO_PREFLIGHT for a in argv):
        return  # Hydra's own modes, or configs from elsewhere: Hydra checks those itself
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # a syntax error in an override
        raise ConfigError(" ".join(str(exc).split())) from exc
    choices: list[list[str]] = []
    for o in parsed:
        if o.key_or_group.startswith("hydra"):
            continue
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:
                continue  # interval sweeps are for sweepers; nothing to enumerate
            choices.append([f"{o.get_key_element()}={v}" for v in values])
        else:
            choices.append([o.input_line])
    for i, combo in enumerate(product(*choices)):
        if i >= _MAX_PREFLIGHT:
            break
        compose(None, list(combo))


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
        cfg = _per_job_output_dir(to_object(dcfg))
        validate(cfg)
        # run() may still find bad input that only the data reveals (a missing file, an empty split)
        result = run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return {"name": result.name, "run_id": result.run_id, **result.metrics}


if __name__ == "__main__":
    register_configs()
    try:
        preflight(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    main()
