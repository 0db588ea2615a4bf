"""Study specs: `sweeps/*.yaml` as typed dataclasses, merged by OmegaConf and checked before any trial runs.

`SpecFile` is what a spec file may say. The file (with the command-line overrides applied) goes through one
strict structured merge into it, so an unknown key, a wrong type or a closed choice outside its Enum fails
with the training config's one-line message (`workbench.config.params`), prefixed with the file:

    sweeps/aux_loss.yaml: pruner.typ: unknown key; keys allowed in pruner: type, monitor, ...
    sweeps/x.yaml: params.moe.capacity_factor.low=2.0 must be < high=1.0

Rules between fields live in the `check` methods. `SweepSpec` is the checked spec as a study runs it: each
parameter named and normalised (`Param`), the objectives and the Pareto pair resolved. Command-line overrides
set a spec field (`n_trials=8`, `sampler.type=grid`), pin a searched parameter (`moe.drop_policy=position`
removes it from the search space), or are passed to every trial's training config (`budget.tokens=200000`,
`+debug=default`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from workbench.config import ConfigError, bounded
from workbench.config.params import choices, hinted, key_of, must, not_allowed, parse, show, unknown_key

# Final metrics every run returns (workbench.run); moe/* and data/* exist for MoE runs and filtered data.
METRIC_PREFIXES = ("val/", "train/", "cost/", "moe/", "data/", "model.")
MAX_GRID = 10_000


class SamplerType(StrEnum):
    tpe = "tpe"  # Optuna's default for one and for several objectives (Optuna 5)
    nsga2 = "nsga2"
    random = "random"
    grid = "grid"  # every point of the conditional space, enqueued in spec order
    gp = "gp"


class PrunerType(StrEnum):
    median = "median"
    percentile = "percentile"
    hyperband = "hyperband"
    none = "none"


class ParamType(StrEnum):
    float = "float"
    int = "int"
    categorical = "categorical"


class Direction(StrEnum):
    minimize = "minimize"
    maximize = "maximize"


def check_metric(key: str, metric: str) -> None:
    if not metric.startswith(METRIC_PREFIXES):
        raise must(
            key,
            metric,
            f"a run metric, a name starting with {', '.join(METRIC_PREFIXES)} "
            "(for example val/bpb, cost/train_flops, cost/usd, cost/tokens_per_s)",
        )


# -- the schema of a spec file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """One metric of the study's result and which way is better; also an entry of `pareto`."""

    metric: str = MISSING  # a final metric of the run (README "Metrics"), e.g. val/bpb, cost/usd
    direction: Direction = Direction.minimize

    def check(self, where: str) -> None:
        check_metric(key_of(where, "metric"), self.metric)


@dataclass
class SamplerSpec:
    type: SamplerType = SamplerType.tpe
    seed: int = 0  # a resumed study or a second worker offsets it (workbench.sweeps.study.open_study)
    # random trials before TPE/GP model the space (None: Optuna's default)
    n_startup_trials: int | None = bounded(None, ge=0)
    population_size: int | None = bounded(None, ge=2)  # NSGA-II generation size (None: Optuna's default, 50)


@dataclass
class PrunerSpec:
    type: PrunerType = PrunerType.median
    # the validation metric reported at every validation (None: the first val/ objective)
    monitor: str | None = None
    n_startup_trials: int = bounded(3, ge=0)  # trials that run to the end before any pruning
    n_warmup_steps: int = bounded(0, ge=0)  # training steps before a trial can be pruned
    interval_steps: int = bounded(1, gt=0)
    percentile: float = bounded(25.0, gt=0, lt=100)  # percentile pruner: prune below this percentile
    min_resource: int = bounded(1, gt=0)  # Hyperband, in training steps
    reduction_factor: int = bounded(3, ge=2)  # Hyperband

    def check(self, where: str) -> None:
        if self.monitor is not None and not self.monitor.startswith("val/"):
            raise must(key_of(where, "monitor"), self.monitor, "a validation metric (val/...)")


