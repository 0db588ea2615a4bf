"""Study specs: `sweeps/*.yaml` parsed into typed dataclasses and checked before any trial runs.

A spec names a base experiment and fixed overrides, a search space, the objectives, the sampler and pruner,
the trial budget and the storage. Every error is one line that names the file and the key, like a training
config error. Command-line overrides either set a spec field (`n_trials=8`, `sampler.type=grid`), pin a
searched parameter (`moe.drop_policy=position` removes it from the search space), or are passed to every
trial's training config (`budget.tokens=200000`, `+debug=default`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench.config import ConfigError

SAMPLERS = ("tpe", "nsga2", "random", "grid", "gp")
PRUNERS = ("median", "percentile", "hyperband", "none")
PARAM_TYPES = ("float", "int", "categorical")
DIRECTIONS = ("minimize", "maximize")
# Final metrics every run returns (workbench.run); moe/* and data/* exist for MoE runs and filtered data.
METRIC_PREFIXES = ("val/", "train/", "cost/", "moe/", "data/", "model.")
MAX_GRID = 10_000


@dataclass(frozen=True)
class Param:
    """One searched dimension. A `categorical` may map labels to override bundles (`{dropless: {moe.dropless:
    true}}`); `when` makes it conditional on earlier parameters' values."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    bundles: Mapping[str, Mapping[str, Any]] | None = None  # label -> {training key: value}
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def overrides(self, value: Any) -> list[str]:
        """The training overrides one value of this parameter stands for."""
        if self.bundles is not None:
            return [f"{k}={override_value(v)}" for k, v in self.bundles[value].items()]
        return [f"{self.name}={override_value(value)}"]

    def active(self, params: Mapping[str, Any]) -> bool:
        return all(params.get(k, _MISSING) in allowed for k, allowed in self.when.items())

    def grid_values(self) -> list[Any]:
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None and self.type == "float":
            raise ConfigError(f"params.{self.name}: a grid over a float needs `step` (or use a categorical)")
        step = self.step or 1
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(n)]
        return [int(v) for v in values] if self.type == "int" else [round(v, 12) for v in values]


_MISSING = object()


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str = "minimize"


@dataclass(frozen=True)
class SamplerSpec:
    type: str = "tpe"  # TPE is Optuna's default for one and for several objectives (Optuna 5)
    seed: int = 0
    n_startup_trials: int | None = (
        None  # random trials before TPE/GP model the space (None: Optuna's default)
    )
    population_size: int | None = None  # NSGA-II generation size (None: Optuna's default, 50)


@dataclass(frozen=True)
class PrunerSpec:
    type: str = "median"
    monitor: str | None = (
        None  # validation metric reported at every validation (None: the first val/ objective)
    )
    n_startup_trials: int = 3  # trials that run to the end before any pruning
    n_warmup_steps: int = 0  # training steps before a trial can be pruned
    interval_steps: int = 1
    percentile: float = 25.0  # percentile pruner: prune below this percentile of earlier trials
    min_resource: int = 1  # Hyperband, in training steps
    reduction_factor: int = 3


