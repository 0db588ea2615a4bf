"""Compose `conf/` with Hydra into the typed root config, with one-line errors built from exception attributes.

`conf/train.yaml` lists `train_schema` first in its defaults, so every group's YAML merges into a typed node
(`model` into ModelConfig, ...): an unknown key, a wrong type or a value outside a closed choice fails while
the config composes. Cross-field rules run after this, in `workbench.preflight`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from workbench.config.errors import ConfigError
from workbench.config.params import key_of, omegaconf_message, unknown_key
from workbench.config.schema import TrainConfig


def conf_dir() -> Path:
    """The `conf/` folder of this checkout (Hydra's config search path)."""
    return Path(__file__).resolve().parents[2] / "conf"


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def compose_error_message(exc: BaseException) -> str:
    """One line naming the key (or group option) a Hydra/OmegaConf composition error is about."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        if group:
            return f"{group}={option}: no such option; available: {', '.join(exc.options or []) or '(none)'}"
        return f"{option}: no such config"
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    if isinstance(cause, OmegaConfBaseException):
        return omegaconf_message(cause, schema=TrainConfig)
    if isinstance(exc, OverrideParseException):
        return "override syntax: " + " ".join(str(exc).split())
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def compose_dictconfig(experiment: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/train.yaml (+ an experiment preset and overrides) as Hydra's CLI would.

    Raises ConfigError with a one-line message on an unknown key, a wrong type or a missing option.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    all_overrides = ([f"+experiment={experiment}"] if experiment else []) + list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=all_overrides)
    except Exception as exc:  # Hydra wraps OmegaConf errors; both become one line here
        raise ConfigError(compose_error_message(exc)) from exc


def _reject_extra_keys(node: DictConfig, where: str = "") -> None:
    """`+model.foo=1` adds a key to a typed node and OmegaConf keeps it as a stray attribute; refuse it."""
    schema = node._metadata.object_type
    if dataclasses.is_dataclass(schema):
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in fields:
                raise ConfigError(str(unknown_key(key_of(where, key), fields)))
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _reject_extra_keys(child, key_of(where, key))


def to_object(cfg: DictConfig) -> TrainConfig:
    """The typed TrainConfig behind a composed DictConfig (interpolations resolved, Hydra's node dropped)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    _reject_extra_keys(cfg)
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(compose_error_message(exc)) from exc
    assert isinstance(obj, TrainConfig)
    return obj


def to_container(cfg: TrainConfig) -> dict:
    """The resolved config as plain Python (Enum members as their values): what MLflow params, config.yaml and
    checkpoints record, and what `OmegaConf.structured` reads back."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)  # type: ignore[return-value]