@dataclass
class ParamSpec:
    """One searched dimension, under its name in `params`: a training key (`moe.capacity_factor`), or a label
    whose `choices` map to override bundles (`capacity: {choices: {dropless: {moe.dropless: true}}}`)."""

    type: ParamType | None = None  # None: categorical when `choices` are listed
    low: float | None = None  # float and int: the range [low, high]
    high: float | None = None
    log: bool = False  # sample on a log scale (low > 0)
    step: float | None = None  # a discrete range low, low + step, ...; sampler.type=grid needs it for a float
    # categorical: a list of values (numbers, strings, booleans, null), or label -> {training key: value}
    choices: Any = None
    # active only when earlier parameters take these values: {name: value or [values]}
    when: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> ParamType | None:
        return ParamType.categorical if self.type is None and self.choices is not None else self.type

    def choice_values(self) -> tuple[Any, ...]:
        """A categorical's values (its labels for bundles); () for a range."""
        if isinstance(self.choices, Mapping):
            return tuple(str(label) for label in self.choices)
        return tuple(self.choices) if isinstance(self.choices, list) else ()

    def check(self, where: str) -> None:
        kind = self.kind
        if kind is None:
            raise ConfigError(f"{where}.type is not set; choose one of: {', '.join(choices(ParamType))}")
        if kind == ParamType.categorical:
            self._check_choices(where)
            return
        if self.choices is not None:
            raise must(
                f"{where}.choices", self.choices, f"null for type {kind} (choices are for a categorical)"
            )
        for name in ("low", "high"):
            if getattr(self, name) is None:
                raise ConfigError(f"{where}.{name} is not set; a {kind} range needs low and high")
        if kind == ParamType.int:
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                if value is not None and not float(value).is_integer():
                    raise must(f"{where}.{name}", value, "an integer")
        if not self.low < self.high:
            raise must(f"{where}.low", self.low, f"< high={show(self.high)}")
        if self.log and self.low <= 0:
            raise must(f"{where}.low", self.low, "> 0 on a log scale")
        if self.step is not None and self.step <= 0:
            raise must(f"{where}.step", self.step, "> 0")
        if self.step is not None and self.log:
            raise must(f"{where}.step", self.step, "null on a log scale (Optuna does not step one)")

    def _check_choices(self, where: str) -> None:
        for name in ("low", "high", "step"):
            if getattr(self, name) is not None:
                raise must(
                    f"{where}.{name}", getattr(self, name), "null for a categorical (list its choices)"
                )
        if self.log:
            raise must(f"{where}.log", True, "false for a categorical")
        key = f"{where}.choices"
        if isinstance(self.choices, Mapping):
            if not self.choices:
                raise must(key, {}, "a non-empty mapping of label -> {training key: value}")
            for label, bundle in self.choices.items():
                if not isinstance(bundle, Mapping) or not bundle:
                    raise must(f"{key}.{label}", bundle, "a non-empty mapping of training key -> value")
            return
        if not isinstance(self.choices, list) or not self.choices:
            raise must(key, self.choices, "a non-empty list (or a mapping of label -> {training key: value})")
        for i, c in enumerate(self.choices):
            if not (c is None or isinstance(c, bool | int | float | str)):
                raise must(f"{key}[{i}]", c, "a number, a string, true/false or null")
        if len({json.dumps(c, sort_keys=True) for c in self.choices}) != len(self.choices):
            raise must(key, self.choices, "distinct values")

    def to_param(self, name: str) -> Param:
        when = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in self.when.items()}
        kind = self.kind
        assert kind is not None  # checked
        if kind == ParamType.categorical:
            bundles = None
            if isinstance(self.choices, Mapping):
                bundles = {str(label): dict(b) for label, b in self.choices.items()}
            return Param(name, kind, choices=self.choice_values(), bundles=bundles, when=when)
        num = int if kind == ParamType.int else float
        step = None if self.step is None else num(self.step)
        return Param(name, kind, low=num(self.low), high=num(self.high), log=self.log, step=step, when=when)


