"""Sweeps: spec validation, grids over conditional spaces, Pareto fronts, stale-trial retries, and whole
studies on the debug model (pruning, failures, resume, MLflow parent/child runs, parallel and killed workers)."""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from workbench.config import ConfigError
from workbench.sweeps import trial as T
from workbench.sweeps.results import SweepResults, non_dominated
from workbench.sweeps.spec import Objective, load_spec
from workbench.sweeps.storage import INTERRUPTED, PARENT, SPEC_FAILED, counts, open_storage
from workbench.sweeps.study import fail_stale_trials, make_pruner, open_study, run_sweep
from workbench.tracking.session import TrackingSession
from workbench.tracking.sweep_runs import trial_run_name, trial_tags

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "sweeps").glob("*.yaml"))


def write_spec(tmp_path: Path, name: str = "study", **body) -> Path:
    spec = {
        "experiment": "moe_debug",
        "overrides": ["budget.steps=20", "trainer.val_every_n_steps=5"],
        "params": {"trainer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "sampler": {"type": "random", "seed": 0},
        "pruner": {"type": "none"},
        "n_trials": 4,
    }
    spec.update(body)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def sweep_env(tmp_path, monkeypatch, data_cache, tracking_uri):
    """A private project root (outputs, default storages) and MLflow store; the shared data cache."""
    monkeypatch.setenv("WORKBENCH_ROOT", str(tmp_path))
    return [f"data.cache_dir={data_cache}"]


# -- specs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_provided_specs_validate(path):
    spec = load_spec(path)
    assert spec.params and spec.objectives
    assert spec.study_name == path.stem


def test_provided_specs_are_the_three_the_issue_names():
    assert {p.stem for p in SPECS} == {"capacity_factor", "aux_loss", "moe_vs_dense_pareto"}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"n_trial": 3}, "n_trial: unknown key; keys allowed in the root config: description, experiment,"),
        ({"pruner": {"typ": "median"}}, "pruner.typ: unknown key; keys allowed in pruner: type, monitor,"),
        (
            {"params": {"trainer.lr": {"type": "float", "low": 1e-2, "high": 1e-3}}},
            "params.trainer.lr.low=0.01 must be < high=0.001",
        ),
        (
            {"params": {"trainer.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}},
            "must be > 0 on a log scale",
        ),
        (
            {"params": {"trainer.lrr": {"type": "float", "low": 1e-3, "high": 1e-2}}},
            "params.trainer.lrr=0.001",
        ),
        (
            {"params": {"moe.capacity_factor": {"choices": [1.0, -1.0]}}},
            "moe.capacity_factor=-1.0 must be > 0",
        ),
        (
            {"params": {"trainer.lr": {"type": "uniform", "low": 1, "high": 2}}},
            "params.trainer.lr.type='uniform' is not allowed; choose one of: float, int, categorical",
        ),
        ({"params": {"x": {"choices": [1, 2], "when": {"y": 1}}}}, "params.x.when.y: unknown key"),
        ({"objectives": [{"metric": "bpb"}]}, "objectives[0].metric='bpb' must be a run metric"),
        ({"objectives": [{"metric": "val/bpb", "direction": "down"}]}, "objectives[0].direction='down'"),
        (
            {"objectives": ["val/bpb", "cost/usd"], "pruner": {"type": "median"}},
            "Optuna prunes single-objective studies only",
        ),
        (
            {"sampler": {"type": "cmaes"}},
            "sampler.type='cmaes' is not allowed; choose one of: tpe, nsga2, random, grid, gp",
        ),
        ({"n_trials": 0}, "n_trials=0 must be > 0"),
        ({"grace_s": 5, "heartbeat_s": 10}, "grace_s=5.0 must be > heartbeat_s=10.0"),
        ({"experiment": "no_such_preset"}, "experiment/overrides"),
    ],
)
def test_bad_spec_is_one_line_naming_the_key(tmp_path, body, needle):
    path = write_spec(tmp_path, **body)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg
    assert msg.startswith(str(path))


