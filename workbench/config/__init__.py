"""Typed configs: schemas, the ConfigStore registration, composition for notebooks, and validation."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from workbench.config.schema import (
    BudgetConfig,
    CostConfig,
    DataConfig,
    ModelConfig,
    MoEConfig,
    PrecisionConfig,
    TrackingConfig,
    TrainConfig,
    TrainerConfig,
)
from workbench.config.validate import ConfigError, compose_error_message, validate

__all__ = [
    "BudgetConfig",
    "ConfigError",
    "CostConfig",
    "DataConfig",
    "ModelConfig",
    "MoEConfig",
    "PrecisionConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrainerConfig",
    "compose",
    "compose_dictconfig",
    "to_object",
    "validate",
]


def compose_dictconfig(experiment: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/train.yaml (+ an experiment preset and overrides) as Hydra's CLI would.

    Raises ConfigError with a one-line message on an unknown key, a wrong type or a missing option.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from workbench.config.store import register_configs
    from workbench.paths import conf_dir

    register_configs()
    all_overrides = ([f"+experiment={experiment}"] if experiment else []) + list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=all_overrides)
    except Exception as exc:  # Hydra wraps OmegaConf errors; both become one line here
        raise ConfigError(compose_error_message(exc)) from exc


def to_object(cfg: DictConfig) -> TrainConfig:
    """The typed TrainConfig behind a composed DictConfig (interpolations resolved, Hydra's node dropped)."""
    cfg = cfg.copy()
    with __import__("omegaconf").open_dict(cfg):
        cfg.pop("hydra", None)
    try:
        obj = OmegaConf.to_object(cfg)
    except Exception as exc:
        raise ConfigError(compose_error_message(exc)) from exc
    assert isinstance(obj, TrainConfig)
    return obj


def compose(experiment: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Compose, type and validate a run config: the notebook entry point to the same configs as train.py."""
    cfg = to_object(compose_dictconfig(experiment, overrides))
    validate(cfg)
    return cfg
