"""Run one experiment from a typed config, as a sequence of named stages:

    prepare data -> build network -> plan cost -> build recipe and trainer -> open tracking -> train -> summarise

`train.py`, notebooks and sweep trials all call `run(cfg)`. Each stage is a function that receives only the
config slices and objects it needs; below `run`, only the two stages that record the whole config (the
recipe, into its checkpoints, and the tracking session) see the root config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.config import ConfigError, to_container
from workbench.config.compose import DIGEST_TAG, config_digest, run_label
from workbench.config.schema import (
    BudgetConfig,
    CostConfig,
    DataConfig,
    ModelConfig,
    MoEConfig,
    TrackingConfig,
    TrainConfig,
    TrainerConfig,
)
from workbench.cost.budget import budget_steps
from workbench.paths import resolve_path
from workbench.preflight import validate


@dataclass
class RunResult:
    """What a finished run produced: its final metrics, where it is tracked and where its checkpoint is."""

    name: str
    metrics: dict[str, float]
    run_id: str | None
    tracking_uri: str | None
    checkpoint: str
    stop_reason: str | None
    config: TrainConfig
    data_stats: dict[str, Any] = field(default_factory=dict)
    experiment_id: str | None = None  # of the MLflow run


@dataclass(frozen=True)
class CostPlan:
    """How the run turns counts into cost, and where its budget ends."""

    rates: Any  # workbench.training.callbacks.CostRates
    max_steps: int | None  # None: only a money budget, stopped by the CostMeter


def run(cfg: TrainConfig, print_summary: bool = True, callbacks: Sequence[Any] = ()) -> RunResult:
    """Train `cfg` until its budget is spent; log everything to MLflow; return the final metrics.

    `callbacks` are extra Lightning callbacks (a sweep's pruning callback); one that stops training early
    says why in its `stop_reason` attribute, which becomes the run's stop reason. Any failure after the MLflow
    run opened closes it FAILED (an interrupt: KILLED) with the reason, and is raised again.
    """
    validate(cfg)
    with process_settings(cfg.trainer):
        import lightning.pytorch as pl

        from workbench.models import build_model
        from workbench.training.callbacks import CostMeter
        from workbench.training.precision import lightning_precision
        from workbench.training.trainer import build_trainer

        if cfg.tracking.enabled:  # a store that cannot be written fails now, not after the data stage
            from workbench.tracking.session import check_tracking

            check_tracking(cfg.tracking.tracking_uri)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        out_dir = resolve_path(cfg.output_dir)
        resume = read_resume_state(cfg.ckpt_path, out_dir, cfg.name) if cfg.ckpt_path else None
        if cfg.tracking.enabled:  # named by its changes and keyed by its content, before they resolve
            name = cfg.tracking.run_name or run_label(cfg)
            cfg = dataclasses.replace(
                cfg,
                tracking=dataclasses.replace(cfg.tracking, run_name=name),
                tags={**cfg.tags, DIGEST_TAG: config_digest(cfg)},
            )
        datamodule = prepare_data(cfg.data, cfg.seed)
        cfg = resolve(cfg, datamodule.vocab_size)
        network = build_model(cfg.model, cfg.moe, cfg.precision)
        precision, note = lightning_precision(cfg.precision.policy, cfg.trainer.accelerator)
        if note:
            print(f"note: {note}")
        plan = plan_cost(cfg.model, cfg.moe, cfg.data, cfg.trainer, cfg.budget, cfg.cost, precision)
        recipe = build_recipe(network, cfg, datamodule, plan.max_steps, resume, out_dir)
        session = open_tracking(cfg, network, datamodule, resume, out_dir) if cfg.tracking.enabled else None
        try:
            if session is not None and cfg.tracking.system_metrics:
                session.monitor_system(cfg.tracking.system_metrics_interval, resumed=bool(resume))
            previous = session.previous_attempt() if session and (resume or session.reattached) else None
            meter = CostMeter(
                plan.rates,
                cfg.budget,
                cfg.trainer.log_every_n_steps,
                report=session.report_progress if session else None,
                previous=previous,
            )
            logger = lightning_logger(session, cfg.tracking.experiment_name, meter.logged_through)
            trainer = build_trainer(
                cfg.trainer, precision, plan.max_steps, [meter, *callbacks], logger, out_dir
            )
            recipe.mlflow_run_id = session.run_id if session else None
            checkpoint = train(trainer, recipe, datamodule, resume, out_dir, cfg.trainer.val_every_n_steps)
            stop_reason, metrics = summarise(trainer, recipe, meter, datamodule, network, callbacks)
            if session is not None:
                final = {**metrics, **recipe.last_routing_layers}  # per-layer statistics: MLflow only
                close_tracking(
                    session,
                    final,
                    stop_reason,
                    checkpoint,
                    network,
                    trainer.global_step,
                    cfg.tracking,
                    cfg.data.seq_len,
                )
        except BaseException as exc:
            if session is not None:
                from workbench.config.errors import failure_reason

                session.fail_quietly(failure_reason(exc), killed=isinstance(exc, KeyboardInterrupt))
            raise
    result = RunResult(
        name=cfg.name,
        metrics=metrics,
        run_id=session.run_id if session else None,
        tracking_uri=session.tracking_uri if session else None,
        checkpoint=str(checkpoint),
        stop_reason=stop_reason,
        config=cfg,
        data_stats=dict(datamodule.stats),
        experiment_id=session.experiment_id if session else None,
    )
    if print_summary and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print_run(result, trainer.global_step)
    return result


# -- around the stages ------------------------------------------------------------------------------------

# Lightning's, and MLflow's system-metrics monitor (it says when it starts and stops, at INFO)
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "mlflow.system_metrics")


@contextmanager
def process_settings(t: TrainerConfig) -> Iterator[None]:
    """`trainer.num_threads` and a console kept to the progress bar and the summary, for the run only: the
    thread count, log levels and warning filters are restored afterwards (a notebook's process is left as
    it was). Lightning's INFO lines repeat what the summary says, and under Hydra they print twice."""
    import lightning.pytorch  # noqa: F401  (it sets its loggers to INFO when first imported)

    threads = torch.get_num_threads()
    levels = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        warnings.filterwarnings("ignore", message=r".*does not have many workers")
        for name in _LIGHTNING_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def read_resume_state(ckpt_path: str, out_dir: Path, name: str) -> dict[str, Any] | None:
    """The step and workbench metadata (MLflow run, schedule length) of the checkpoint to resume from.

    `ckpt_path=last` takes the newest loadable checkpoint of `<output_dir>/checkpoints` (with the default
    timestamped output_dir: of every earlier run of experiment `name`), skipping truncated or corrupt files
    with a note; with none there, the run starts from step 0.
    """
    from workbench.training.checkpoints import candidates, load_metadata

    if ckpt_path != "last":
        path = resolve_path(ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        try:
            return _resume_state(path, load_metadata(path))
        except ValueError as exc:
            raise ConfigError(f"ckpt_path={ckpt_path}: not a loadable workbench checkpoint ({exc})") from exc
    folders = [out_dir / "checkpoints"]
    if not folders[0].is_dir() and out_dir.parent == resolve_path(f"outputs/{name}"):
        folders = sorted(out_dir.parent.glob("*/checkpoints"))
    found = candidates(folders)
    for path in found:
        try:
            state = _resume_state(path, load_metadata(path))
        except ValueError as exc:
            print(f"note: ckpt_path=last: skipped {path}, not a loadable checkpoint ({exc})")
            continue
        print(f"note: ckpt_path=last: resuming from {path} (step {state['global_step']})")
        return state
    where = " or ".join(str(f) for f in folders) if len(folders) < 3 else f"{out_dir.parent}/*/checkpoints"
    if found:
        raise ConfigError(f"ckpt_path=last: none of the {len(found)} checkpoints in {where} is loadable")
    print(f"note: ckpt_path=last: no checkpoint in {where} yet; training from step 0")
    return None


def _resume_state(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    return {"path": str(path), "global_step": ckpt.get("global_step", 0), **ckpt.get("workbench", {})}


def resolve(cfg: TrainConfig, vocab_size: int) -> TrainConfig:
    """Fill derived values so they are logged as what actually ran."""
    model = cfg.model
    if model.vocab_size is None:
        model = dataclasses.replace(model, vocab_size=vocab_size)
    moe = cfg.moe
    if moe.expert_hidden is None:
        moe = dataclasses.replace(moe, expert_hidden=max(1, cfg.model.d_ff // moe.top_k))
    if model.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} < the tokenizer's vocabulary {vocab_size}")
    return dataclasses.replace(cfg, model=model, moe=moe)


# -- the stages -------------------------------------------------------------------------------------------


def prepare_data(d: DataConfig, seed: int):
    """The corpus (or filtered mixture), tokenizer and packed rows, ready for `fit`."""
    from workbench.data import LMDataModule

    datamodule = LMDataModule(d, seed=seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def plan_cost(
    model: ModelConfig,
    moe: MoEConfig,
    d: DataConfig,
    t: TrainerConfig,
    budget: BudgetConfig,
    cost: CostConfig,
    precision: str,
) -> CostPlan:
    """Analytic FLOPs per token, the hardware's peak and price for the precision that runs, and the step
    at which the budget ends."""
    from workbench.cost.flops import flops_per_token
    from workbench.cost.hardware import peak_flops, price_per_hour
    from workbench.training.callbacks import CostRates

    fpt = flops_per_token(model, moe, d.seq_len)["total"]
    tokens_per_step = d.batch_size * d.seq_len * t.devices
    rates = CostRates(
        flops_per_token=fpt,
        tokens_per_step=tokens_per_step,
        peak_flops=peak_flops(cost.hardware, precision, cost.peak_flops),
        usd_per_hour=price_per_hour(cost.hardware, cost.usd_per_hour),
        devices=t.devices,
    )
    return CostPlan(rates, budget_steps(budget, tokens_per_step, fpt))


def build_recipe(network, cfg: TrainConfig, datamodule, max_steps: int | None, resume, out_dir: Path):
    """The LightningModule around the network; its checkpoints carry the resolved config and the tokenizer,
    so a checkpoint loads without the MLflow store (workbench.data.teacher)."""
    from workbench.training.module import LMRecipe

    # A resumed run decays over its own (possibly raised) budget; a money budget keeps its measured estimate.
    schedule_steps = max_steps if max_steps is not None else (resume or {}).get("schedule_steps")
    recipe = LMRecipe(network, cfg.trainer, cfg.moe, cfg.precision, datamodule.token_bytes, schedule_steps)
    if cfg.trainer.compile:
        recipe.network = torch.compile(recipe.network)
    recipe.checkpoint_meta = {
        "config": to_container(cfg),
        "tokenizer_dir": str(datamodule.tokenizer.save(out_dir / "tokenizer")),
    }
    return recipe


# In output_dir: the run that folder trains, for `ckpt_path=last` before its first checkpoint.
RUN_FILE = "mlflow_run.json"


def open_tracking(cfg: TrainConfig, network, datamodule, resume: dict[str, Any] | None, out_dir: Path):
    """The run's TrackingSession (a resumed run continues its own): tags, the flattened resolved config and
    parameter counts as params, config.yaml, the data statistics and report, the data/* metrics.

    `ckpt_path=last` in an output_dir whose run died before its first checkpoint continues that run from step 0
    (same run id, the lost steps billed) rather than leaving it behind and starting another."""
    from omegaconf import OmegaConf

    from workbench.config.compose import flatten
    from workbench.models.moe import MoEShape
    from workbench.tracking.datasets import corpus_dataset
    from workbench.tracking.mlflow_utils import git_commit
    from workbench.tracking.session import TrackingSession, close_dead_runs

    sha, dirty = git_commit()
    tags = {
        "workbench.experiment": cfg.name,
        "workbench.ffn": cfg.model.ffn,
        "workbench.precision": cfg.precision.policy,
        "workbench.hardware": cfg.cost.hardware,
        **({"mlflow.source.git.commit": sha, "workbench.git_dirty": str(dirty)} if sha else {}),
        **{str(k): str(v) for k, v in cfg.tags.items()},
    }
    t = cfg.tracking
    earlier = (
        _unfinished_run(out_dir / RUN_FILE, t.tracking_uri)
        if cfg.ckpt_path == "last" and not resume
        else None
    )
    if resume and resume.get("mlflow_run_id"):
        session = TrackingSession.resume(resume["mlflow_run_id"], t.tracking_uri)
        session.set_tags({**tags, "workbench.resumed_from": f"{resume['path']}@step{resume['global_step']}"})
    elif earlier:
        session = TrackingSession.resume(earlier, t.tracking_uri)
        session.reattached = True
        session.set_tags({**tags, "workbench.resumed_from": "no checkpoint yet@step0"})
    else:
        session = TrackingSession.start(t.experiment_name, t.run_name or cfg.name, tags, t.tracking_uri)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RUN_FILE).write_text(
            json.dumps({"run_id": session.run_id, "tracking_uri": session.tracking_uri})
        )
    with session:  # a failure (or an interrupt) while the run is being set up closes it FAILED (KILLED)
        # Runs of this experiment whose process died without closing them (kill -9, a lost machine) stay RUNNING
        # forever otherwise; the next run on the same host closes them KILLED with the reason.
        for run_id, reason in close_dead_runs(session.client, [session.experiment_id]):
            print(f"note: closed MLflow run {run_id} as KILLED: {reason}")
        tree = to_container(cfg)
        params = flatten(tree)
        if cfg.model.ffn != "moe":
            params = {k: v for k, v in params.items() if not k.startswith("moe.")}
        counts = network.param_counts()
        params |= {"model.total_params": counts["total"], "model.active_params": counts["active"]}
        if cfg.model.ffn == "moe":  # what the layers were built with, after segmentation and shared experts
            shape = MoEShape.of(cfg.moe, cfg.model.d_ff)
            params |= {f"moe.built.{k}": v for k, v in dataclasses.asdict(shape).items()}
        session.log_params(params)  # a resumed run records only keys it does not have yet
        step = resume["global_step"] if resume else None
        session.log_text(
            OmegaConf.to_yaml(tree), f"config_resume_step{step}.yaml" if resume else "config.yaml"
        )
        session.log_dict(datamodule.stats, "data_stats.json")
        session.log_dataset(corpus_dataset(cfg.data, datamodule.stats))
        if datamodule.mixture_report is not None:
            session.log_dict(datamodule.mixture_report, "data/report.json")
            session.log_text(mixture_report_text(datamodule), "data/report.txt")
        if not resume and not session.reattached:
            session.log_metrics(datamodule.metrics(), step=0)
    return session


def _unfinished_run(path: Path, tracking_uri: str | None) -> str | None:
    """The run id in `path` (an output_dir's RUN_FILE) if that run is in this store and did not finish."""
    from workbench.tracking.session import client_for

    try:
        recorded = json.loads(path.read_text())
        client = client_for(tracking_uri)
        if recorded.get("tracking_uri") != client.tracking_uri:
            return None
        run = client.get_run(str(recorded["run_id"]))
    except Exception:  # no file, not JSON, another store, a deleted run: start a new run
        return None
    return run.info.run_id if run.info.status != "FINISHED" else None


def lightning_logger(session, experiment_name: str, logged_through: int = -1):
    """Lightning's MLFlowLogger attached to the session's run (step metrics of fit), or None; a resumed run's
    logger skips the steps the run has logged already."""
    if session is None:
        return None
    from workbench.tracking.step_logger import StepLogger

    return StepLogger(
        experiment_name=experiment_name,
        tracking_uri=session.tracking_uri,
        run_id=session.run_id,
        logged_through=logged_through,
    )


def train(trainer, recipe, datamodule, resume, out_dir: Path, val_every: int) -> Path:
    """Fit until the budget (or a callback) stops it, validate at the last step if that was not a validation
    step, and save `checkpoints/last.ckpt`.

    An interrupt (Ctrl-C, or SIGTERM where the entry point turns it into one) is raised as KeyboardInterrupt:
    Lightning turns it into `sys.exit(1)` and leaves SIGINT ignored, which would hide it from the caller and
    disable Ctrl-C for the rest of a notebook session; the SIGINT handler is restored.
    """
    import signal
    import threading

    from workbench.training.callbacks import InterruptWatch

    watch = next((cb for cb in trainer.callbacks if isinstance(cb, InterruptWatch)), None)
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        trainer.fit(recipe, datamodule=datamodule, ckpt_path=resume["path"] if resume else None)
        if trainer.interrupted:
            raise KeyboardInterrupt("training interrupted")
        last_val_step = trainer.global_step - trainer.global_step % val_every
        if not recipe.last_val or last_val_step != trainer.global_step:
            trainer.validate(recipe, datamodule=datamodule, verbose=False)
        last = out_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(last)
    except BaseException as exc:
        seen = watch.exception if watch is not None else None
        if isinstance(seen, KeyboardInterrupt) and not isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt(str(seen) or "interrupted") from None
        if type(exc).__name__ == "SIGTERMException":  # Lightning's own SIGTERM handler (no entry point's)
            raise KeyboardInterrupt("SIGTERM") from None
        raise
    finally:
        if main_thread and signal.getsignal(signal.SIGINT) is not sigint:
            signal.signal(signal.SIGINT, sigint)
    return last


def summarise(trainer, recipe, meter, datamodule, network, callbacks) -> tuple[str | None, dict[str, float]]:
    """(why the run stopped, its final metrics): validation, training loss, cost, the last routing
    statistics (means over MoE layers), data accounting and parameter counts."""
    stop_reason = next((cb.stop_reason for cb in callbacks if getattr(cb, "stop_reason", None)), None)
    metrics: dict[str, float] = {k: float(v) for k, v in recipe.last_val.items()}
    if recipe.last_train_loss is not None:
        metrics["train/loss"] = recipe.last_train_loss
    metrics.update(meter.metrics(trainer.strategy.root_device))
    metrics.update(recipe.last_routing)
    metrics.update(datamodule.metrics())
    counts = network.param_counts()
    metrics["model.total_params"] = float(counts["total"])
    metrics["model.active_params"] = float(counts["active"])
    return stop_reason or meter.stop_reason, metrics


def close_tracking(
    session,
    metrics,
    stop_reason,
    checkpoint: Path,
    network,
    step: int,
    tracking: TrackingConfig,
    seq_len: int,
) -> None:
    """The end of a run in MLflow: peak memory, stop reason, checkpoint, routing report, summary.json, and
    FINISHED."""
    from workbench.tracking.moe_report import log_expert_load

    session.log_metrics({"cost/peak_mem_gb": metrics["cost/peak_mem_gb"]}, step=step)
    # A run shorter than trainer.log_every_n_steps never flushed its routing statistics: the run's MLflow
    # metrics hold every summary value, logged at the last step where it was not logged before.
    logged = session.client.get_run(session.run_id).data.metrics
    session.log_metrics({k: v for k, v in metrics.items() if k not in logged}, step=step)
    session.set_tags(
        {"workbench.stop_reason": stop_reason or "budget", "workbench.checkpoint": str(checkpoint)}
    )
    if network.moe_layers():
        log_expert_load(session, network)
    session.log_dict(
        {k: v for k, v in metrics.items() if not k.startswith("moe/layer")} | {"global_step": step},
        "summary.json",
    )
    if tracking.log_checkpoints:
        session.log_artifact(checkpoint, "checkpoints")
    if tracking.log_model:
        counts = network.param_counts()
        example = torch.zeros(1, seq_len, dtype=torch.long, device=next(network.parameters()).device)
        params = {"total_params": counts["total"], "active_params": counts["active"]}
        _, fmt = session.log_model(network, example, step=step, params=params)
        print(f"note: logged the network as an MLflow model ({fmt})")
    session.finish()


def mixture_report_text(datamodule) -> str:
    """The data report as the console prints it, for the run's artifacts."""
    import io

    from rich.console import Console

    from workbench.data.report import render

    buf = io.StringIO()
    render(
        datamodule.mixture_report,
        datamodule.stats.get("mixture"),
        Console(file=buf, width=160, force_jupyter=False),
    )
    return buf.getvalue()


def print_run(result: RunResult, step: int) -> None:
    from workbench.tracking.mlflow_utils import ui_command
    from workbench.tracking.report import print_comparison

    footer = [
        f"checkpoint: {result.checkpoint}",
        f"stopped by: {result.stop_reason or 'budget'} at step {step}",
    ]
    if result.tracking_uri:
        footer.append(
            f"MLflow run {result.run_id} -> {ui_command(result.tracking_uri, result.experiment_id)}"
        )
    title = f"{result.name}: quality and cost"
    print_comparison({result.name: result.metrics}, title=title, footer=footer)
