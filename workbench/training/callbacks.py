"""Cost meter: counts tokens and FLOPs, times training, and stops the run when its budget is spent."""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass

import lightning.pytorch as pl
import torch

from workbench.config.schema import BudgetConfig


@dataclass
class CostRates:
    """Per-run constants that turn counts and seconds into cost."""

    flops_per_token: float  # analytic training FLOPs per token (workbench.cost.flops)
    tokens_per_step: int  # batch_size * seq_len * devices
    peak_flops: float  # per device, for the compute dtype
    usd_per_hour: float  # per device
    devices: int = 1


def peak_memory_gb(device: torch.device | None) -> float:
    """Peak accelerator memory allocated by torch; on CPU the process's peak resident set size."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux


class CostMeter(pl.Callback):
    """Logs `cost/*` and enforces the budget.

    tokens/s and MFU use training time only (validation excluded); device-hours and money use the whole
    wall time of fit, validation included, because the devices are held (and paid for) throughout.
    Counters live in the checkpoint, so a resumed run keeps adding to them.
    """

    def __init__(self, rates: CostRates, budget: BudgetConfig, log_every_n_steps: int) -> None:
        self.rates = rates
        self.budget = budget
        self.log_every = log_every_n_steps
        self.tokens = 0
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.stop_reason: str | None = None
        self._t_last: float | None = None
        self._t_val: float | None = None

    # -- derived quantities -------------------------------------------------------------------------------
    def metrics(self, device: torch.device | None = None) -> dict[str, float]:
        r = self.rates
        tokens_per_s = self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0
        device_hours = self.wall_seconds * r.devices / 3600.0
        return {
            "cost/flops_per_token": r.flops_per_token,
            "cost/tokens": float(self.tokens),
            "cost/train_flops": r.flops_per_token * self.tokens,
            "cost/tokens_per_s": tokens_per_s,
            "cost/mfu": r.flops_per_token * tokens_per_s / (r.peak_flops * r.devices),
            "cost/train_seconds": self.train_seconds,
            "cost/device_hours": device_hours,
            "cost/usd": device_hours * r.usd_per_hour,
            "cost/peak_mem_gb": peak_memory_gb(device),
        }

    def spent(self) -> str | None:
        """The first budget limit reached, as 'budget.<key>', else None."""
        b, m = self.budget, self.metrics()
        if b.tokens is not None and self.tokens >= b.tokens:
            return "budget.tokens"
        if b.flops is not None and m["cost/train_flops"] >= b.flops:
            return "budget.flops"
        if b.usd is not None and m["cost/usd"] >= b.usd:
            return "budget.usd"
        return None

    # -- timing -------------------------------------------------------------------------------------------
    def _tick(self, training: bool) -> None:
        now = time.perf_counter()
        if self._t_last is not None:
            dt = now - self._t_last
            self.wall_seconds += dt
            if training:
                self.train_seconds += dt
        self._t_last = now

    def on_train_start(self, trainer, pl_module) -> None:
        self._t_last = time.perf_counter()
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":  # close the training interval before validation starts
            self._tick(training=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._tick(training=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # time the step, not its launch
        self._tick(training=True)
        self.tokens += self.rates.tokens_per_step
        step = trainer.global_step
        if self.budget.usd is not None and step >= 5:
            # The LR schedule of a money budget is as long as the money lasts at the speed seen so far.
            usd_per_step = self.metrics()["cost/usd"] / step
            if usd_per_step > 0:
                pl_module.schedule_steps = max(step + 1, math.ceil(self.budget.usd / usd_per_step))
        reason = self.spent()
        if reason is not None:
            self.stop_reason = reason
            trainer.should_stop = True
        if trainer.logger is not None and (step % self.log_every == 0 or trainer.should_stop):
            trainer.logger.log_metrics(self.metrics(trainer.strategy.root_device), step=step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.stop_reason is None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            self.stop_reason = "max_steps"
        if trainer.logger is not None:
            trainer.logger.log_metrics(self.metrics(trainer.strategy.root_device), step=trainer.global_step)

    # -- checkpoint state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens = int(state_dict["tokens"])
        self.train_seconds = float(state_dict["train_seconds"])
        self.wall_seconds = float(state_dict["wall_seconds"])
