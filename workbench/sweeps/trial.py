"""One trial: suggest its parameters, compose its training config, train it (pruning on the way), and
record the outcome in the Optuna trial; its MLflow runs follow `workbench.tracking.sweep_runs`."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna_integration import PyTorchLightningPruningCallback

from workbench.config.errors import ConfigError, failure_reason
from workbench.sweeps.spec import SweepSpec, sample_overrides
from workbench.tracking.sweep_runs import (
    close_seeds_run,
    find_trial_run,
    mean_over_seeds,
    open_seeds_run,
    record_failed_trial,
    trial_run_name,
    trial_tags,
)

# Keys of trial attributes the workbench writes (user attrs are visible in optuna-dashboard).
REASON = "workbench.fail_reason"
HEARTBEAT = "workbench.heartbeat"
STALE = "workbench.stale"
WORKER = "workbench.worker"
RUN_ID = "workbench.mlflow_run_id"
METRIC = "metric:"  # prefix of the tracked final metrics
STEPS = "workbench.train_steps"
DUPLICATE = "workbench.duplicate_of"


class SpecError(ConfigError):
    """A mistake in the study spec that every trial would repeat (a metric no run produces): the study stops."""


class StepPruning(PyTorchLightningPruningCallback):
    """optuna-integration's Lightning pruning callback, reporting at the training step.

    The stock callback reports at `current_epoch`, but workbench runs validate every N steps inside one long
    epoch, so every report would land on step 0. Here each validation reports at `global_step`, and a pruned
    trial stops training cleanly (`trainer.should_stop`) so its run keeps its metrics and cost so far; the
    objective raises TrialPruned afterwards. Trials run on one device (the spec checks it), so the DDP path
    of the parent class is not needed.
    """

    def __init__(self, trial: optuna.trial.Trial, monitor: str, where: str | None = None) -> None:
        super().__init__(trial, monitor)
        self.where = where or f"pruner.monitor={monitor}"  # names the metric's source in the error
        self.stop_reason: str | None = None
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            produced = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val/")))
            raise SpecError(
                f"{self.where}: this run produces no such validation metric; produced: {produced}"
            )
        step = trainer.global_step
        value = float(score)
        if not math.isfinite(value):
            return  # a NaN validation loss ends the trial as failed through the training-loss check
        self._trial.report(value, step=step)
        if trainer.max_steps > 0 and step >= trainer.max_steps:
            return  # the budget is spent: the trial completes with its result, nothing is left to save
        if self._trial.should_prune():
            self.pruned_at = step
            self.stop_reason = f"pruned at step {step} ({self.monitor}={value:.4f})"
            trainer.should_stop = True


class Heartbeat:
    """Records `workbench.heartbeat` (wall-clock seconds) on a running trial every `interval` seconds.

    Optuna's own heartbeat serves RDB storages only; journal files need one too, so the workbench keeps its
    own for every storage. Another worker fails a trial whose heartbeat is older than the grace period.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"heartbeat-{trial_id}")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT, time.time())
            except Exception:  # the trial finished (or was failed by another worker) meanwhile
                return

    def __enter__(self) -> Heartbeat:
        self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tracking_uri(spec: SweepSpec) -> str | None:
    """The MLflow store the study's training config names (`tracking.tracking_uri`), for the study's own runs
    (parent, per-trial, failure records), so that they land beside the trials' training runs; None: the
    default store. A sampled parameter cannot change it: it is read from the spec's fixed overrides."""
    from workbench.preflight import compose

    return compose(spec.experiment, list(spec.overrides)).tracking.tracking_uri


def suggest(spec: SweepSpec, trial: optuna.trial.Trial) -> dict[str, Any]:
    """Suggest every parameter that is active given the ones suggested before it (conditional spaces)."""
    values: dict[str, Any] = {}
    for p in spec.params:
        if not p.active(values):
            continue
        if p.type == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.type == "int":
            values[p.name] = trial.suggest_int(
                p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
            )
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return values


@dataclass
class TrialOutcome:
    state: optuna.trial.TrialState
    values: list[float] | None
    metrics: dict[str, float]
    reason: str | None = None
    pruned_at: int | None = None


