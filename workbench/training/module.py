"""The training recipe: loss, optimiser, schedule and metrics around an injected network.

The network is a plain nn.Module (workbench.models); this module only decides how it is trained and measured.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from workbench.config.errors import NonFiniteLoss
from workbench.config.schema import MoEConfig, PrecisionConfig, TrainerConfig
from workbench.models import aggregate_stats, per_layer_stats
from workbench.models.moe import LOSS_WEIGHTS, max_violation

LN2 = math.log(2.0)


def warmup_cosine(step: int, warmup: int, total: int | None, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to `min_ratio` at `total` (flat if total is None)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total is None or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LMRecipe(pl.LightningModule):
    """Next-token cross-entropy + weighted MoE auxiliary losses; AdamW with warm-up + cosine."""

    def __init__(
        self,
        network: torch.nn.Module,
        trainer_cfg: TrainerConfig,
        moe_cfg: MoEConfig,
        precision_cfg: PrecisionConfig,
        token_bytes: torch.Tensor,
        schedule_steps: int | None,
    ) -> None:
        super().__init__()
        self.network = network
        self.tcfg = trainer_cfg
        self.moe_cfg = moe_cfg
        self.stats_every = moe_cfg.stats_every_n_steps or trainer_cfg.log_every_n_steps
        self.fp32_loss = precision_cfg.fp32_loss
        # bytes each token stands for: bits per byte stay comparable across tokenizers
        self.register_buffer("token_bytes", token_bytes.to(torch.long), persistent=False)
        # Read live by the LR lambda: a money budget only knows its length once speed is measured.
        self.schedule_steps = schedule_steps
        self._val_sums = torch.zeros(3, dtype=torch.float64)  # nats, tokens, bytes
        self.mlflow_run_id: str | None = None
        self.last_val: dict[str, float] = {}
        self._last_ce: torch.Tensor | None = None  # the last step's cross-entropy (no host sync per step)
        self.last_routing: dict[str, float] = {}  # the latest moe/* layer means
        self.last_routing_layers: dict[str, float] = {}  # the latest moe/layer<i>/* statistics
        self.checkpoint_meta: dict = {}  # extra entries for checkpoint["workbench"] (the runner sets them)

    def forward(self, idx_BT: torch.Tensor):
        return self.network(idx_BT)

    def _cross_entropy(
        self, logits_BTV: torch.Tensor, y_BT: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        if self.fp32_loss:
            logits_BTV = logits_BTV.float()
        return F.cross_entropy(logits_BTV.flatten(0, 1), y_BT.flatten(), reduction=reduction)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x_BT, y_BT = batch
        logits_BTV, aux = self.network(x_BT)
        ce = self._cross_entropy(logits_BTV, y_BT)
        loss = ce + aux.weighted(self.moe_cfg).to(ce.device)
        if not torch.isfinite(loss):  # a diverged run stops here with its reason instead of training on NaN
            raise NonFiniteLoss(
                f"train/total_loss is {loss.item()} at step {self.global_step}: the run diverged "
                "(lower trainer.lr, raise trainer.warmup_steps or trainer.grad_clip, or use precision=fp32)"
            )
        self.log("train/loss", ce.detach(), on_step=True, prog_bar=True)
        self._last_ce = ce.detach()
        self.log("train/total_loss", loss.detach(), on_step=True)
        if aux.layers and self._stats_step():
            routing = self.routing_metrics(aux)
            self.log_dict(routing, on_step=True)
            # for the run summary: a later stand-alone validate() clears the trainer's callback_metrics
            self.last_routing = {k: v for k, v in routing.items() if not k.startswith("moe/layer")}
            self.last_routing_layers = {k: v for k, v in routing.items() if k.startswith("moe/layer")}
        return loss

    def _stats_step(self) -> bool:
        """Routing statistics are computed on the steps Lightning sends to the logger, which are those whose
        `global_step + 1` is a multiple of `trainer.log_every_n_steps` (stats_every is a multiple of it: see
        `workbench.preflight`), so each logged value is the step it is logged at, not one interval older; and on
        the last scheduled step, so a run shorter than the interval still ends with statistics in its summary."""
        done = self.global_step + 1
        return done % self.stats_every == 0 or done == self.trainer.max_steps

    @property
    def last_train_loss(self) -> float | None:
        """The last training step's cross-entropy, for the run summary (whatever the logging interval)."""
        return None if self._last_ce is None else float(self._last_ce)

    def routing_metrics(self, aux) -> dict[str, float]:
        """moe/* for one training micro-batch: per-layer and mean statistics, each balancing loss unscaled and
        scaled by its weight, and MaxVio over all routed assignments since the start (moe/max_vio_global)."""
        stats = aggregate_stats(aux.layers)
        for name in aux.losses:
            stats[f"{name}_scaled"] = getattr(self.moe_cfg, LOSS_WEIGHTS[name]) * stats[name]
        stats.update(per_layer_stats(aux.layers, expert_loads=self.moe_cfg.log_expert_loads))
        global_vio = {m.layer: max_violation(m.load_total_E) for m in self.network.moe_layers()}
        stats.update({f"layer{i}/max_vio_global": v for i, v in global_vio.items()})
        stats["max_vio_global"] = sum(global_vio.values()) / len(global_vio)
        return {f"moe/{k}": v for k, v in stats.items()}

    def on_before_optimizer_step(self, optimizer) -> None:
        # All micro-batches of this step have routed: the aux-loss-free biases see the whole step's load.
        if hasattr(self.network, "update_router_biases"):
            self.network.update_router_biases()
        if self.global_step % self.tcfg.log_every_n_steps == 0:
            grads = [p.grad.detach().float().norm() for p in self.parameters() if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.stack(grads).norm(), on_step=True)
            self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True)
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            if scaler is not None:  # fp16-mixed: the dynamic loss scale falls each time a step is skipped
                self.log("train/grad_scale", float(scaler.get_scale()), on_step=True)

    def on_validation_epoch_start(self) -> None:
        self._val_sums.zero_()

    def validation_step(self, batch, batch_idx: int) -> None:
        x_BT, y_BT = batch
        logits_BTV, _ = self.network(x_BT)
        nats = self._cross_entropy(logits_BTV, y_BT, reduction="sum")
        n_bytes = self.token_bytes[y_BT].sum()
        self._val_sums += torch.stack(
            [nats.detach().double().cpu(), torch.tensor(float(y_BT.numel())).double(), n_bytes.double().cpu()]
        )

    def on_validation_epoch_end(self) -> None:
        nats, tokens, n_bytes = self._val_sums.tolist()
        if tokens == 0:
            return
        metrics = {"val/loss": nats / tokens, "val/bpb": nats / LN2 / max(n_bytes, 1.0)}
        self.last_val = metrics
        # callback_metrics for checkpointing/pruning; the logger gets them at the true training step,
        # also from a stand-alone `trainer.validate` after fit.
        for k, v in metrics.items():
            self.log(k, v, logger=False, prog_bar=k == "val/bpb")
        if self.logger is not None and not self.trainer.sanity_checking:
            self.logger.log_metrics(metrics, step=self.global_step)

    def configure_optimizers(self):
        # Decay matrices only; norms' gains stay undecayed (GPT-2 / nanoGPT practice).
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.tcfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.tcfg.lr,
            betas=(self.tcfg.beta1, self.tcfg.beta2),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(
                step, self.tcfg.warmup_steps, self.schedule_steps, self.tcfg.min_lr_ratio
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["workbench"] = {
            "mlflow_run_id": self.mlflow_run_id,
            "schedule_steps": self.schedule_steps,
            **self.checkpoint_meta,
        }
