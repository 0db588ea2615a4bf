"""The routed-expert shape a MoE config builds: coarse experts split by the segmentation factor, shared ones apart."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.config import ConfigError
from workbench.config.schema import MoEConfig


@dataclass(frozen=True)
class MoEShape:
    """Sizes the layer is built with (after fine-grained segmentation; Dai et al. 2024, sec. 3.1-3.2)."""

    num_experts: int  # routed experts: num_experts * segmentation
    top_k: int  # routed experts per token: top_k * segmentation - num_shared_experts
    expert_hidden: int  # width of each routed and each shared expert: coarse width / segmentation
    num_shared: int  # always-on experts of the same width

    @classmethod
    def of(cls, cfg: MoEConfig, d_ff: int | None = None) -> MoEShape:
        coarse = cfg.expert_hidden
        if coarse is None:
            if d_ff is None:
                raise ValueError("moe.expert_hidden is None; resolve it (d_ff // top_k) or pass d_ff")
            coarse = d_ff // cfg.top_k
        m = cfg.segmentation
        return cls(
            num_experts=cfg.num_experts * m,
            top_k=cfg.top_k * m - cfg.num_shared_experts,
            expert_hidden=max(1, coarse // m),
            num_shared=cfg.num_shared_experts,
        )

    @property
    def total_hidden(self) -> int:
        """The width of a dense FFN with this layer's total expert parameters (routed and shared side by side):
        the equal-total dense baseline."""
        return (self.num_experts + self.num_shared) * self.expert_hidden

    def active_experts(self, cfg: MoEConfig) -> float:
        """Routed experts each token uses on average: k, or k * capacity_factor for expert choice."""
        if cfg.router.type == "expert_choice":
            return self.top_k * cfg.capacity_factor
        return float(self.top_k)


def validate_shape(cfg: MoEConfig, d_ff: int) -> MoEShape:
    """The expert-count and width rules; returns the shape the layers will be built with."""
    if cfg.top_k > cfg.num_experts:
        raise ConfigError(
            f"moe.top_k={cfg.top_k} > moe.num_experts={cfg.num_experts}; top_k must be in 1..{cfg.num_experts}"
        )
    coarse = cfg.expert_hidden if cfg.expert_hidden is not None else d_ff // cfg.top_k
    if coarse < cfg.segmentation or coarse % cfg.segmentation:
        raise ConfigError(
            f"moe.segmentation={cfg.segmentation} must divide the expert width {coarse} "
            f"(moe.expert_hidden, or model.d_ff // moe.top_k when null)"
        )
    if cfg.top_k * cfg.segmentation - cfg.num_shared_experts < 1:
        raise ConfigError(
            f"moe.num_shared_experts={cfg.num_shared_experts} leaves no routed expert: it must be < "
            f"moe.top_k * moe.segmentation = {cfg.top_k * cfg.segmentation}"
        )
    return MoEShape.of(cfg, d_ff)