def run_trial(
    spec: SweepSpec,
    trial: optuna.trial.Trial,
    parent_run_id: str | None,
    out_root: str,
) -> TrialOutcome:
    """Train one trial's configuration (once per seed) and return its outcome. Never raises for a failed
    run: the failure becomes the outcome with its reason, so the study goes on."""
    from workbench.preflight import compose
    from workbench.runner import run

    values = suggest(spec, trial)
    if spec.reuse_duplicates:
        # Training is deterministic for a seed, so a configuration the study has completed is not re-trained
        # (samplers over small categorical spaces propose repeats); the trial records the earlier result.
        done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        twin = next((t for t in done if t.params == values), None)
        if twin is not None:
            trial.set_user_attr(DUPLICATE, twin.number)
            trial.set_user_attr(STEPS, 0)
            metrics = {
                m: twin.user_attrs[METRIC + m]
                for m in spec.tracked_metrics()
                if METRIC + m in twin.user_attrs
            }
            for m, v in metrics.items():
                trial.set_user_attr(METRIC + m, v)
            return TrialOutcome(optuna.trial.TrialState.COMPLETE, list(twin.values), metrics)
    name = trial_run_name(spec.study_name, trial.number)
    tags = trial_tags(spec.study_name, trial.number)
    seed_results: list[dict[str, float]] = []
    steps = 0
    trial_run_id = parent_run_id
    seeds_parent = None
    try:
        base = compose(spec.experiment, sample_overrides(spec, values))
        if spec.seeds > 1 and base.tracking.enabled:
            seeds_parent = open_seeds_run(
                base.tracking.experiment_name,
                spec.study_name,
                trial.number,
                values,
                spec.seeds,
                base.name,
                parent_run_id,
                base.tracking.tracking_uri,
            )
            trial_run_id = seeds_parent.run_id
        for i in range(spec.seeds):
            seed = base.seed + i
            suffix = f"/seed{seed}" if spec.seeds > 1 else ""
            overrides = [
                *sample_overrides(spec, values),
                f"seed={seed}",
                f"output_dir={out_root}/trial{trial.number:04d}{suffix}",
                f"tracking.run_name={name}" + (f"-s{seed}" if spec.seeds > 1 else ""),
                "trainer.progress_bar=false",
            ]
            cfg = compose(spec.experiment, overrides)
            run_tags = {**cfg.tags, **tags, **({"mlflow.parentRunId": trial_run_id} if trial_run_id else {})}
            cfg = dataclasses.replace(cfg, tags=run_tags)
            # Pruning watches the first seed only: later seeds of a surviving configuration run to the end.
            pruning = (
                StepPruning(trial, spec.monitor, f"{spec.path}: {spec.monitor_key}")
                if spec.monitor and i == 0
                else None
            )
            result = run(cfg, print_summary=False, callbacks=[pruning] if pruning else [])
            steps += int(
                result.metrics.get("cost/tokens", 0) // max(1, cfg.data.batch_size * cfg.data.seq_len)
            )
            if i == 0 and result.run_id:
                trial.set_user_attr(RUN_ID, seeds_parent.run_id if seeds_parent else result.run_id)
            seed_results.append(result.metrics)
            if pruning is not None and pruning.pruned_at is not None:
                trial.set_user_attr(STEPS, steps)
                close_seeds_run(seeds_parent, seed_results, "KILLED")
                return TrialOutcome(
                    optuna.trial.TrialState.PRUNED,
                    None,
                    result.metrics,
                    pruning.stop_reason,
                    pruning.pruned_at,
                )
    except SpecError:
        if seeds_parent is not None:
            seeds_parent.fail_quietly("the study stopped on a spec mistake")
        raise
    except KeyboardInterrupt:
        if seeds_parent is not None:
            seeds_parent.fail_quietly("interrupted", killed=True)
        raise
    except (
        ConfigError
    ) as exc:  # this configuration cannot run (a value the search space allows, the model not)
        return _failed(trial, spec, values, parent_run_id, f"ConfigError: {exc}", seeds_parent, steps)
    except Exception as exc:  # a crashed or diverged run: recorded, and the study goes on
        return _failed(trial, spec, values, parent_run_id, failure_reason(exc), seeds_parent, steps)

    trial.set_user_attr(STEPS, steps)
    metrics = mean_over_seeds(seed_results)
    missing = [m for m in spec.tracked_metrics() if m not in metrics]
    if missing:
        available = ", ".join(sorted(k for k in metrics if "/layer" not in k))
        close_seeds_run(seeds_parent, seed_results, "FAILED")
        raise SpecError(
            f"{spec.path}: metric {missing[0]!r} is not produced by these runs; available: {available}"
        )
    for m in spec.tracked_metrics():
        trial.set_user_attr(METRIC + m, metrics[m])
    values_out = [metrics[o.metric] for o in spec.objectives]
    close_seeds_run(seeds_parent, seed_results, "FINISHED")
    if not all(math.isfinite(v) for v in values_out):
        bad = next(o.metric for o, v in zip(spec.objectives, values_out, strict=True) if not math.isfinite(v))
        return _failed(trial, spec, values, None, f"objective {bad} is {metrics[bad]}", None, steps)
    return TrialOutcome(optuna.trial.TrialState.COMPLETE, values_out, metrics)


def _failed(trial, spec, values, parent_run_id, reason, seeds_parent, steps) -> TrialOutcome:
    trial.set_user_attr(REASON, reason[:2000])
    trial.set_user_attr(STEPS, steps)
    if trial.user_attrs.get(RUN_ID) is None and parent_run_id is not None:
        # The training run (marked FAILED by the runner) if one was created; else a child run with the reason.
        uri = tracking_uri(spec)
        run_id = find_trial_run(parent_run_id, trial.number, uri) or record_failed_trial(
            parent_run_id, spec.study_name, trial.number, values, reason, uri
        )
        if run_id:
            trial.set_user_attr(RUN_ID, run_id)
    if seeds_parent is not None:
        seeds_parent.fail(reason)
    return TrialOutcome(optuna.trial.TrialState.FAIL, None, {}, reason)