@dataclass(frozen=True)
class SweepSpec:
    """A validated study spec (see sweeps/*.yaml)."""

    path: str
    study_name: str
    experiment: str
    overrides: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    objectives: tuple[Objective, ...] = (Objective("val/bpb"),)
    pareto: tuple[Objective, ...] = ()  # the cost-vs-quality pair of the printed front
    report: tuple[str, ...] = ()  # extra metric columns kept per trial
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    n_trials: int | None = 20
    timeout_s: float | None = None
    storage: str | None = None
    seeds: int = 1  # training seeds per configuration; the objective is their mean
    heartbeat_s: float = 10.0  # a running trial records a heartbeat this often ...
    grace_s: float = 60.0  # ... and is failed (and retried) when none arrived for this long
    max_retry: int = 1  # retries of a trial whose worker died
    reuse_duplicates: bool = True  # a configuration already completed is recorded again, not re-trained
    description: str = ""

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def monitor(self) -> str | None:
        """The validation metric reported at every validation (the learning curves in Optuna's plots and the
        pruner's input); None for multi-objective studies, which Optuna does not let report."""
        if self.multi_objective:
            return None
        if self.pruner.monitor:
            return self.pruner.monitor
        return next((o.metric for o in self.objectives if o.metric.startswith("val/")), "val/bpb")

    def tracked_metrics(self) -> list[str]:
        seen = [o.metric for o in (*self.objectives, *self.pareto)] + list(self.report)
        return list(dict.fromkeys(seen))

    def space_fingerprint(self) -> str:
        """Hash of what makes trials comparable: base config, search space and objectives."""
        body = {
            "experiment": self.experiment,
            "overrides": list(self.overrides),
            "params": [dataclasses.asdict(p) for p in self.params],
            "objectives": [dataclasses.asdict(o) for o in self.objectives],
            "seeds": self.seeds,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def grid(self) -> list[dict[str, Any]]:
        """Every point of the (conditional) search space, in spec order; for `sampler.type=grid`."""
        points: list[dict[str, Any]] = [{}]
        for p in self.params:
            values = p.grid_values()
            nxt = []
            for point in points:
                nxt.extend({**point, p.name: v} for v in values) if p.active(point) else nxt.append(point)
            points = nxt
            if len(points) > MAX_GRID:
                raise ConfigError(f"{self.path}: the grid has more than {MAX_GRID} points; narrow params")
        return points

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def override_value(value: Any) -> str:
    """A Python value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[\w./:+@-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"  # quoted: spaces, commas, brackets


# -- parsing -----------------------------------------------------------------------------------------------

_TOP_KEYS = {f.name for f in dataclasses.fields(SweepSpec)} - {"path"}
_SECTION = {"sampler": SamplerSpec, "pruner": PrunerSpec}


def _err(path: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def _typed(path: str, key: str, value: Any, kind: type | tuple[type, ...], allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds) + (" or null" if allow_none else "")
        raise _err(path, f"{key}={value!r} must be {names}")
    return value


def _section(path: str, name: str, raw: Any, cls: type) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise _err(path, f"{name} must be a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise _err(path, f"unknown key '{name}.{key}'; allowed: {', '.join(fields)}")
        default = getattr(cls(), key)
        kind: Any = str if key in ("type", "monitor") else (float if isinstance(default, float) else int)
        kwargs[key] = _typed(path, f"{name}.{key}", value, kind, allow_none=default is None)
    return cls(**kwargs)


def _objectives(path: str, key: str, raw: Any) -> tuple[Objective, ...]:
    if isinstance(raw, Mapping | str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _err(path, f"{key} must be a list of {{metric, direction}}")
    out = []
    for i, item in enumerate(raw):
        item = {"metric": item} if isinstance(item, str) else item
        if not isinstance(item, Mapping) or set(item) - {"metric", "direction"} or "metric" not in item:
            raise _err(path, f"{key}[{i}] must be {{metric: <name>, direction: minimize|maximize}}")
        metric, direction = str(item["metric"]), str(item.get("direction", "minimize"))
        _check_metric(path, f"{key}[{i}].metric", metric)
        if direction not in DIRECTIONS:
            raise _err(
                path, f"{key}[{i}].direction={direction!r} is not allowed; choose one of: minimize, maximize"
            )
        out.append(Objective(metric, direction))
    return tuple(out)


def _check_metric(path: str, key: str, metric: str) -> None:
    if not metric.startswith(METRIC_PREFIXES):
        raise _err(
            path,
            f"{key}={metric!r} is not a run metric; names start with {', '.join(METRIC_PREFIXES)} "
            "(for example val/bpb, cost/train_flops, cost/usd, cost/tokens_per_s)",
        )


def _param(path: str, name: str, raw: Any, earlier: Mapping[str, Param]) -> Param:
    key = f"params.{name}"
    if not isinstance(raw, Mapping):
        raise _err(path, f"{key} must be a mapping with a `type` ({', '.join(PARAM_TYPES)})")
    allowed = {"type", "low", "high", "log", "step", "choices", "when"}
    for k in raw:
        if k not in allowed:
            raise _err(path, f"unknown key '{key}.{k}'; allowed: {', '.join(sorted(allowed))}")
    kind = raw.get("type", "categorical" if "choices" in raw else None)
    if kind not in PARAM_TYPES:
        raise _err(path, f"{key}.type={kind!r} is not allowed; choose one of: {', '.join(PARAM_TYPES)}")
    when = _when(path, key, raw.get("when"), earlier)
    if kind == "categorical":
        for k in ("low", "high", "log", "step"):
            if k in raw:
                raise _err(path, f"{key}.{k} is not allowed for a categorical; list `choices`")
        choices = raw.get("choices")
        if isinstance(choices, Mapping):
            if not choices or not all(isinstance(v, Mapping) and v for v in choices.values()):
                raise _err(path, f"{key}.choices: each label must map to a non-empty {{training key: value}}")
            labels = tuple(str(c) for c in choices)
            bundles = {str(label): dict(v) for label, v in choices.items()}
            return Param(name, kind, choices=labels, bundles=bundles, when=when)
        if not isinstance(choices, list) or not choices:
            raise _err(path, f"{key}.choices must be a non-empty list (or a mapping of label -> overrides)")
        if len({json.dumps(c, sort_keys=True) for c in choices}) != len(choices):
            raise _err(path, f"{key}.choices has duplicates: {choices}")
        for c in choices:
            if not (c is None or isinstance(c, bool | int | float | str)):
                raise _err(path, f"{key}.choices: {c!r} must be a number, string, bool or null")
        return Param(name, kind, choices=tuple(choices), when=when)
    if "choices" in raw:
        raise _err(path, f"{key}.choices is only for type: categorical")
    num: type = int if kind == "int" else float
    low = _typed(path, f"{key}.low", raw.get("low"), num)
    high = _typed(path, f"{key}.high", raw.get("high"), num)
    log = bool(_typed(path, f"{key}.log", raw.get("log", False), bool))
    step = _typed(path, f"{key}.step", raw.get("step"), num, allow_none=True)
    if not low < high:
        raise _err(path, f"{key}.low={low} must be < {key}.high={high}")
    if log and low <= 0:
        raise _err(path, f"{key}.low={low} must be > 0 on a log scale")
    if step is not None and (step <= 0 or log):
        raise _err(path, f"{key}.step={step} must be > 0 and cannot be combined with log: true")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _when(path: str, key: str, raw: Any, earlier: Mapping[str, Param]) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        raise _err(path, f"{key}.when must map an earlier parameter to a value or a list of values")
    out = {}
    for other, values in raw.items():
        if other not in earlier:
            raise _err(path, f"{key}.when names '{other}', which is not a parameter listed before it")
        values = tuple(values) if isinstance(values, list) else (values,)
        if earlier[other].type == "categorical":
            allowed = earlier[other].choices
            for v in values:
                if v not in allowed:
                    raise _err(path, f"{key}.when.{other}={v!r} is not one of its choices {list(allowed)}")
        out[other] = values
    return out


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """tree["sampler"]["type"] = value for "sampler.type" (creating or replacing non-mapping levels)."""
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read, apply command-line overrides to, and validate a study spec; ConfigError names the bad key."""
    from workbench.paths import resolve_path

    file = resolve_path(str(path))
    shown = str(path)
    if not file.is_file():
        raise ConfigError(f"{shown}: no such study spec (see sweeps/*.yaml)")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise _err(shown, "invalid YAML: " + " ".join(str(exc).split())) from exc
    if not isinstance(raw, dict):
        raise _err(shown, "a study spec is a mapping (experiment, params, objectives, ...)")
    raw.setdefault("params", {})
    raw.setdefault("overrides", [])
    pinned: list[str] = []
    for ov in overrides:
        if "=" not in ov:
            raise _err(shown, f"override {ov!r} must be key=value")
        key, text = ov.split("=", 1)
        top = key.split(".")[0]
        if top in _TOP_KEYS and top not in ("params", "overrides"):
            _set_dotted(raw, key, yaml.safe_load(text) if text else None)
        elif key in raw["params"]:
            raw["params"].pop(key)  # pinned: the value comes from the override below
            pinned.append(ov)
            raw["overrides"] = [*raw["overrides"], ov]
        else:
            raw["overrides"] = [*raw["overrides"], ov]

    for key in raw:
        if key not in _TOP_KEYS:
            raise _err(shown, f"unknown key '{key}'; allowed: {', '.join(sorted(_TOP_KEYS))}")
    if "experiment" not in raw:
        raise _err(shown, "missing key 'experiment' (the base preset, for example moe_top2)")
    experiment = _typed(shown, "experiment", raw["experiment"], str)
    fixed = raw.get("overrides") or []
    if not isinstance(fixed, list) or not all(isinstance(o, str) for o in fixed):
        raise _err(shown, "overrides must be a list of key=value strings")
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, Mapping):
        raise _err(shown, "params must map a name (a training key or a label) to its range")
    params: dict[str, Param] = {}
    for name, body in params_raw.items():
        params[str(name)] = _param(shown, str(name), body, params)

    objectives = _objectives(shown, "objectives", raw.get("objectives", [{"metric": "val/bpb"}]))
    default_pareto = objectives if len(objectives) == 2 else (objectives[0], Objective("cost/train_flops"))
    pareto = _objectives(shown, "pareto", raw["pareto"]) if raw.get("pareto") else default_pareto
    if len(pareto) != 2:
        raise _err(shown, f"pareto must list exactly two metrics (quality, cost), got {len(pareto)}")
    report = raw.get("report") or []
    if not isinstance(report, list):
        raise _err(shown, "report must be a list of metric names")
    for i, m in enumerate(report):
        _check_metric(shown, f"report[{i}]", str(m))

    sampler = _section(shown, "sampler", raw.get("sampler"), SamplerSpec)
    pruner = _section(shown, "pruner", raw.get("pruner"), PrunerSpec)
    if sampler.type not in SAMPLERS:
        raise _err(
            shown, f"sampler.type={sampler.type!r} is not allowed; choose one of: {', '.join(SAMPLERS)}"
        )
    if pruner.type not in PRUNERS:
        raise _err(shown, f"pruner.type={pruner.type!r} is not allowed; choose one of: {', '.join(PRUNERS)}")
    if len(objectives) > 1 and pruner.type != "none":
        raise _err(
            shown,
            f"pruner.type={pruner.type}: Optuna prunes single-objective studies only; "
            "set pruner.type=none or keep one objective (list costs under `pareto`)",
        )
    if pruner.monitor is not None and not pruner.monitor.startswith("val/"):
        raise _err(shown, f"pruner.monitor={pruner.monitor!r} must be a validation metric (val/...)")
    if not 0 < pruner.percentile < 100:
        raise _err(shown, f"pruner.percentile={pruner.percentile} must be in (0, 100)")

    spec = SweepSpec(
        path=shown,
        study_name=str(raw.get("study_name") or file.stem),
        experiment=experiment,
        overrides=tuple(fixed),
        params=tuple(params.values()),
        objectives=objectives,
        pareto=pareto,
        report=tuple(str(m) for m in report),
        sampler=sampler,
        pruner=pruner,
        n_trials=_typed(shown, "n_trials", raw.get("n_trials", 20), int, allow_none=True),
        timeout_s=_typed(shown, "timeout_s", raw.get("timeout_s"), float, allow_none=True),
        storage=_typed(shown, "storage", raw.get("storage"), str, allow_none=True),
        seeds=_typed(shown, "seeds", raw.get("seeds", 1), int),
        heartbeat_s=_typed(shown, "heartbeat_s", raw.get("heartbeat_s", 10.0), float),
        grace_s=_typed(shown, "grace_s", raw.get("grace_s", 60.0), float),
        max_retry=_typed(shown, "max_retry", raw.get("max_retry", 1), int),
        reuse_duplicates=_typed(shown, "reuse_duplicates", raw.get("reuse_duplicates", True), bool),
        description=str(raw.get("description") or ""),
    )
    for key in ("n_trials", "timeout_s", "seeds", "heartbeat_s", "grace_s"):
        value = getattr(spec, key)
        if value is not None and value <= 0:
            raise _err(shown, f"{key}={value} must be > 0")
    if spec.max_retry < 0:
        raise _err(shown, f"max_retry={spec.max_retry} must be >= 0")
    if spec.grace_s <= spec.heartbeat_s:
        raise _err(shown, f"grace_s={spec.grace_s} must be > heartbeat_s={spec.heartbeat_s}")
    if spec.n_trials is None and spec.timeout_s is None and spec.sampler.type != "grid":
        raise _err(shown, "n_trials and timeout_s are both null; set at least one")
    if not spec.params:
        raise _err(shown, "params is empty: nothing to search")
    if spec.sampler.type == "grid":
        spec.grid()  # floats without a step fail here
    check_training(spec)
    return spec


