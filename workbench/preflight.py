"""Everything that runs before any work: compose a config and run every component's own rules on its slice.

The components own their rules (README "Layout"): the model and MoE layer (`workbench.models`), the data
stage (`workbench.data`), precision and the trainer (`workbench.training`), the budget and the hardware table
(`workbench.cost`). This module only calls them, in a fixed order, so the first bad value is the one reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from itertools import product
from pathlib import Path

from workbench.config import ConfigError, TrainConfig, check_fields, compose_dictconfig, to_object
from workbench.cost.budget import validate_budget
from workbench.cost.hardware import validate_cost
from workbench.data import validate_data
from workbench.models import validate_model
from workbench.paths import resolve_path
from workbench.training.precision import validate_precision
from workbench.training.trainer import validate_trainer


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError (one line naming the key) on the first value the run could not use."""
    validate_paths(cfg)
    validate_model(cfg.model, cfg.moe)
    validate_precision(cfg.precision)
    validate_data(cfg.data)
    validate_vocab(cfg)
    validate_trainer(cfg.trainer)
    validate_stats_interval(cfg)
    validate_budget(cfg.budget)
    validate_cost(cfg.cost, cfg.trainer.accelerator)
    check_fields(cfg.tracking, "tracking")


def validate_stats_interval(cfg: TrainConfig) -> None:
    """Routing statistics reach the logger only on Lightning's logging steps: an interval that is not a multiple
    of `trainer.log_every_n_steps` would send values computed steps before the step they are logged at."""
    every, log_every = cfg.moe.stats_every_n_steps, cfg.trainer.log_every_n_steps
    if every is not None and every % log_every != 0:
        raise ConfigError(
            f"moe.stats_every_n_steps={every} is not a multiple of trainer.log_every_n_steps={log_every}: "
            "statistics are sent on logging steps only; use a multiple, or lower trainer.log_every_n_steps"
        )


MIN_VOCAB = 257  # every tokenizer holds the 256 byte symbols and end-of-text (workbench.data.tokenizer)


def validate_vocab(cfg: TrainConfig) -> None:
    """A fixed `model.vocab_size` must hold the tokenizer's ids; the exact size is known only once the data
    stage has built the tokenizer (the runner checks it then), but no tokenizer has fewer than MIN_VOCAB."""
    v = cfg.model.vocab_size
    if v is not None and v < MIN_VOCAB:
        raise ConfigError(
            f"model.vocab_size={v} < {MIN_VOCAB}, the smallest tokenizer vocabulary (256 bytes + end-of-text); "
            "leave it unset to take the tokenizer's"
        )


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def validate_paths(cfg: TrainConfig) -> None:
    """`name` is one folder name; no output path climbs out of where it points with `..`; every output folder
    can be created (its nearest existing parent is a writable folder)."""
    if not _NAME.fullmatch(cfg.name) or ".." in cfg.name:
        raise ConfigError(
            f"name={cfg.name!r}: a run name is one folder name of letters, digits and _ . + - "
            "(it names output folders)"
        )
    for key, value in (("output_dir", cfg.output_dir), ("data.cache_dir", cfg.data.cache_dir)):
        check_output_path(key, value)


def check_output_path(key: str, value: str) -> Path:
    """The resolved folder of an output path, refused with one line naming `key` if it has a `..` component
    or cannot be written."""
    if ".." in Path(value).parts:
        raise ConfigError(f"{key}={value}: '..' is not allowed in an output path; give the folder itself")
    path = resolve_path(value)
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}={value}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={value}: cannot write in {parent} (permission denied)")
    return path


def compose(experiment: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Compose, type and validate a run config: the notebook entry point to the same configs as train.py."""
    cfg = to_object(compose_dictconfig(experiment, overrides))
    validate(cfg)
    return cfg


# Hydra's own modes (help, printing the config, configs from elsewhere): Hydra checks those itself.
_HYDRA_MODES = (
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
MAX_COMBINATIONS = 256


def check_command_line(argv: Sequence[str]) -> None:
    """Compose and validate what a `train.py` command line asks for, every combination of a multirun's
    sweeps (up to MAX_COMBINATIONS); raise ConfigError on the first bad value."""
    if any(a.split("=")[0] in _HYDRA_MODES for a in argv):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if not a.startswith("-")]
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as exc:  # a syntax error in an override: name the one that does not parse
        bad = next((o for o in overrides if not _parses(parser, o)), None)
        message = " ".join(str(exc).split())
        raise ConfigError(f"{bad}: {message}" if bad else message) from exc
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
        if i >= MAX_COMBINATIONS:
            break
        compose(None, list(combo))
    check_hydra_dirs(argv)


def _parses(parser, override: str) -> bool:
    try:
        parser.parse_overrides([override])
        return True
    except Exception:
        return False


def check_hydra_dirs(argv: Sequence[str]) -> None:
    """Hydra's own output folder (a multirun's sweep dir, relative to the working directory like Hydra takes
    it) must be writable too; a run's folder is `output_dir`, checked with the config."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    given = {
        a.split("=", 1)[0]: a.split("=", 1)[1]
        for a in argv
        if a.startswith(("hydra.sweep.dir=", "hydra.run.dir="))
    }
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    value = given.get(key, "outputs/multirun" if multirun else None)
    if value:
        fixed = value.split("${", 1)[0] or "."  # the part before the first interpolation
        check_output_path(key, str(Path.cwd() / fixed) if not Path(fixed).is_absolute() else fixed)
