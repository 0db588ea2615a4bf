"""Typed configs: schemas and closed choices, composition with Hydra, and the one parameter-checking helper.

This package imports nothing else of the workbench; each component validates its own slice and
`workbench.preflight` runs them all (README "Layout").
"""

from __future__ import annotations

from workbench.config.compose import (
    compose_dictconfig,
    compose_error_message,
    conf_dir,
    register_configs,
    to_container,
    to_object,
)
from workbench.config.errors import ConfigError, NonFiniteLoss, RunFailure, Unavailable
from workbench.config.params import bounded, check_fields, parse
from workbench.config.schema import (
    BudgetConfig,
    CostConfig,
    DataConfig,
    MixtureConfig,
    ModelConfig,
    MoEConfig,
    PrecisionConfig,
    RouterConfig,
    SourceConfig,
    TrackingConfig,
    TrainConfig,
    TrainerConfig,
)

__all__ = [
    "BudgetConfig",
    "ConfigError",
    "CostConfig",
    "DataConfig",
    "MixtureConfig",
    "ModelConfig",
    "NonFiniteLoss",
    "RunFailure",
    "Unavailable",
    "MoEConfig",
    "PrecisionConfig",
    "RouterConfig",
    "SourceConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrainerConfig",
    "bounded",
    "check_fields",
    "compose_dictconfig",
    "compose_error_message",
    "conf_dir",
    "parse",
    "register_configs",
    "to_container",
    "to_object",
]
