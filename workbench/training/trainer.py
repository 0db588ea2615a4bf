"""The Lightning Trainer of a run: the loop settings of `trainer.*` and the run's callbacks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.config import ConfigError, check_fields
from workbench.config.schema import TrainerConfig


def validate_trainer(t: TrainerConfig) -> None:
    check_fields(t, "trainer")
    have, what = available_devices(str(t.accelerator))
    if t.devices > have:
        raise ConfigError(
            f"trainer.devices={t.devices}: this machine has {have} {what} (trainer.accelerator={t.accelerator}); "
            f"allowed: 1..{have}"
        )


def available_devices(accelerator: str) -> tuple[int, str]:
    """How many devices of `accelerator` this process may use, and what they are called. CPU "devices" are
    processes, one per core at most (more only oversubscribe the cores)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count(), "CUDA devices"
    return cores, "CPU cores"


def build_trainer(
    t: TrainerConfig,
    precision: str,
    max_steps: int | None,
    callbacks: Sequence[Any],
    logger: Any,
    out_dir: Path,
):
    """A `lightning.pytorch.Trainer` that trains until `max_steps` (or until a callback stops it: a money
    budget, a pruner), validates every `trainer.val_every_n_steps` on the same batches, and writes periodic
    checkpoints to `out_dir/checkpoints` when `trainer.checkpoint_every_n_steps` is set, each written
    atomically (workbench.training.checkpoints)."""
    import lightning.pytorch as pl

    from workbench.training.callbacks import InterruptWatch
    from workbench.training.checkpoints import AtomicCheckpointIO, remove_stale_temps

    remove_stale_temps(out_dir / "checkpoints")  # left by a process killed while it wrote a checkpoint
    callbacks = [*callbacks, InterruptWatch()]
    if t.checkpoint_every_n_steps:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(
            ModelCheckpoint(
                dirpath=out_dir / "checkpoints",
                # no "=" in the name: it would need quoting in a Hydra override (ckpt_path=...)
                filename="step{step:07d}",
                auto_insert_metric_name=False,
                every_n_train_steps=t.checkpoint_every_n_steps,
                save_top_k=-1,
            )
        )
    return pl.Trainer(
        accelerator=str(t.accelerator),
        devices=t.devices,
        precision=precision,
        max_steps=max_steps if max_steps is not None else -1,
        max_epochs=-1,
        val_check_interval=t.val_every_n_steps,
        check_val_every_n_epoch=None,
        limit_val_batches=t.val_batches,
        num_sanity_val_steps=0,
        gradient_clip_val=t.grad_clip or None,
        log_every_n_steps=t.log_every_n_steps,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=bool(t.checkpoint_every_n_steps),
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(out_dir),
        plugins=[AtomicCheckpointIO()],
    )