def test_cli_bad_spec_exits_2_with_one_line(tmp_path):
    path = write_spec(tmp_path, params={"trainer.lr": {"type": "float", "low": 1.0, "high": 0.5}})
    proc = subprocess.run([sys.executable, "sweep.py", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: params.trainer.lr.low=1.0 must be < high=0.5" in lines[0]


def test_overrides_set_fields_pin_params_and_reach_training():
    spec = load_spec(
        ROOT / "sweeps/capacity_factor.yaml",
        ["n_trials=3", "sampler.type=grid", "moe.drop_policy=probs", "seed=7"],
    )
    assert spec.n_trials == 3 and spec.sampler.type == "grid"
    assert "moe.drop_policy" not in [p.name for p in spec.params]  # pinned, not searched
    assert spec.overrides[-2:] == ("moe.drop_policy=probs", "seed=7")


@pytest.mark.parametrize(
    ("body", "overrides", "message"),
    [
        # a parameter's name is one key of `params`, dots and all
        (
            {"params": {"moe.capacity_factor": {"type": "float", "low": 2.0, "high": 1.0}}},
            [],
            "params.moe.capacity_factor.low=2.0 must be < high=1.0",
        ),
        (
            {"params": {"moe.capacity_factor": {"type": "float", "low": "abc", "high": 1.0}}},
            [],
            "params.moe.capacity_factor.low='abc' must be a number or null",
        ),
        (
            {"params": {"moe.capacity_factor": {"lo": 1.0, "high": 2.0}}},
            [],
            "params.moe.capacity_factor.lo: unknown key; keys allowed in params.moe.capacity_factor: "
            "type, low, high, log, step, choices, when",
        ),
        (
            {
                "params": {
                    "moe.num_experts": {"choices": [2, 4]},
                    "moe.top_k": {"choices": [1], "when": {"moe.num_experts": 8}},
                }
            },
            [],
            "params.moe.top_k.when.moe.num_experts=8 is not allowed; choose one of: 2, 4",
        ),
        # command-line overrides of spec fields go through the same typed merge
        (
            {},
            ["sampler.type=bogus"],
            "sampler.type='bogus' is not allowed; choose one of: tpe, nsga2, random, grid, gp",
        ),
        ({}, ["pruner.typ=median"], "pruner.typ: unknown key; keys allowed in pruner: type, monitor,"),
        ({}, ["n_trials=many"], "n_trials='many' must be an integer or null"),
        (
            {"sampler": "tpe"},
            [],
            "sampler='tpe' must be a mapping of: type, seed, n_startup_trials, population_size",
        ),
        (
            {
                "params": {"trainer.lr": {"type": "float", "low": 1e-3, "high": 1e-2}},
                "sampler": {"type": "grid"},
            },
            [],
            "params.trainer.lr.step is not set; sampler.type=grid needs a step for a float",
        ),
        (
            {"objectives": ["val/bpb", "cost/usd"], "pruner": {"type": "median"}},
            [],
            "pruner.type='median' is not allowed; choose one of: none (Optuna prunes single-objective",
        ),
        (
            {"pareto": ["val/bpb", "cost/usd", "cost/tokens"]},
            [],
            "pareto=['val/bpb', 'cost/usd', 'cost/tokens'] must be exactly two metrics (quality, cost)",
        ),
    ],
)
def test_spec_errors_read_like_training_config_errors(tmp_path, body, overrides, message):
    path = write_spec(tmp_path, **body)
    with pytest.raises(ConfigError) as info:
        load_spec(path, overrides)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {message}") and "\n" not in msg


def test_overrides_merge_into_nested_fields_and_pin_dotted_params(tmp_path):
    path = write_spec(
        tmp_path,
        params={
            "moe.capacity_factor": {"choices": [1.0, 2.0]},
            "trainer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        },
        sampler={"type": "tpe", "seed": 0, "n_startup_trials": 4},
    )
    spec = load_spec(
        path,
        [
            "sampler.seed=5",
            "pruner.type=percentile",
            "pruner.percentile=40",
            "timeout_s=1e3",
            "moe.capacity_factor=2.0",
            "budget.steps=10",
        ],
    )
    from workbench.sweeps.spec import PrunerType, SamplerType

    # one nested field is set, its siblings keep the file's values; values are typed and closed choices Enums
    assert (spec.sampler.type, spec.sampler.seed, spec.sampler.n_startup_trials) == (SamplerType.tpe, 5, 4)
    assert spec.pruner.type == PrunerType.percentile == "percentile" and spec.pruner.percentile == 40.0
    assert spec.timeout_s == 1000.0 and isinstance(spec.timeout_s, float)
    assert [p.name for p in spec.params] == ["trainer.lr"]  # the dotted parameter is pinned
    assert spec.overrides[-2:] == ("moe.capacity_factor=2.0", "budget.steps=10")


def test_objective_shorthands_and_literal_interpolations(tmp_path):
    path = write_spec(
        tmp_path,
        objectives=["val/bpb", {"metric": "cost/usd"}],
        overrides=["budget.steps=20", "trainer.val_every_n_steps=${budget.steps}"],
        description="${not_for_the_spec}",
    )
    spec = load_spec(path)
    assert spec.objectives == (Objective("val/bpb"), Objective("cost/usd", "minimize"))
    assert spec.pareto == spec.objectives  # two objectives are the Pareto pair
    # `${...}` is left for each trial's training config, where Hydra resolves it
    assert spec.overrides[-1] == "trainer.val_every_n_steps=${budget.steps}"
    assert spec.description == "${not_for_the_spec}"
    single = load_spec(write_spec(tmp_path, objectives="val/loss"))
    assert single.objectives == (Objective("val/loss"),)
    assert single.pareto == (Objective("val/loss"), Objective("cost/train_flops"))
    # the study names its objectives by their metrics (optuna-dashboard labels its axes with them)
    study = open_study(spec, f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.metric_names == ["val/bpb", "cost/usd"]


def test_grid_enumerates_the_conditional_space():
    spec = load_spec(ROOT / "sweeps/capacity_factor.yaml")
    grid = spec.grid()
    # 4 capacity factors x 2 eval factors x 2 drop policies, plus dropless, which has neither
    assert len(grid) == 4 * 2 * 2 + 1
    assert {"capacity": "dropless"} in grid
    pinned = load_spec(ROOT / "sweeps/capacity_factor.yaml", ["moe.drop_policy=position"]).grid()
    assert len(pinned) == 4 * 2 + 1
    point = {"capacity": "1.5", "moe.eval_capacity_factor": None}
    from workbench.sweeps.spec import sample_overrides

    assert sample_overrides(spec, point)[-2:] == ["moe.capacity_factor=1.5", "moe.eval_capacity_factor=null"]


def test_non_dominated_matches_brute_force():
    rng = random.Random(0)
    df = pd.DataFrame({"q": [rng.random() for _ in range(60)], "c": [rng.random() for _ in range(60)]})
    objs = (Objective("q", "minimize"), Objective("c", "maximize"))
    front = set(non_dominated(df, objs).index)
    for i, a in df.iterrows():
        beaten = any(
            b.q <= a.q and b.c >= a.c and (b.q < a.q or b.c > a.c) for j, b in df.iterrows() if j != i
        )
        assert (i in front) == (not beaten)


# -- heartbeats and retries --------------------------------------------------------------------------------


def test_stale_trial_is_failed_once_and_retried_with_its_params(tmp_path, sweep_env, tracking_uri):
    spec = load_spec(
        write_spec(tmp_path, heartbeat_s=1, grace_s=2), [f"storage=journal:{tmp_path / 'j.log'}"]
    )
    study = open_study(spec, spec.storage)
    parent = TrackingSession.start(
        "workbench", "sweep-study", {"optuna.study": spec.study_name}, tracking_uri
    )
    study.set_user_attr(PARENT, parent.run_id)
    dead = study.ask()
    T.suggest(spec, dead)
    child = TrackingSession.start(  # the dead worker's training run, left RUNNING
        "workbench",
        trial_run_name(spec.study_name, dead.number),
        trial_tags(spec.study_name, dead.number),
        tracking_uri,
        parent_run_id=parent.run_id,
    )
    study._storage.set_trial_system_attr(dead._trial_id, T.HEARTBEAT, time.time() - 10)
    other = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec.storage))
    assert fail_stale_trials(study, spec) == [dead.number]
    assert fail_stale_trials(other, spec) == []  # a second worker sees it failed: no second retry
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params
    assert trials[1].system_attrs["failed_trial"] == dead.number
    assert "sent no heartbeat" in trials[0].user_attrs[T.REASON]
    c = counts(trials)
    assert (c["done"], c["lost"], c["waiting"]) == (0, 1, 1)  # the lost trial does not use the budget
    run = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(child.run_id)
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert run.data.tags["workbench.failure_reason"] == trials[0].user_attrs[T.REASON]


# -- whole studies on the debug model ----------------------------------------------------------------------


def _children(uri: str, parent_id: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("workbench")
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return sorted(runs, key=lambda r: int(r.data.tags["optuna.trial_number"]))


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_four_trial_study_then_resume(tmp_path, sweep_env, tracking_uri, capsys):
    path = write_spec(
        tmp_path,
        "cf",
        params={
            "moe.capacity_factor": {"choices": [1.0, 2.0]},
            "trainer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        },
    )
    res = run_sweep(path, sweep_env)
    df = res.trials
    assert list(df["number"]) == [0, 1, 2, 3] and set(df["state"]) == {"COMPLETE"}
    assert (df["train_steps"] == 20).all()
    out = capsys.readouterr().out
    assert "Pareto front, val/bpb vs cost/train_flops" in out and "4 trials: 4 complete" in out

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/complete_trials"] == 4
    artifacts = {a.path for a in client.list_artifacts(res.parent_run_id)}
    assert {
        "sweep_spec.yaml",
        "trials.csv",
        "pareto.csv",
        "best_trials.json",
        "pareto_front.png",
    } <= artifacts
    assert "param_importances.json" in artifacts and "optimization_history.png" in artifacts
    kids = _children(tracking_uri, res.parent_run_id)
    assert [r.data.tags["optuna.trial_number"] for r in kids] == ["0", "1", "2", "3"]
    for r, (_, row) in zip(kids, df.iterrows(), strict=True):
        assert r.data.tags["optuna.state"] == "COMPLETE"
        assert r.data.params["moe.capacity_factor"] == str(row["param:moe.capacity_factor"])
        assert r.data.metrics["val/bpb"] == pytest.approx(row["val/bpb"])
        assert "cost/train_flops" in r.data.metrics
    best = res.study.best_trial.number
    assert res.best["number"].tolist() == [best]

    # the same command with a larger budget resumes: numbering continues, one parent run
    res2 = run_sweep(path, [*sweep_env, "n_trials=6"])
    assert list(res2.trials["number"]) == [0, 1, 2, 3, 4, 5]
    assert res2.parent_run_id == res.parent_run_id
    assert len(_children(tracking_uri, res.parent_run_id)) == 6
    assert "resuming study 'cf'" in capsys.readouterr().out
    # and once the budget is met, it runs nothing
    assert len(run_sweep(path, [*sweep_env, "n_trials=6"]).trials) == 6


def test_pruner_stops_trials_in_a_bad_region(tmp_path, sweep_env, tracking_uri):
    # Grid order is fixed: two good learning rates first (the pruner's startup trials), then a bad region.
    path = write_spec(
        tmp_path,
        "lr",
        params={"trainer.lr": {"choices": [3e-3, 1e-2, 1e-5, 3e-6]}},
        sampler={"type": "grid"},
        pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        n_trials=None,
    )
    res = run_sweep(path, sweep_env)
    df = res.trials.set_index("number")
    assert list(df["state"]) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert (df.loc[[2, 3], "pruned_at"] == 5).all() and (df.loc[[2, 3], "train_steps"] == 5).all()
    kids = _children(tracking_uri, res.parent_run_id)
    assert kids[2].data.tags["optuna.state"] == "PRUNED"
    assert kids[2].data.tags["workbench.stop_reason"].startswith("pruned at step 5 (val/bpb=")
    assert res.summary()["sweep/train_steps"] == 20 + 20 + 5 + 5


def test_a_trial_validated_only_at_its_last_step_completes_even_where_the_pruner_would_prune(
    tmp_path, sweep_env
):
    # The second learning rate is far worse at step 10, the only validation; the median pruner would prune
    # it there, but a trial that has spent its budget keeps its result.
    path = write_spec(
        tmp_path,
        "last",
        overrides=["budget.steps=10", "trainer.val_every_n_steps=10"],
        params={"trainer.lr": {"choices": [3e-3, 1e-5]}},
        sampler={"type": "grid"},
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        n_trials=None,
    )
    res = run_sweep(path, sweep_env, quiet=True)
    trials = res.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.user_attrs[T.STEPS] for t in trials] == [10, 10]
    assert list(trials[1].intermediate_values) == [10] and trials[1].values[0] > trials[0].values[0]
    assert make_pruner(res.spec).prune(res.study, trials[1])  # what the pruner says at that step


def test_a_misspelled_objective_stops_the_study_after_one_trial(tmp_path, sweep_env, tracking_uri):
    path = write_spec(
        tmp_path,
        "typo",
        overrides=["budget.steps=5", "trainer.val_every_n_steps=5"],
        objectives=[{"metric": "val/bpbb"}],
    )
    with pytest.raises(ConfigError) as info:
        run_sweep(path, sweep_env, quiet=True)
    msg = str(info.value)
    # found at the first validation of the first trial, which stops there
    assert (
        msg
        == f"{path}: objective metric 'val/bpbb': this run produces no such validation metric; produced: val/bpb, val/loss"
    )
    study = optuna.load_study(study_name="typo", storage=open_storage(f"sqlite:///{tmp_path / 'optuna.db'}"))
    (trial,) = study.trials  # stopped after the first trial, which is not counted
    assert (
        trial.state == TrialState.FAIL and trial.user_attrs[SPEC_FAILED] and counts(study.trials)["done"] == 0
    )
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    (kid,) = client.search_runs(
        [client.get_experiment_by_name("workbench").experiment_id], "tags.`optuna.trial_number` = '0'"
    )
    assert kid.info.status == "FAILED" and kid.data.tags["optuna.state"] == "FAIL"
    assert kid.data.tags["workbench.failure_reason"].endswith(msg)


def test_cli_misspelled_pruner_metric_exits_2_naming_the_produced_metrics(tmp_path, sweep_env):
    path = write_spec(tmp_path, "prune_typo", pruner={"type": "median", "monitor": "val/bpbb"})
    proc = subprocess.run(
        _sweep_cmd(path, sweep_env), cwd=ROOT, capture_output=True, text=True, env=dict(os.environ)
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"error: {path}: pruner.monitor=val/bpbb: this run produces no such validation metric; "
    )
    assert re.search(r"produced: .*\bval/bpb\b", lines[0])
    study = optuna.load_study(
        study_name="prune_typo", storage=open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    )
    (trial,) = study.trials  # stopped at the first validation of the first trial
    assert trial.state == TrialState.FAIL and trial.user_attrs[SPEC_FAILED]
    assert trial.user_attrs[T.REASON] == lines[0].removeprefix("error: ")


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path, sweep_env, tracking_uri):
    # top_k=4 of 2 experts is invalid only in combination; lr=1e3 diverges to a NaN loss.
    path = write_spec(
        tmp_path,
        "bad",
        params={
            "moe.num_experts": {"choices": [4, 2]},
            "moe.top_k": {"choices": [1, 4]},
            "trainer.lr": {"choices": [3e-3, 1e3]},
        },
        sampler={"type": "grid"},
        n_trials=None,
    )
    res = run_sweep(path, sweep_env)
    df = res.trials.set_index("number")
    assert len(df) == 8
    config_fail = df[df["param:moe.num_experts"].eq(2) & df["param:moe.top_k"].eq(4)]
    nan_fail = df[df["param:trainer.lr"].eq(1e3) & ~df.index.isin(config_fail.index)]
    assert (config_fail["state"] == "FAIL").all() and len(config_fail) == 2
    assert config_fail["reason"].str.contains("moe.top_k=4 > moe.num_experts=2").all()
    assert (nan_fail["state"] == "FAIL").all() and len(nan_fail) == 3
    assert nan_fail["reason"].str.contains("train/total_loss is nan at step").all()
    assert (df.drop(config_fail.index.union(nan_fail.index))["state"] == "COMPLETE").all()
    assert counts(res.study.get_trials())["done"] == 8
    kids = _children(tracking_uri, res.parent_run_id)
    assert len(kids) == 8  # nothing lost: even a config that never trained has its (failed) child run
    failed = [r for r in kids if r.info.status == "FAILED"]
    assert len(failed) == 5 and all(r.data.tags.get("workbench.failure_reason") for r in failed)


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_multi_objective_front_is_non_dominated(tmp_path, sweep_env):
    path = write_spec(
        tmp_path,
        "mo",
        overrides=["trainer.val_every_n_steps=5"],
        params={"budget.steps": {"choices": [5, 10, 20]}, "trainer.lr": {"choices": [1e-3, 1e-2]}},
        objectives=[{"metric": "val/bpb"}, {"metric": "cost/train_flops"}],
        sampler={"type": "grid"},
        n_trials=None,
    )
    res = run_sweep(path, sweep_env)
    df = res.trials
    assert len(df) == 6 and set(df["state"]) == {"COMPLETE"}
    front = res.pareto
    pts = df[["val/bpb", "cost/train_flops"]].to_numpy()
    for i, p in enumerate(pts):
        dominated = any((q <= p).all() and (q < p).any() for q in pts)
        assert (df["number"].iloc[i] in set(front["number"])) == (not dominated)
    assert set(front["number"]) == {t.number for t in res.study.best_trials}
    assert len(front) >= 2  # more steps cost FLOPs and buy quality: a real trade-off


# -- several worker processes ------------------------------------------------------------------------------


def _sweep_cmd(path: Path, env_overrides: list[str], *extra: str) -> list[str]:
    return [sys.executable, "sweep.py", str(path), *env_overrides, *extra, "--no-progress"]


def _running_trials(journal: Path, name: str) -> list:
    if not journal.exists():
        return []
    storage = open_storage(f"journal:{journal}")
    if name not in optuna.get_all_study_names(storage):
        return []
    return [
        t
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
        if T.WORKER in t.user_attrs and T.HEARTBEAT in t.system_attrs
    ]


def _open_trial_runs(uri: str) -> int:
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("workbench")
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    return sum("optuna.trial_number" in r.data.tags for r in runs)


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_ctrl_c_of_two_workers_interrupts_then_the_rerun_retries_those_params(
    tmp_path, sweep_env, tracking_uri
):
    journal = tmp_path / "optuna-journal.log"
    path = write_spec(
        tmp_path, "par", n_trials=3, overrides=["budget.steps=200", "trainer.val_every_n_steps=50"]
    )
    cmd = _sweep_cmd(path, sweep_env, "--workers", "2")
    launcher = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: SIGINT reaches the launcher and both workers, as Ctrl-C
    )
    deadline = time.time() + 180
    while time.time() < deadline and launcher.poll() is None:  # both trials training, their MLflow runs open
        time.sleep(0.5)
        if len(_running_trials(journal, "par")) == 2 and _open_trial_runs(tracking_uri) == 2:
            break
    running = {t.number: t.params for t in _running_trials(journal, "par")}
    assert len(running) == 2, launcher.communicate()[0][-2000:]
    os.killpg(launcher.pid, signal.SIGINT)
    sent = time.time()
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, out[-2000:]
    assert time.time() - sent < 60  # every worker stopped in bounded time
    study = optuna.load_study(study_name="par", storage=open_storage(f"journal:{journal}"))
    trials = {t.number: t for t in study.trials}
    for n in running:
        assert trials[n].state == TrialState.FAIL and trials[n].user_attrs[INTERRUPTED], out[-2000:]
    assert counts(study.trials)["done"] == 0  # interrupted trials are not counted
    parent = SweepResults.load(path, sweep_env, storage=f"journal:{journal}").parent_run_id
    statuses = {r.data.tags["optuna.trial_number"]: r.info.status for r in _children(tracking_uri, parent)}
    assert {statuses[str(n)] for n in running} == {"KILLED"}

    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = optuna.load_study(study_name="par", storage=open_storage(f"journal:{journal}"))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3  # requested = complete
    retried = sorted(t.system_attrs["failed_trial"] for t in complete if "failed_trial" in t.system_attrs)
    assert retried == sorted(running)
    for t in complete:
        if "failed_trial" in t.system_attrs:
            assert t.params == running[t.system_attrs["failed_trial"]]
    assert len({t.user_attrs[T.WORKER] for t in complete}) == 2  # both workers ran trials


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_killed_worker_trial_is_retried_and_the_study_completes(tmp_path, sweep_env):
    journal = tmp_path / "optuna-journal.log"
    path = write_spec(
        tmp_path,
        "kill",
        n_trials=3,
        heartbeat_s=1,
        grace_s=6,
        overrides=["budget.steps=150", "trainer.val_every_n_steps=50"],
    )
    launcher = subprocess.Popen(
        _sweep_cmd(path, sweep_env, "--workers", "2"),
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = None
    deadline = time.time() + 180
    while killed is None and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.5)
        for t in _running_trials(journal, "kill"):
            os.kill(int(t.user_attrs[T.WORKER].split(":")[1]), signal.SIGKILL)
            killed = t.number
            break
    out, _ = launcher.communicate(timeout=300)
    assert killed is not None, out[-2000:]
    # the launcher saw the worker die: its trial is retried at once (no grace period) and the worker restarted
    assert re.search(
        r"note: worker [01] was killed \(SIGKILL\); its trial is retried and the worker restarted", out
    )
    study = optuna.load_study(study_name="kill", storage=open_storage(f"journal:{journal}"))
    trials = {t.number: t for t in study.trials}
    assert trials[killed].state == TrialState.FAIL and trials[killed].user_attrs[T.STALE]
    retry = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert (
        len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == trials[killed].params
    )
    assert counts(study.trials)["complete"] == 3
    assert len(trials) == 4  # three results and the lost trial; nothing duplicated


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_results_api_plots(tmp_path, sweep_env):
    path = write_spec(tmp_path, "plots", n_trials=3)  # no pruner: validation values are still reported
    run_sweep(path, sweep_env, progress=False)
    res = SweepResults.load(path, sweep_env)
    assert len(res.trials) == 3
    import matplotlib

    matplotlib.use("Agg")
    facecolor = matplotlib.rcParams["axes.facecolor"]
    for kind in ("pareto_front", "optimization_history", "param_importances", "intermediate_values", "slice"):
        assert res.plot(kind) is not None
    # Optuna's plots restyle pyplot globally (ggplot); the user's style is back after each
    assert matplotlib.rcParams["axes.facecolor"] == facecolor
    with pytest.raises(ValueError, match="plot kind 'nope'"):
        res.plot("nope")
    assert set(itertools.chain(res.param_importances())) == {"trainer.lr"}


@pytest.mark.parametrize("value", [None, True, 0.001, 3, "sigmoid", "a b", "x,y", "it's", "[1]", [1, 2]])
def test_override_values_round_trip_through_hydra(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from workbench.sweeps.spec import override_value

    parsed = OverridesParser.create().parse_overrides([f"key={override_value(value)}"])[0].value()
    assert parsed == value


def test_seeds_average_and_nest_under_the_trial_run(tmp_path, sweep_env, tracking_uri):
    path = write_spec(tmp_path, "seeds", params={"trainer.lr": {"choices": [3e-3]}}, n_trials=1, seeds=2)
    res = run_sweep(path, sweep_env, quiet=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    (trial_run,) = _children(tracking_uri, res.parent_run_id)
    seed_runs = client.search_runs(
        [trial_run.info.experiment_id], f"tags.mlflow.parentRunId = '{trial_run.info.run_id}'"
    )
    bpb = sorted(r.data.metrics["val/bpb"] for r in seed_runs)
    assert len(bpb) == 2 and bpb[0] != bpb[1]  # two seeds, two different runs
    assert trial_run.data.metrics["val/bpb"] == pytest.approx(sum(bpb) / 2)
    assert res.trials["val/bpb"].iloc[0] == pytest.approx(sum(bpb) / 2)
    assert trial_run.data.metrics["val/bpb_std"] > 0
    import matplotlib

    # the study's figures (Optuna's optimization history among them) left the session's style alone
    assert matplotlib.rcParams["axes.facecolor"] == matplotlib.rcParamsDefault["axes.facecolor"]
    assert res.trials["train_steps"].iloc[0] == 40


def test_every_run_of_a_study_lands_in_the_store_its_config_names(tmp_path, sweep_env, tracking_uri):
    other = f"sqlite:///{tmp_path / 'server.db'}"
    path = write_spec(
        tmp_path,
        "elsewhere",
        overrides=["budget.steps=10", "trainer.val_every_n_steps=5", f"tracking.tracking_uri={other}"],
        params={"trainer.lr": {"choices": [3e-3, 1e-2]}},
        sampler={"type": "grid"},
        n_trials=2,
    )
    res = run_sweep(path, sweep_env, quiet=True)
    client = mlflow.MlflowClient(tracking_uri=other)
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/complete_trials"] == 2  # finalize
    assert {a.path for a in client.list_artifacts(res.parent_run_id)} >= {"sweep_spec.yaml", "trials.csv"}
    children = _children(other, res.parent_run_id)
    assert [r.data.tags["optuna.trial_number"] for r in children] == ["0", "1"]
    assert {r.info.status for r in children} == {"FINISHED"}
    default = mlflow.MlflowClient(tracking_uri=tracking_uri)
    assert (
        default.search_experiments(filter_string="name = 'workbench'") == []
    )  # nothing in the default store
