"""The MoE feed-forward layer: route, dispatch, run experts, combine. Fills the same slot as DenseFFN.

Shape legend:
    T  tokens in the micro-batch (batch * sequence, flattened)
    D  model width
    A  kept assignments, sorted by expert (see dispatch.py)
"""

from __future__ import annotations

from torch import Tensor, nn

from workbench.config.schema import MoEConfig
from workbench.models.moe.balancing import MoEStats, router_entropy, router_z_loss, switch_load_balancing_loss
from workbench.models.moe.dispatch import DispatchPlan, expert_capacity, permute, plan_dispatch, unpermute
from workbench.models.moe.experts import SwiGLUExperts
from workbench.models.moe.router import Routing, TopKRouter


class MoELayer(nn.Module):
    """Token-choice top-k MoE with SwiGLU experts: x_TD -> (y_TD, MoEStats).

    `layer` is the transformer layer index, carried into the statistics so logs can name the layer.
    """

    def __init__(self, d_model: int, cfg: MoEConfig, fp32_router: bool = True, layer: int = 0) -> None:
        super().__init__()
        if cfg.expert_hidden is None:
            raise ValueError(
                "moe.expert_hidden is None; resolve it (d_ff // top_k) before building the model"
            )
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.capacity_factor = None if cfg.dropless else cfg.capacity_factor
        self.layer = layer
        self.router = TopKRouter(
            d_model,
            cfg.num_experts,
            cfg.top_k,
            fp32=fp32_router,
            normalize=cfg.normalize_top_k and cfg.top_k > 1,
        )
        self.experts = SwiGLUExperts(cfg.num_experts, d_model, cfg.expert_hidden)

    def capacity(self, num_tokens: int) -> int | None:
        if self.capacity_factor is None:
            return None
        return expert_capacity(num_tokens, self.top_k, self.num_experts, self.capacity_factor)

    def forward(self, x_TD: Tensor) -> tuple[Tensor, MoEStats]:
        num_tokens = x_TD.shape[0]
        routing = self.router(x_TD)
        plan = plan_dispatch(routing.experts_TK, self.num_experts, self.capacity(num_tokens))
        y_AD = self.experts(permute(x_TD, plan), plan.kept_E)
        y_TD = unpermute(y_AD, routing.weights_TK, plan, num_tokens)
        return y_TD, self._stats(routing, plan, num_tokens)

    def _stats(self, routing: Routing, plan: DispatchPlan, num_tokens: int) -> MoEStats:
        # Losses in fp32 whatever the router's dtype: they are means over many tokens.
        return MoEStats(
            layer=self.layer,
            tokens_per_expert=plan.kept_E.detach().float(),
            routed_per_expert=plan.routed_E.detach().float(),
            dropped=plan.dropped.detach(),
            assignments=num_tokens * self.top_k,
            router_entropy=router_entropy(routing.probs_TE),
            aux_loss=switch_load_balancing_loss(routing.probs_TE.float(), routing.experts_TK),
            z_loss=router_z_loss(routing.logits_TE.float()),
        )


def expert_param_count(layer: MoELayer) -> int:
    """Parameters of the routed experts (router excluded)."""
    return sum(p.numel() for p in layer.experts.parameters())