def check_training(spec: SweepSpec) -> None:
    """Compose the base config, and each parameter at its extremes and choices, so a bad key or value in
    the search space fails now with the training config's own one-line message."""
    from workbench.preflight import compose

    def attempt(extra: list[str], where: str) -> None:
        try:
            cfg = compose(spec.experiment, [*spec.overrides, *extra])
        except ConfigError as exc:
            raise _err(spec.path, f"{where}: {exc}") from exc
        if cfg.trainer.devices != 1:
            raise _err(
                spec.path,
                f"{where}: trainer.devices={cfg.trainer.devices}; a trial uses one device "
                "(run several workers with --workers N instead)",
            )

    attempt([], "experiment/overrides")
    for p in spec.params:
        values = list(p.choices) if p.type == "categorical" else [p.low, p.high]
        for v in values:
            attempt(p.overrides(v), f"params.{p.name}={v!r}")


def sample_overrides(spec: SweepSpec, values: Mapping[str, Any]) -> list[str]:
    """Training overrides for one trial: fixed overrides, then each active parameter's."""
    out = list(spec.overrides)
    for p in spec.params:
        if p.name in values:
            out.extend(p.overrides(values[p.name]))
    return out


def grid_key(values: Mapping[str, Any]) -> str:
    return json.dumps({k: values[k] for k in sorted(values)}, sort_keys=True, default=str)


__all__ = [
    "Objective",
    "Param",
    "PrunerSpec",
    "SamplerSpec",
    "SweepSpec",
    "grid_key",
    "load_spec",
    "override_value",
    "sample_overrides",
]