@dataclass
class SpecFile:
    """A study spec file (sweeps/*.yaml): the base config, the search space, what to optimise, and how."""

    description: str = ""
    experiment: str = hinted("the base preset, for example moe_top2")  # a conf/experiment/ preset
    overrides: list[str] = field(default_factory=list)  # training overrides for every trial
    params: dict[str, ParamSpec] = field(default_factory=dict)  # in order: `when` names earlier ones
    # a metric name, {metric, direction}, or a list of them; several make a multi-objective study
    objectives: Any = "val/bpb"
    # the (quality, cost) pair of the printed front; None: the two objectives, or the objective vs FLOPs
    pareto: Any = None
    report: list[str] = field(default_factory=list)  # extra metric columns kept per trial
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    n_trials: int | None = bounded(20, gt=0)  # finished trials over every run and worker (None: no limit)
    timeout_s: float | None = bounded(None, gt=0)  # no trial starts after this many seconds
    seeds: int = bounded(1, gt=0)  # training seeds per configuration; the objective is their mean
    # `journal:<file>` or an SQLAlchemy URL; None: SQLite in the project, a journal file for several workers
    storage: str | None = None
    study_name: str | None = None  # None: the file's name without .yaml
    heartbeat_s: float = bounded(10.0, gt=0)  # a running trial records a heartbeat this often ...
    grace_s: float = bounded(60.0, gt=0)  # ... and is failed (and retried) when none arrived for this long
    max_retry: int = bounded(1, ge=0)  # retries of a trial whose worker died
    reuse_duplicates: bool = True  # a configuration already completed is recorded again, not re-trained

    def objective_list(self) -> tuple[Objective, ...]:
        return _objectives(self.objectives, "objectives")

    def pareto_pair(self) -> tuple[Objective, ...]:
        if self.pareto is None or self.pareto == []:
            objectives = self.objective_list()
            return objectives if len(objectives) == 2 else (objectives[0], Objective("cost/train_flops"))
        return _objectives(self.pareto, "pareto")

    def check(self, where: str) -> None:
        if not self.params:
            raise ConfigError(f"{key_of(where, 'params')} is empty: nothing to search")
        earlier: dict[str, tuple[Any, ...]] = {}  # name -> its values (() for a range)
        for name, p in self.params.items():
            at = f"{key_of(where, 'params')}.{name}"
            p.check(at)
            for other, values in p.when.items():
                if other not in earlier:
                    raise unknown_key(
                        f"{at}.when.{other}",
                        earlier,
                        "`when` names a parameter listed before it",
                        f"{at}.when",
                    )
                for v in values if isinstance(values, list) else [values]:
                    if earlier[other] and v not in earlier[other]:
                        raise not_allowed(f"{at}.when.{other}", v, earlier[other])
            if self.sampler.type == SamplerType.grid and p.kind == ParamType.float and p.step is None:
                raise ConfigError(
                    f"{at}.step is not set; sampler.type=grid needs a step for a float (or list choices)"
                )
            earlier[name] = p.choice_values()
        objectives = self.objective_list()
        pareto = self.pareto_pair()
        if len(pareto) != 2:
            raise must(
                key_of(where, "pareto"), [o.metric for o in pareto], "exactly two metrics (quality, cost)"
            )
        for i, metric in enumerate(self.report):
            check_metric(f"{key_of(where, 'report')}[{i}]", metric)
        self.pruner.check(key_of(where, "pruner"))
        if len(objectives) > 1 and self.pruner.type != PrunerType.none:
            refused = not_allowed(key_of(where, "pruner.type"), self.pruner.type, [PrunerType.none])
            raise ConfigError(
                f"{refused} (Optuna prunes single-objective studies only; keep one objective and list costs "
                "under `pareto`)"
            )
        if self.grace_s <= self.heartbeat_s:
            raise must(key_of(where, "grace_s"), self.grace_s, f"> heartbeat_s={show(self.heartbeat_s)}")
        if self.n_trials is None and self.timeout_s is None and self.sampler.type != SamplerType.grid:
            raise ConfigError("n_trials and timeout_s are both null; set at least one")

    def to_spec(self, path: str, default_name: str) -> SweepSpec:
        return SweepSpec(
            path=path,
            study_name=self.study_name or default_name,
            experiment=self.experiment,
            overrides=tuple(self.overrides),
            params=tuple(p.to_param(name) for name, p in self.params.items()),
            objectives=self.objective_list(),
            pareto=self.pareto_pair(),
            report=tuple(self.report),
            sampler=self.sampler,
            pruner=self.pruner,
            n_trials=self.n_trials,
            timeout_s=self.timeout_s,
            storage=self.storage,
            seeds=self.seeds,
            heartbeat_s=self.heartbeat_s,
            grace_s=self.grace_s,
            max_retry=self.max_retry,
            reuse_duplicates=self.reuse_duplicates,
            description=self.description,
        )


def _objectives(value: Any, key: str) -> tuple[Objective, ...]:
    """`val/bpb`, `{metric: val/bpb}` or a list of either, each parsed into an Objective."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise must(key, [], "a metric, {metric, direction}, or a non-empty list of them")
    return tuple(
        parse(Objective, {"metric": item} if isinstance(item, str) else item, f"{key}[{i}]")
        for i, item in enumerate(items)
    )


# -- the checked spec, as a study runs it ------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched dimension, named and normalised: a categorical's `choices` are its values or labels (with
    `bundles`: label -> {training key: value}), and `when` maps an earlier parameter to its allowed values."""

    name: str
    type: ParamType
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    bundles: Mapping[str, Mapping[str, Any]] | None = None
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def overrides(self, value: Any) -> list[str]:
        """The training overrides one value of this parameter stands for."""
        if self.bundles is not None:
            return [f"{k}={override_value(v)}" for k, v in self.bundles[value].items()]
        return [f"{self.name}={override_value(value)}"]

    def active(self, params: Mapping[str, Any]) -> bool:
        return all(params.get(k, _MISSING) in allowed for k, allowed in self.when.items())

    def grid_values(self) -> list[Any]:
        if self.type == ParamType.categorical:
            return list(self.choices)
        if self.step is None and self.type == ParamType.float:
            raise ConfigError(f"params.{self.name}: a grid over a float needs `step` (or use a categorical)")
        step = self.step or 1
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(n)]
        return [int(v) for v in values] if self.type == ParamType.int else [round(v, 12) for v in values]


