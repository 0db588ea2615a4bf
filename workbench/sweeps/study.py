"""Run a study: sampler and pruner from the spec, the study created (or resumed) in its storage, one MLflow
parent run, and the trial loop of each worker (heartbeats, stale-trial retries, an exact trial budget shared by
all workers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from workbench.config import ConfigError
from workbench.paths import project_root, resolve_path
from workbench.sweeps import trial as T
from workbench.sweeps.results import SweepResults
from workbench.sweeps.spec import SweepSpec, grid_key, load_spec
from workbench.sweeps.storage import (
    INTERRUPTED,
    PARENT,
    SPEC_ERROR,
    SPEC_FAILED,
    counts,
    open_storage,
    resolve_storage,
)
from workbench.sweeps.ui import StudyProgress, print_trial
from workbench.tracking.sweep_runs import close_trial_run, find_trial_run, tag_trial_run

SPACE = "workbench.space"


# -- study -------------------------------------------------------------------------------------------------


def make_sampler(spec: SweepSpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    s = spec.sampler
    seed = s.seed + seed_offset
    kw: dict[str, Any] = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.type == "tpe":
        conditional = any(p.when for p in spec.params)
        # group=True: TPE models each conditional sub-space jointly instead of warning on missing params
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=conditional, **kw)
    if s.type == "nsga2":
        pop = {} if s.population_size is None else {"population_size": s.population_size}
        return optuna.samplers.NSGAIISampler(seed=seed, **pop)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=seed, **kw)
    # random, and grid: grid points are enqueued; the sampler only fills what a grid point leaves open
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(p.n_startup_trials, p.n_warmup_steps, p.interval_steps)
    if p.type == "percentile":
        return optuna.pruners.PercentilePruner(
            p.percentile, p.n_startup_trials, p.n_warmup_steps, p.interval_steps
        )
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(p.min_resource, "auto", p.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(spec: SweepSpec, storage_url: str, seed_offset: int = 0) -> optuna.Study:
    """Create the study, or load it to resume; refuse to mix trials of a different search space."""
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = open_storage(storage_url)
    directions = [o.direction for o in spec.objectives]
    n_before = 0
    if spec.study_name in optuna.get_all_study_names(storage):
        existing = optuna.load_study(study_name=spec.study_name, storage=storage)
        theirs = existing.user_attrs.get(SPACE)
        c = counts(existing.get_trials(deepcopy=False))
        if theirs and theirs != spec.space_fingerprint() and c["done"] == 0 and c["running"] == 0:
            theirs = None  # nothing finished yet (a spec mistake stopped it): the corrected spec takes over
            existing.set_user_attr(SPACE, spec.space_fingerprint())
            existing.set_user_attr("workbench.spec", spec.as_dict())
        if [d.name.lower() for d in existing.directions] != directions or (
            theirs and theirs != spec.space_fingerprint()
        ):
            raise ConfigError(
                f"{spec.path}: study '{spec.study_name}' in {storage_url} was created from a different base "
                f"config, search space or objectives; set study_name=<new name> or storage=<other>"
            )
        n_before = len(existing.trials)
    # A resumed study reseeds by its size, so a seeded random sampler does not replay the configurations
    # it has already run; several workers get distinct offsets.
    sampler = make_sampler(spec, seed_offset + 7919 * n_before)
    study = optuna.create_study(
        study_name=spec.study_name,
        storage=storage,
        sampler=sampler,
        pruner=make_pruner(spec),
        directions=directions,
        load_if_exists=True,
    )
    if SPACE not in study.user_attrs:
        study.set_user_attr(SPACE, spec.space_fingerprint())
        study.set_user_attr("workbench.spec", spec.as_dict())
    study.set_user_attr("workbench.objectives", [o.metric for o in spec.objectives])
    if study.metric_names != [o.metric for o in spec.objectives]:  # optuna-dashboard's axis names
        study.set_metric_names([o.metric for o in spec.objectives])
    return study


def fail_stale_trials(study: optuna.Study, spec: SweepSpec) -> list[int]:
    """Fail every running trial without a heartbeat for `grace_s` and enqueue its retry (at most `max_retry`
    times per configuration). Safe when several workers do it at once: only the one whose state change wins
    enqueues the retry."""
    now = time.time()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.system_attrs.get(T.HEARTBEAT)
        last = float(beat) if beat is not None else t.datetime_start.timestamp()
        if now - last <= spec.grace_s:
            continue
        reason = f"worker {t.user_attrs.get(T.WORKER, '?')} sent no heartbeat for {now - last:.0f} s (grace_s={spec.grace_s:g})"
        if retire_trial(study, spec, t, reason, T.STALE):
            failed.append(t.number)
    return failed


def retire_trial(
    study: optuna.Study, spec: SweepSpec, t: optuna.trial.FrozenTrial, reason: str, kind: str
) -> bool:
    """End a trial that produced no result through no fault of its configuration, and queue its
    configuration again: `kind` T.STALE (its worker died; FAIL, retried at most `max_retry` times) or
    INTERRUPTED (Ctrl-C / SIGTERM; FAIL, always re-run). Neither counts against the trial budget. Its MLflow
    run, if one was opened, is closed FAILED (stale) or KILLED (interrupted) with the reason. Returns False
    when another process finished the trial first (it then did all of this)."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(t._trial_id, kind, True)
        storage.set_trial_user_attr(t._trial_id, T.REASON, reason)
        won = storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    except (UpdateFinishedTrialError, RuntimeError):
        return False  # another worker (or the trial itself) finished it first
    if won is False:
        return False
    history = [*t.system_attrs.get("retry_history", []), t.number]
    if kind == INTERRUPTED or len(history) <= spec.max_retry:
        # Like optuna's RetryHeartbeatStaleTrialCallback, without copying the dead trial's attributes.
        study.add_trial(
            optuna.create_trial(
                state=TrialState.WAITING,
                params=t.params,
                distributions=t.distributions,
                system_attrs={"failed_trial": history[0], "retry_history": history},
                user_attrs={"workbench.retry_of": t.number},
            )
        )
    close_trial_run(
        study.user_attrs.get(PARENT),
        t.number,
        t.user_attrs.get(T.RUN_ID),
        reason,
        killed=kind == INTERRUPTED,
        tracking_uri=T.tracking_uri(spec),
    )
    return True


