"""Run one experiment from a typed config: data, model, training, cost and tracking.

`train.py` and notebooks both call `run(cfg)`; nothing below this function sees the root config except to
hand each component its own slice.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import OmegaConf

from workbench.config import ConfigError
from workbench.config.schema import TrainConfig
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


def resolve(cfg: TrainConfig, vocab_size: int) -> TrainConfig:
    """Fill derived values so they are logged as what actually ran."""
    model = (
        cfg.model
        if cfg.model.vocab_size is not None
        else dataclasses.replace(cfg.model, vocab_size=vocab_size)
    )
    moe = cfg.moe
    if moe.expert_hidden is None:
        moe = dataclasses.replace(moe, expert_hidden=max(1, cfg.model.d_ff // moe.top_k))
    if model.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} < the tokenizer's vocabulary {vocab_size}")
    return dataclasses.replace(cfg, model=model, moe=moe)


def _read_resume_state(ckpt_path: str) -> dict[str, Any]:
    path = resolve_path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    # mmap: only the small metadata entries are read here; Lightning loads the tensors once, in fit.
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return {"path": str(path), "global_step": ckpt.get("global_step", 0), **ckpt.get("workbench", {})}


def mixture_report_text(datamodule) -> str:
    """The data report as the console prints it, for the run's artifacts."""
    import io

    from rich.console import Console

    from workbench.data.report import render

    buf = io.StringIO()
    render(datamodule.mixture_report, datamodule.stats.get("mixture"), Console(file=buf, width=160))
    return buf.getvalue()