_MISSING = object()


@dataclass(frozen=True)
class SweepSpec:
    """A checked study spec (fields as in `SpecFile`, which documents them)."""

    path: str
    study_name: str
    experiment: str
    overrides: tuple[str, ...]
    params: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    pareto: tuple[Objective, ...]
    report: tuple[str, ...]
    sampler: SamplerSpec
    pruner: PrunerSpec
    n_trials: int | None
    timeout_s: float | None
    storage: str | None
    seeds: int
    heartbeat_s: float
    grace_s: float
    max_retry: int
    reuse_duplicates: bool
    description: str

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

    @property
    def monitor_key(self) -> str:
        """Where the monitored metric was named (for the message when no run produces it)."""
        if self.pruner.monitor:
            return f"pruner.monitor={self.monitor}"
        if any(o.metric == self.monitor for o in self.objectives):
            return f"objective metric {self.monitor!r}"
        return f"pruner.monitor={self.monitor} (the default)"

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
        """Plain values (Enum members as their values), as the study and its MLflow parent run record them."""
        return dataclasses.asdict(
            self, dict_factory=lambda items: {k: v.value if isinstance(v, Enum) else v for k, v in items}
        )


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


# -- loading -----------------------------------------------------------------------------------------------

# Keys a command-line override sets in the spec itself; `params` and `overrides` are changed by pinning.
_SPEC_KEYS = {f.name for f in dataclasses.fields(SpecFile)} - {"params", "overrides"}


def _read(file: Path, shown: str) -> dict[str, Any]:
    try:
        raw = OmegaConf.to_container(OmegaConf.load(file))  # YAML as the training configs read it
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"{shown}: invalid YAML: " + " ".join(str(exc).split())) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown}: a study spec is a mapping (experiment, params, objectives, ...)")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], shown: str) -> dict[str, Any]:
    """The spec with command-line overrides applied: `key=value` sets a spec field (`n_trials=8`,
    `sampler.type=grid`); a key naming a searched parameter pins it (it leaves `params`, and the override
    joins `overrides`); anything else joins `overrides`, the training overrides of every trial."""
    extra = []
    for ov in overrides:
        key, eq, _ = ov.partition("=")
        if not eq:
            raise ConfigError(f"{shown}: override {ov!r} must be key=value")
        if key.split(".")[0] in _SPEC_KEYS:  # no parameter name reaches OmegaConf's dotted keys
            try:
                raw = OmegaConf.to_container(OmegaConf.merge(raw, OmegaConf.from_dotlist([ov])))
            except (yaml.YAMLError, OmegaConfBaseException) as exc:
                raise ConfigError(f"{shown}: override {ov!r}: " + " ".join(str(exc).split())) from None
            continue
        params = raw.get("params")
        if isinstance(params, dict) and key in params:
            params.pop(key)  # pinned: the value comes from the training override
        extra.append(ov)
    if extra and isinstance(raw.get("overrides", []), list | None):
        raw["overrides"] = [*(raw.get("overrides") or []), *extra]
    return raw


def _literal(tree: Any) -> Any:
    """Strings as written: a `${...}` is for the trials' training config, where Hydra resolves it, so it is
    escaped from OmegaConf's interpolation here."""
    if isinstance(tree, str):
        return tree.replace("${", "\\${")
    if isinstance(tree, dict):
        return {k: _literal(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_literal(v) for v in tree]
    return tree


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read, apply command-line overrides to, and check a study spec; ConfigError names the file and key."""
    from workbench.paths import resolve_path

    file = resolve_path(str(path))
    shown = str(path)
    if not file.is_file():
        raise ConfigError(f"{shown}: no such study spec (see sweeps/*.yaml)")
    raw = apply_overrides(_read(file, shown), overrides, shown)
    spec = parse(SpecFile, _literal(raw), "", file=shown).to_spec(shown, file.stem)
    if spec.sampler.type == SamplerType.grid:
        spec.grid()  # refuses a grid past MAX_GRID points
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
            raise ConfigError(f"{spec.path}: {where}: {exc}") from exc
        if cfg.trainer.devices != 1:
            raise ConfigError(
                f"{spec.path}: {where}: trainer.devices={cfg.trainer.devices}; a trial uses one device "
                "(run several workers with --workers N instead)"
            )

    attempt([], "experiment/overrides")
    for p in spec.params:
        values = list(p.choices) if p.type == ParamType.categorical else [p.low, p.high]
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
    "Direction",
    "Objective",
    "Param",
    "ParamSpec",
    "ParamType",
    "PrunerSpec",
    "PrunerType",
    "SamplerSpec",
    "SamplerType",
    "SpecFile",
    "SweepSpec",
    "apply_overrides",
    "check_training",
    "grid_key",
    "load_spec",
    "override_value",
    "sample_overrides",
]