def enqueue_grid(study: optuna.Study, spec: SweepSpec) -> int:
    """Enqueue every grid point the study has not run, is not running and has not queued; returns how many."""
    retried = (T.STALE, INTERRUPTED, SPEC_FAILED)  # re-queued by retire_trial, or not a result of the point
    seen = {
        grid_key(t.params)
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.FAIL
        or (T.REASON in t.user_attrs and not any(t.user_attrs.get(k) for k in retried))
    }
    added = 0
    for point in spec.grid():
        if grid_key(point) not in seen:
            study.enqueue_trial(point, skip_if_exists=False)
            added += 1
    return added


def trial_budget(spec: SweepSpec) -> int | None:
    if spec.sampler.type == "grid":
        size = len(spec.grid())
        return size if spec.n_trials is None else min(spec.n_trials, size)
    return spec.n_trials


def ensure_parent_run(spec: SweepSpec, study: optuna.Study, storage_url: str) -> str | None:
    """The study's MLflow parent run: created once, found again (and reopened) on resume."""
    from workbench.config.compose import flatten
    from workbench.preflight import compose
    from workbench.tracking.sweep_runs import open_study_run

    base = compose(spec.experiment, list(spec.overrides))
    if not base.tracking.enabled:
        return None
    params = flatten({k: v for k, v in spec.as_dict().items() if k not in ("params", "path", "description")})
    params = {f"sweep.{k}": v for k, v in params.items()}
    params.update({f"space.{p.name}": _describe(p) for p in spec.params})
    session = open_study_run(
        base.tracking.experiment_name,
        spec.study_name,
        spec.path,
        storage_url,
        params,
        study.user_attrs.get(PARENT),
        base.tracking.tracking_uri,
    )
    study.set_user_attr(PARENT, session.run_id)
    return session.run_id