def _quiet_lightning() -> None:
    """Keep the console to the progress bar and the summary: Lightning's INFO lines (device banners, tips,
    "max_steps reached") repeat what the summary says, and under Hydra they print twice."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*does not have many workers")


def run(cfg: TrainConfig, print_summary: bool = True, callbacks: Sequence[Any] = ()) -> RunResult:
    """Train `cfg` until its budget is spent; log everything to MLflow; return the final metrics.

    `callbacks` are extra Lightning callbacks (a sweep's pruning callback); one that stops training early
    says why in its `stop_reason` attribute, which becomes the run's stop reason.
    """
    validate(cfg)
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import MLFlowLogger

    from workbench.cost.flops import flops_per_token
    from workbench.cost.hardware import peak_flops, price_per_hour
    from workbench.data import LMDataModule
    from workbench.models import build_model
    from workbench.models.moe import MoEShape
    from workbench.tracking.mlflow_utils import (
        artifact_root,
        flatten,
        git_commit,
        quiet_mlflow_logs,
        resolve_tracking_uri,
        ui_command,
    )
    from workbench.tracking.moe_report import log_expert_load
    from workbench.tracking.report import print_comparison
    from workbench.training.callbacks import CostMeter, CostRates
    from workbench.training.module import LMRecipe
    from workbench.training.precision import lightning_precision

    _quiet_lightning()
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    resume = _read_resume_state(cfg.ckpt_path) if cfg.ckpt_path else None

    datamodule = LMDataModule(cfg.data, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    cfg = resolve(cfg, datamodule.vocab_size)

    network = build_model(cfg.model, cfg.moe, cfg.precision)
    counts = network.param_counts()
    precision, note = lightning_precision(cfg.precision.policy, cfg.trainer.accelerator)
    if note:
        print(f"note: {note}")
    fpt = flops_per_token(cfg.model, cfg.moe, cfg.data.seq_len)["total"]
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.trainer.devices
    max_steps = budget_steps(cfg.budget, tokens_per_step, fpt)
    rates = CostRates(
        flops_per_token=fpt,
        tokens_per_step=tokens_per_step,
        peak_flops=peak_flops(cfg.cost.hardware, precision, cfg.cost.peak_flops),
        usd_per_hour=price_per_hour(cfg.cost.hardware, cfg.cost.usd_per_hour),
        devices=cfg.trainer.devices,
    )

    # A resumed run decays over its own (possibly raised) budget; a money budget keeps its measured estimate.
    schedule_steps = max_steps if max_steps is not None else (resume or {}).get("schedule_steps")
    recipe = LMRecipe(network, cfg.trainer, cfg.moe, cfg.precision, datamodule.token_bytes, schedule_steps)
    if cfg.trainer.compile:
        recipe.network = torch.compile(recipe.network)
    meter = CostMeter(rates, cfg.budget, cfg.trainer.log_every_n_steps)

    out_dir = resolve_path(cfg.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    extra_callbacks = list(callbacks)
    callbacks = [meter, *extra_callbacks]
    if cfg.trainer.checkpoint_every_n_steps:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                # no "=" in the name: it would need quoting in a Hydra override (ckpt_path=...)
                filename="step{step:07d}",
                auto_insert_metric_name=False,
                every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
                save_top_k=-1,
            )
        )

    config_tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    # A checkpoint loads without the MLflow store (workbench.data.teacher): the resolved config and tokenizer.
    recipe.checkpoint_meta = {
        "config": config_tree,
        "tokenizer_dir": str(datamodule.tokenizer.save(out_dir / "tokenizer")),
    }
    logger = None
    tracking_uri = None
    if cfg.tracking.enabled:
        quiet_mlflow_logs()
        tracking_uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
        sha, dirty = git_commit()
        tags = {
            "workbench.experiment": cfg.name,
            "workbench.ffn": cfg.model.ffn,
            "workbench.precision": cfg.precision.policy,
            "workbench.hardware": cfg.cost.hardware,
            **({"mlflow.source.git.commit": sha, "workbench.git_dirty": str(dirty)} if sha else {}),
            **{str(k): str(v) for k, v in cfg.tags.items()},
        }
        logger = MLFlowLogger(
            experiment_name=cfg.tracking.experiment_name,
            run_name=cfg.tracking.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tracking_uri=tracking_uri,
            tags=tags,
            artifact_location=artifact_root(tracking_uri),
            run_id=(resume or {}).get("mlflow_run_id"),
        )
        recipe.mlflow_run_id = logger.run_id
        client, run_id = logger.experiment, logger.run_id
        from mlflow.entities import Param

        params = flatten(config_tree)
        if not cfg.model.ffn == "moe":
            params = {k: v for k, v in params.items() if not k.startswith("moe.")}
        params.update({"model.total_params": counts["total"], "model.active_params": counts["active"]})
        if cfg.model.ffn == "moe":  # what the layers were built with, after segmentation and shared experts
            shape = MoEShape.of(cfg.moe, cfg.model.d_ff)
            params.update({f"moe.built.{k}": v for k, v in dataclasses.asdict(shape).items()})
        if resume:  # MLflow params are immutable: log only keys the run does not have yet
            existing = client.get_run(run_id).data.params
            params = {k: v for k, v in params.items() if k not in existing}
            client.set_tag(run_id, "workbench.resumed_from", f"{resume['path']}@step{resume['global_step']}")
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i : i + 100])
        for tag, value in tags.items():
            client.set_tag(run_id, tag, value)
        client.log_text(
            run_id,
            OmegaConf.to_yaml(config_tree),
            "config.yaml" if not resume else f"config_resume_step{resume['global_step']}.yaml",
        )
        client.log_dict(run_id, datamodule.stats, "data_stats.json")
        if datamodule.mixture_report is not None:
            client.log_dict(run_id, datamodule.mixture_report, "data/report.json")
            client.log_text(run_id, mixture_report_text(datamodule), "data/report.txt")
        if not resume:
            for key, value in datamodule.metrics().items():
                client.log_metric(run_id, key, value, step=0)

    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=precision,
        max_steps=max_steps if max_steps is not None else -1,
        max_epochs=-1,
        val_check_interval=cfg.trainer.val_every_n_steps,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.trainer.val_batches,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.grad_clip or None,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=bool(cfg.trainer.checkpoint_every_n_steps),
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(out_dir),
    )
    try:
        trainer.fit(recipe, datamodule=datamodule, ckpt_path=resume["path"] if resume else None)
        if trainer.interrupted:
            raise KeyboardInterrupt("training interrupted")
        last_val_step = trainer.global_step - trainer.global_step % cfg.trainer.val_every_n_steps
        if not recipe.last_val or last_val_step != trainer.global_step:
            trainer.validate(recipe, datamodule=datamodule, verbose=False)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last_ckpt = ckpt_dir / "last.ckpt"
        trainer.save_checkpoint(last_ckpt)
    except BaseException as exc:
        if logger is not None:
            reason = f"{type(exc).__name__}: {exc}"[:5000]
            logger.experiment.set_tag(logger.run_id, "workbench.failure_reason", reason)
            logger.experiment.set_terminated(
                logger.run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            )
        raise

    stop_reason = next((cb.stop_reason for cb in extra_callbacks if getattr(cb, "stop_reason", None)), None)
    stop_reason = stop_reason or meter.stop_reason
    metrics: dict[str, float] = {k: float(v) for k, v in recipe.last_val.items()}
    train_loss = trainer.callback_metrics.get("train/loss")
    if train_loss is not None:
        metrics["train/loss"] = float(train_loss)
    metrics.update(meter.metrics(trainer.strategy.root_device))
    metrics.update(recipe.last_routing)  # the last logged routing statistics, means over MoE layers
    metrics.update(datamodule.metrics())
    metrics["model.total_params"] = float(counts["total"])
    metrics["model.active_params"] = float(counts["active"])

    if logger is not None:
        client, run_id = logger.experiment, logger.run_id
        client.log_metric(run_id, "cost/peak_mem_gb", metrics["cost/peak_mem_gb"], step=trainer.global_step)
        client.set_tag(run_id, "workbench.stop_reason", stop_reason or "budget")
        client.set_tag(run_id, "workbench.checkpoint", str(last_ckpt))
        if network.moe_layers():
            log_expert_load(client, run_id, network, out_dir)
        summary = {k: v for k, v in metrics.items()} | {"global_step": trainer.global_step}
        client.log_dict(run_id, summary, "summary.json")
        if cfg.tracking.log_checkpoints:
            client.log_artifact(run_id, str(last_ckpt), "checkpoints")
        client.set_terminated(run_id, "FINISHED")

    result = RunResult(
        name=cfg.name,
        metrics=metrics,
        run_id=logger.run_id if logger is not None else None,
        tracking_uri=tracking_uri,
        checkpoint=str(last_ckpt),
        stop_reason=stop_reason,
        config=cfg,
        data_stats=dict(datamodule.stats),
    )
    if print_summary and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        footer = [
            f"checkpoint: {last_ckpt}",
            f"stopped by: {stop_reason or 'budget'} at step {trainer.global_step}",
        ]
        if tracking_uri:
            footer.append(f"MLflow run {result.run_id} -> {ui_command(tracking_uri)}")
        print_comparison({cfg.name: metrics}, title=f"{cfg.name}: quality and cost", footer=footer)
    return result
