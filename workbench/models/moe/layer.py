"""The MoE feed-forward layer: route, dispatch, run experts, combine. Fills the same slot as DenseFFN.

Shape legend:
    T  tokens in the micro-batch (batch * sequence, flattened)
    D  model width
    A  kept assignments, sorted by expert (see dispatch.py)
    E  routed experts
    C  capacity (slots per expert)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workbench.config import check_fields
from workbench.config.schema import MoEConfig, PrecisionConfig
from workbench.models.ffn import DenseFFN
from workbench.models.moe.balancing import (
    MoEStats,
    device_balance_loss,
    global_load_balancing_loss,
    marginal_entropy,
    router_entropy,
    router_z_loss,
    sequence_load_balancing_loss,
    switch_load_balancing_loss,
    validate_balancing,
)
from workbench.models.moe.dispatch import (
    DispatchPlan,
    expert_capacity,
    permute,
    permute_padded,
    plan_dispatch,
    unpad,
    unpermute,
)
from workbench.models.moe.experts import SwiGLUExperts
from workbench.models.moe.router import RouterDtypes, Routing, build_router, validate_router
from workbench.models.moe.shape import MoEShape, validate_shape


def validate_moe(cfg: MoEConfig, d_ff: int) -> None:
    """The `moe` slice's rules (checked when model.ffn=moe): bounds and choices, then shape, router and
    balancing rules, each in the module that implements them."""
    check_fields(cfg, "moe")
    shape = validate_shape(cfg, d_ff)
    validate_router(cfg, shape)
    validate_balancing(cfg, shape.num_experts)


def router_dtypes(precision: PrecisionConfig | None) -> RouterDtypes:
    if precision is None:
        return RouterDtypes()
    return RouterDtypes(
        param=precision.router_param_dtype,
        logits=precision.router_logits_dtype,
        scores=precision.router_scores_dtype,
        combine=precision.router_combine_dtype,
    )


class MoELayer(nn.Module):
    """Routed SwiGLU experts (+ optional shared experts): x_TD -> (y_TD, MoEStats).

    `layer` is the transformer layer index, carried into the statistics so logs can name the layer. `d_ff` is
    needed only when cfg.expert_hidden is None (then each coarse expert is d_ff // top_k wide).
    """

    def __init__(
        self,
        d_model: int,
        cfg: MoEConfig,
        precision: PrecisionConfig | None = None,
        layer: int = 0,
        d_ff: int | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.shape = MoEShape.of(cfg, d_ff)
        self.num_experts = self.shape.num_experts
        self.top_k = self.shape.top_k
        self.layer = layer
        self.expert_choice = cfg.router.type == "expert_choice"
        self.router = build_router(
            d_model, self.num_experts, self.top_k, cfg.router, router_dtypes(precision), layer
        )
        self.experts = SwiGLUExperts(
            self.num_experts, d_model, self.shape.expert_hidden, backend=cfg.experts_backend
        )
        # s shared experts of width h summed = one SwiGLU of width s*h (their hidden units concatenated).
        self.shared = (
            DenseFFN(d_model, self.shape.num_shared * self.shape.expert_hidden)
            if self.shape.num_shared
            else None
        )
        # Routed assignments per expert over all training steps (MaxVio_global, the end-of-run load heatmap).
        self.register_buffer("load_total_E", torch.zeros(self.num_experts, dtype=torch.long))

    def capacity(self, num_tokens: int) -> int | None:
        """Slots per expert for a micro-batch of `num_tokens`; None when dropless (token choice only)."""
        if self.cfg.dropless and not self.expert_choice:
            return None
        factor = self.cfg.capacity_factor
        if not self.training and self.cfg.eval_capacity_factor is not None:
            factor = self.cfg.eval_capacity_factor
        return expert_capacity(num_tokens, self.top_k, self.num_experts, factor)

    def forward(
        self, x_TD: Tensor, token_ids_T: Tensor | None = None, seq_len: int | None = None
    ) -> tuple[Tensor, MoEStats]:
        num_tokens = x_TD.shape[0]
        capacity = self.capacity(num_tokens)
        routing = self.router(x_TD, token_ids_T=token_ids_T, capacity=capacity)
        plan = routing.plan or plan_dispatch(
            routing.experts_TK, routing.weights_TK, self.num_experts, capacity, self.cfg.drop_policy
        )
        padded_slots = 0
        if self.cfg.pad_to_capacity:
            slots = capacity if capacity is not None else int(plan.kept_E.max())
            y_ECD = self.experts.forward_padded(permute_padded(x_TD, plan, self.num_experts, slots))
            y_AD = unpad(y_ECD, plan)
            padded_slots = self.num_experts * slots - int(plan.kept_E.sum())
        else:
            y_AD = self.experts(permute(x_TD, plan), plan.kept_E)
        y_TD = unpermute(y_AD, plan, num_tokens, plan.weight_A.dtype).to(x_TD.dtype)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)[0]  # DeepSeekMoE shared experts: every token, weight 1
        if self.training and torch.is_grad_enabled():
            self.router.observe(plan.routed_E)
            self.load_total_E += plan.routed_E.detach()
        return y_TD, self._stats(routing, plan, num_tokens, seq_len, padded_slots)

    def _stats(
        self, routing: Routing, plan: DispatchPlan, num_tokens: int, seq_len: int | None, padded_slots: int
    ) -> MoEStats:
        # Losses in fp32 from the router's scores, whatever dtype those were computed in.
        cfg = self.cfg
        probs_TE = routing.scores_TE.float()
        losses = {"aux_loss": switch_load_balancing_loss(probs_TE, plan.routed_E)}
        if routing.logits_TE is not None:
            losses["z_loss"] = router_z_loss(routing.logits_TE.float())
        if cfg.seq_aux_loss_weight > 0 and routing.experts_TK is not None:
            losses["seq_aux_loss"] = sequence_load_balancing_loss(
                probs_TE, routing.experts_TK, seq_len or num_tokens
            )
        if cfg.global_aux_loss_weight > 0:
            losses["global_aux_loss"] = global_load_balancing_loss(probs_TE, plan.routed_E)
        if cfg.device_loss_weight > 0:
            groups = cfg.device_groups or cfg.router.num_groups
            losses["device_loss"] = device_balance_loss(probs_TE, plan.routed_E, groups)
        logsumexp = None
        if routing.logits_TE is not None:
            logsumexp = torch.logsumexp(routing.logits_TE.detach().float(), dim=-1).mean()
        return MoEStats(
            layer=self.layer,
            num_tokens=num_tokens,
            kept_E=plan.kept_E.detach().float(),
            routed_E=plan.routed_E.detach().float(),
            dropped=plan.dropped.detach(),
            unrouted=plan.unrouted_tokens(num_tokens).detach(),
            padded_slots=padded_slots,
            router_entropy=router_entropy(probs_TE),
            marginal_entropy=marginal_entropy(probs_TE),
            logsumexp=logsumexp,
            bias_range=self.router.bias_range(),
            router_flip_rate=routing.flip_rate,
            losses=losses,
        )

    def routed_param_count(self) -> int:
        return sum(p.numel() for p in self.experts.parameters())