def _describe(p) -> str:
    if p.type == "categorical":
        return f"categorical {list(p.choices)}" + (f" when {dict(p.when)}" if p.when else "")
    scale = " log" if p.log else ""
    step = f" step {p.step:g}" if p.step else ""
    return f"{p.type} [{p.low:g}, {p.high:g}]{scale}{step}" + (f" when {dict(p.when)}" if p.when else "")


# -- the trial loop ----------------------------------------------------------------------------------------


def work(
    spec: SweepSpec,
    study: optuna.Study,
    parent_run_id: str | None,
    deadline: float | None,
    on_trial=None,
    worker_index: int = 0,
) -> int:
    """Run trials until the study holds its trial budget of finished trials (or the deadline passes);
    returns how many this worker ran. `on_trial(frozen_trial)` is called after each. A spec mistake found by
    any worker (SPEC_ERROR on the study) stops every worker with that message."""
    budget = trial_budget(spec)
    out_root = str(resolve_path(f"outputs/sweeps/{spec.study_name}"))
    ran = 0
    while True:
        raise_spec_error(study)
        fail_stale_trials(study, spec)
        c = counts(study.get_trials(deepcopy=False))
        if budget is not None and c["done"] >= budget:
            break
        if deadline is not None and time.time() >= deadline:
            break
        if budget is not None and c["done"] + c["running"] >= budget:
            time.sleep(min(2.0, spec.heartbeat_s))  # the last trials are running elsewhere (or are stale)
            continue
        trial = study.ask()
        try:
            trial.set_user_attr(T.WORKER, worker_id())
            frozen = _run_and_tell(spec, study, trial, parent_run_id, out_root)
        except UpdateFinishedTrialError:
            # Another worker declared this trial dead (no heartbeat for grace_s: a suspended machine, a very
            # long pause) and queued its retry; this result is dropped rather than counted twice.
            print(
                f"note: trial {trial.number} was failed as stale by another worker; its retry counts instead"
            )
            continue
        except KeyboardInterrupt:
            interrupt_trial(study, spec, trial._trial_id)
            raise
        ran += 1
        if on_trial is not None:
            on_trial(frozen)
    return ran


