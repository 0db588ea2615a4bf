"""Cost meter: counts tokens and FLOPs, times training, and stops the run when its budget is spent."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import resource
import time
from dataclasses import dataclass

import lightning.pytorch as pl
import torch

from workbench.config.schema import BudgetConfig

log = logging.getLogger(__name__)


@dataclass
class CostRates:
    """Per-run constants that turn counts and seconds into cost."""

    flops_per_token: float  # analytic training FLOPs per token (workbench.cost.flops)
    tokens_per_step: int  # batch_size * seq_len * devices
    peak_flops: float  # per device, for the compute dtype
    usd_per_hour: float  # per device
    devices: int = 1


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_memory(device: torch.device | None) -> bool:
    """Start the peak-memory window at the start of training; True when the peak will cover this run only.

    CUDA: torch's allocator statistics. CPU (Linux): freed heap is first handed back to the OS (glibc's
    `malloc_trim`), so memory an earlier run in this process freed but kept mapped is not counted, then the
    resident-set high-water mark is reset to the current size (`/proc/self/clear_refs` 5, Linux >= 4.0), the
    CPU counterpart of `torch.cuda.reset_peak_memory_stats`. Where neither exists the peak is the process's
    lifetime maximum, and runs trained one after another in one process would read the largest one.
    """
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    libc = ctypes.util.find_library("c")
    if libc is not None:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)
        if trim is not None:
            trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


def peak_memory_gb(device: torch.device | None) -> float:
    """Peak accelerator memory allocated by torch; on CPU the peak resident set size since
    `reset_peak_memory` (the process's lifetime peak where it could not be reset)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    hwm = _proc_status_kb("VmHWM")
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return hwm * 1024 / 1e9


class CostMeter(pl.Callback):
    """Logs `cost/*` and enforces the budget.

    tokens/s and MFU use training time only (validation excluded); device-hours and money use the whole
    wall time of fit, validation included, because the devices are held (and paid for) throughout.
    Counters live in the checkpoint, so a resumed run keeps adding to them.

    Lost work: a run killed after its last checkpoint computed steps that the resumed run repeats. Those are
    billed: `cost/device_hours` and `cost/usd` include the lost time, `cost/lost_tokens` and
    `cost/tokens_computed`/`cost/flops_computed` count them, while `cost/tokens` and `cost/train_flops` stay
    what the model was trained on (the budget counts those). Each log calls `report(totals)` with the computed
    totals; a resumed run passes the last report of the attempt before it as `previous`, and the difference to
    the checkpoint's counters is the lost work (exact to `trainer.log_every_n_steps`).
    """

    def __init__(
        self,
        rates: CostRates,
        budget: BudgetConfig,
        log_every_n_steps: int,
        report=None,
        previous: dict | None = None,
    ) -> None:
        self.rates = rates
        self.budget = budget
        self.log_every = log_every_n_steps
        self.report = report
        self.previous = previous
        self.tokens = 0
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.lost_tokens = 0
        self.lost_train_seconds = 0.0
        self.lost_wall_seconds = 0.0
        self.logged_through = int((previous or {}).get("logged_through", -1))
        self.stop_reason: str | None = None
        self._t_last: float | None = None
        self._t_val: float | None = None

    # -- derived quantities -------------------------------------------------------------------------------
    def metrics(self, device: torch.device | None = None) -> dict[str, float]:
        r = self.rates
        tokens_per_s = self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0
        device_hours = (self.wall_seconds + self.lost_wall_seconds) * r.devices / 3600.0
        computed = self.tokens + self.lost_tokens
        return {
            "cost/flops_per_token": r.flops_per_token,
            "cost/tokens": float(self.tokens),
            "cost/train_flops": r.flops_per_token * self.tokens,
            "cost/lost_tokens": float(self.lost_tokens),
            "cost/tokens_computed": float(computed),
            "cost/flops_computed": r.flops_per_token * computed,
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

    def totals(self) -> dict[str, float]:
        """Everything computed so far, lost work included, and the last step logged: what `report` receives."""
        return {
            "tokens_computed": self.tokens + self.lost_tokens,
            "train_seconds_computed": self.train_seconds + self.lost_train_seconds,
            "wall_seconds_computed": self.wall_seconds + self.lost_wall_seconds,
            "logged_through": self.logged_through,
        }

    def _bill_lost_work(self) -> None:
        """On resume (the checkpoint's counters are loaded by now): what the attempt before computed beyond
        them was lost, and is added to the lost counters."""
        prev, now = self.previous, self.totals()
        self.previous = None
        if not prev:
            return
        self.lost_tokens += max(0, int(prev.get("tokens_computed", 0)) - int(now["tokens_computed"]))
        self.lost_train_seconds += max(
            0.0, float(prev.get("train_seconds_computed", 0)) - now["train_seconds_computed"]
        )
        self.lost_wall_seconds += max(
            0.0, float(prev.get("wall_seconds_computed", 0)) - now["wall_seconds_computed"]
        )

    def _log(self, trainer, step: int) -> None:
        self.logged_through = max(self.logged_through, step)
        if trainer.logger is not None:
            trainer.logger.log_metrics(self.metrics(trainer.strategy.root_device), step=step)
        if self.report is not None:
            self.report(self.totals())

    def on_train_start(self, trainer, pl_module) -> None:
        self._bill_lost_work()
        self._t_last = time.perf_counter()
        if not reset_peak_memory(trainer.strategy.root_device):
            log.warning(
                "cost/peak_mem_gb is this process's lifetime peak: its high-water mark cannot be reset here"
            )

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
        if step % self.log_every == 0 or trainer.should_stop:
            self._log(trainer, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.stop_reason is None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            self.stop_reason = "max_steps"
        if trainer.global_step > self.logged_through:  # the last step is logged once
            self._log(trainer, trainer.global_step)
        elif self.report is not None:
            self.report(self.totals())

    # -- checkpoint state ---------------------------------------------------------------------------------
    _STATE = (
        "tokens",
        "train_seconds",
        "wall_seconds",
        "lost_tokens",
        "lost_train_seconds",
        "lost_wall_seconds",
    )

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state_dict: dict) -> None:
        for k in self._STATE:  # checkpoints written before lost work was counted have no lost_* entries
            kind = int if k.endswith("tokens") else float
            setattr(self, k, kind(state_dict.get(k, 0)))


class InterruptWatch(pl.Callback):
    """Remembers the exception that stopped `fit` (Lightning hides a KeyboardInterrupt behind `sys.exit(1)`)."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.exception = exception
