"""Register the root schema with Hydra's ConfigStore.

`conf/train.yaml` lists `train_schema` first in its defaults, so every group's YAML is merged into a typed
node (`model` into ModelConfig, ...): an unknown key or a wrong type fails when the config composes.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from workbench.config.schema import TrainConfig


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