def worker_id(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def interrupt_trial(study: optuna.Study, spec: SweepSpec, trial_id: int) -> bool:
    """Record a running trial as interrupted (not failed, not counted), close its MLflow run KILLED and queue
    its configuration again, so the same command re-runs it."""
    t = study._storage.get_trial(trial_id)
    if t.state != TrialState.RUNNING:
        return False
    return retire_trial(
        study, spec, t, "interrupted (Ctrl-C or SIGTERM); the same command re-runs it", INTERRUPTED
    )


def raise_spec_error(study: optuna.Study) -> None:
    message = study._storage.get_study_user_attrs(study._study_id).get(SPEC_ERROR)
    if message:
        raise ConfigError(message)


def _run_and_tell(spec, study, trial, parent_run_id, out_root) -> optuna.trial.FrozenTrial:
    """Train one trial and record its outcome (state, values, reason) in the study and its MLflow run."""
    values: dict[str, Any] = {}
    try:
        with T.Heartbeat(study._storage, trial._trial_id, spec.heartbeat_s):
            outcome = T.run_trial(spec, trial, parent_run_id, out_root)
            values = dict(trial.params)
    except T.SpecError as exc:
        # Every trial would repeat it: this one is not counted, and every worker stops with the message.
        trial.set_user_attr(T.REASON, str(exc))
        trial.set_user_attr(SPEC_FAILED, True)
        study.set_user_attr(SPEC_ERROR, str(exc))
        study.tell(trial, state=TrialState.FAIL)
        uri = T.tracking_uri(spec)
        close_trial_run(
            parent_run_id,
            trial.number,
            trial.user_attrs.get(T.RUN_ID),
            str(exc),
            killed=False,
            tracking_uri=uri,
        )
        run_id = trial.user_attrs.get(T.RUN_ID) or (
            parent_run_id and find_trial_run(parent_run_id, trial.number, uri)
        )
        tag_trial_run(run_id, TrialState.FAIL.name, dict(trial.params), uri)
        raise
    if outcome.state == TrialState.COMPLETE:
        frozen = study.tell(trial, outcome.values)
    else:
        if outcome.pruned_at is not None:
            trial.set_user_attr("workbench.pruned_at", outcome.pruned_at)
        if outcome.state == TrialState.PRUNED:
            for m in spec.tracked_metrics():
                if m in outcome.metrics:
                    trial.set_user_attr(T.METRIC + m, outcome.metrics[m])
        frozen = study.tell(trial, state=outcome.state)
    tag_trial_run(frozen.user_attrs.get(T.RUN_ID), frozen.state.name, values, T.tracking_uri(spec))
    return frozen


# -- entry points ------------------------------------------------------------------------------------------


def run_sweep(
    spec_path: str | Path,
    overrides: Sequence[str] = (),
    workers: int = 1,
    progress: bool = True,
    worker_index: int | None = None,
    quiet: bool = False,
):
    """Run (or resume) the study a spec describes; returns its SweepResults. The Python API of `sweep.py`.

    `progress=False` drops the bar but keeps a line per trial and the final table; `quiet=True` prints nothing.
    """
    if workers < 1:
        raise ConfigError(f"--workers={workers} must be >= 1")
    spec = load_spec(spec_path, overrides)
    started = time.time()
    deadline = started + spec.timeout_s if spec.timeout_s else None
    if worker_index is not None:  # a worker process started by a launcher: the study and parent exist
        study = open_study(spec, spec.storage, seed_offset=worker_index)
        work(
            spec,
            study,
            study.user_attrs.get(PARENT),
            deadline,
            print_trial(spec, prefix=f"[w{worker_index}] "),
            worker_index,
        )
        return None

    url = resolve_storage(spec, workers)
    study = open_study(spec, url)
    if study.user_attrs.get(SPEC_ERROR):  # the command was run again, presumably with the mistake fixed
        study.set_user_attr(SPEC_ERROR, None)
    if spec.sampler.type == "grid":
        enqueue_grid(study, spec)
    parent = ensure_parent_run(spec, study, url)
    budget = trial_budget(spec)
    before = counts(study.get_trials(deepcopy=False))
    if before["done"] and not quiet:
        print(f"resuming study '{spec.study_name}' ({url}): {before['done']} of {budget or '-'} trials done")
    finished = False
    try:
        with StudyProgress(spec, study, budget, enabled=progress and not quiet, lines=not quiet) as bar:
            if workers == 1:
                work(spec, study, parent, deadline, bar.on_trial)
            else:
                launch_workers(spec, spec_path, overrides, url, workers, bar, study)
        finished = budget is None or counts(study.get_trials(deepcopy=False))["done"] >= budget
    finally:
        results = SweepResults(study, spec, storage_url=url, parent_run_id=parent)
        results.finalize(finished=finished, elapsed_s=time.time() - started, print_table=not quiet)
    return results


STOP_TIMEOUT_S = 30.0  # how long interrupted workers may take to record their trials before SIGKILL
MAX_RESPAWNS = 3  # per worker slot: a worker killed by a signal is restarted this many times


def launch_workers(spec, spec_path, overrides, url: str, workers: int, bar, study: optuna.Study) -> None:
    """Start N worker processes on the shared storage (one GPU each when there are GPUs), follow the study
    from its storage, and wait for them. A worker's output goes to outputs/sweeps/<study>/worker<i>.log.

    A worker killed by a signal (kill -9, the OOM killer) has its running trial retried at once and is
    restarted (MAX_RESPAWNS per slot). Ctrl-C / SIGTERM of the launcher is forwarded to the workers (SIGTERM,
    which they treat as Ctrl-C); they record their trials as interrupted within STOP_TIMEOUT_S, or are
    killed and the launcher records those trials. A spec mistake found by one worker stops them all.
    """
    log_dir = resolve_path(f"outputs/sweeps/{spec.study_name}")
    log_dir.mkdir(parents=True, exist_ok=True)
    gpus = _gpu_ids()
    logs = [open(log_dir / f"worker{i}.log", "a") for i in range(workers)]  # noqa: SIM115 - closed below

    def start(i: int) -> subprocess.Popen:
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        elif "OMP_NUM_THREADS" not in env:
            # CPU workers share the cores: N workers x all-core thread pools thrash (3x slower measured on 2 cores)
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        cmd = [
            sys.executable,
            "-m",
            "workbench.sweeps",
            str(resolve_path(str(spec_path))),
            *overrides,
            f"storage={url}",
            "--worker-index",
            str(i),
        ]
        return subprocess.Popen(cmd, env=env, stdout=logs[i], stderr=subprocess.STDOUT, cwd=project_root())

    procs = [start(i) for i in range(workers)]
    respawns = [0] * workers
    ended: list[int] = []  # pids of workers that are gone
    try:
        while [p.poll() for p in procs].count(None):  # every worker polled (any() would stop at the first)
            bar.poll()
            if study._storage.get_study_user_attrs(study._study_id).get(SPEC_ERROR):
                break
            for i, p in enumerate(procs):
                if p.returncode is not None and p.returncode < 0 and respawns[i] < MAX_RESPAWNS:
                    name = signal.Signals(-p.returncode).name
                    retire_worker_trials(study, spec, [p.pid], f"worker {i} was killed ({name})", T.STALE)
                    ended.append(p.pid)
                    respawns[i] += 1
                    print(
                        f"note: worker {i} was killed ({name}); its trial is retried and the worker restarted"
                    )
                    procs[i] = start(i)
            time.sleep(0.5)
        bar.poll()
    except KeyboardInterrupt:
        stop_workers(procs)
        retire_worker_trials(
            study,
            spec,
            [p.pid for p in procs],
            "interrupted (Ctrl-C or SIGTERM); the same command re-runs it",
        )
        raise
    finally:
        stop_workers(procs)  # a no-op when they have all exited
        for log in logs:
            log.close()
    pids = [*ended, *(p.pid for p in procs)]
    retire_worker_trials(study, spec, pids, "its worker exited without finishing it", T.STALE)
    raise_spec_error(study)
    for i, p in enumerate(procs):
        if p.returncode:
            print(f"worker {i} exited with status {p.returncode}; see {log_dir / f'worker{i}.log'}")


def stop_workers(procs: Sequence[subprocess.Popen], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every running worker, wait up to `timeout_s` for all, SIGKILL the rest. A second Ctrl-C
    while waiting kills them at once."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.send_signal(signal.SIGTERM)
    end = time.time() + timeout_s
    try:
        while any(p.poll() is None for p in alive) and time.time() < end:
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    for p in alive:
        if p.poll() is None:
            p.kill()
            p.wait()


def retire_worker_trials(
    study: optuna.Study, spec: SweepSpec, pids: Sequence[int], reason: str, kind: str = INTERRUPTED
) -> list[int]:
    """Retire the RUNNING trials of workers `pids` of this host (gone now): interrupted or stale."""
    owners = {worker_id(pid) for pid in pids}
    done = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(T.WORKER) in owners and retire_trial(study, spec, t, reason, kind):
            done.append(t.number)
    return done


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []
