"""Compose `conf/` with Hydra into the typed root config, with one-line errors built from exception attributes.

`conf/train.yaml` lists `train_schema` first in its defaults, so every group's YAML merges into a typed node
(`model` into ModelConfig, ...): an unknown key, a wrong type or a value outside a closed choice fails while
the config composes. Cross-field rules run after this, in `workbench.preflight`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    try:
        with _hydra_state_kept():
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
                return hydra_compose(config_name="train", overrides=all_overrides)
    except Exception as exc:  # Hydra wraps OmegaConf errors; both become one line here
        raise ConfigError(compose_error_message(exc)) from exc


@contextmanager
def _hydra_state_kept():
    """GlobalHydra as it was before: composing inside a running `@hydra.main` job (a run naming itself by
    how it differs from its preset) must not leave the app's Hydra cleared or replaced."""
    from hydra.core.global_hydra import GlobalHydra

    app = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        if app is not None:
            GlobalHydra.instance().initialize(app)


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


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'d_model': 64}} -> {'model.d_model': 64}; lists become their string form."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


# Keys that say where a run is written, cached or shown, not what it trains: never part of a run's label
# (data workers change no result: the data stage is identical for any number of them).
UNLABELLED = (
    "name",
    "output_dir",
    "ckpt_path",
    "tracking.",
    "tags.",
    "trainer.progress_bar",
    "data.cache_dir",
    "data.num_workers",
    "data.mixture.workers",
)


def trained_values(cfg: TrainConfig) -> dict[str, Any]:
    """The flattened resolved config minus the UNLABELLED keys: what a run of `cfg` trains."""
    return {k: v for k, v in flatten(to_container(cfg)).items() if not k.startswith(UNLABELLED)}


@functools.lru_cache(maxsize=32)
def _preset_values(experiment: str | None, debug: bool) -> dict[str, Any]:
    overrides = ["+debug=default"] if debug else []
    return flatten(to_container(to_object(compose_dictconfig(experiment, overrides))))


def preset_changes(cfg: TrainConfig) -> tuple[bool, dict[str, Any]]:
    """(debug size, {key: value}): how `cfg` differs from the preset its `name` names, as short as it can be
    said -- against the preset, or against the preset at `+debug=default` when that explains more of it.

    A name that is no preset (`name=mine`, a config built in Python) is compared with conf/train.yaml alone.
    """
    experiment = None if cfg.name == "default" else cfg.name
    values = trained_values(cfg)
    if str(cfg.model.ffn) != "moe":  # a dense run has no MoE settings to show
        values = {k: v for k, v in values.items() if not k.startswith("moe.")}
    best: tuple[bool, dict[str, Any]] | None = None
    for debug in (False, True):
        try:
            preset = _preset_values(experiment, debug)
        except ConfigError:  # not a preset: compare with the root config
            preset = _preset_values(None, debug)
        changed = {k: v for k, v in values.items() if preset.get(k, _ABSENT) != v}
        if best is None or len(changed) < len(best[1]):
            best = (debug, changed)
    assert best is not None
    return best


_ABSENT = object()


def run_label(cfg: TrainConfig, limit: int = 4) -> str:
    """The MLflow run name of `cfg`: its preset and the values that differ from it, e.g.
    `moe_top2 capacity_factor=1.0` or `moe_switch debug top_k=2 seed=1`.

    A key is shown by its last part (`moe.capacity_factor` as `capacity_factor`) unless two changed keys end
    alike; past `limit` values the rest is counted (`+3 more`).
    """
    debug, changed = preset_changes(cfg)
    last = [key.rsplit(".", 1)[-1] for key in changed]
    shown = [
        f"{short if last.count(short) == 1 else key}={_short_value(value)}"
        for (key, value), short in zip(changed.items(), last, strict=True)
    ]
    words = [cfg.name, *(["debug"] if debug else []), *shown[:limit]]
    if len(shown) > limit:
        words.append(f"+{len(shown) - limit} more")
    return " ".join(words)


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_short_value(v) for v in value) + "]"
    return "null" if value is None else str(value)


DIGEST_TAG = "workbench.config_digest"


def config_digest(cfg: TrainConfig) -> str:
    """A content key of what `cfg` trains: SHA-256 of its resolved values, minus the keys that only say where
    it is written or shown (UNLABELLED). Runs with equal digests trained the same thing (the report reuses
    them); the tag DIGEST_TAG carries it on every run."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(trained_values(cfg), sort_keys=True, default=str).encode()).hexdigest()
