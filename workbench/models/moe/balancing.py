"""Load balance: the auxiliary losses that push the router toward it and the statistics that measure it.

Shape legend:
    T  tokens in the micro-batch (batch * sequence, flattened)
    K  experts chosen per token (top_k)
    E  routed experts
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


def switch_load_balancing_loss(probs_TE: Tensor, experts_TK: Tensor) -> Tensor:
    """Switch Transformer auxiliary loss, unscaled: equals 1.0 for a perfectly balanced router.

    f counts the T*K assignments the router chose (before capacity dropping), so the balanced value is 1
    for any K (Megatron's normalisation). Gradient flows only through P: f is a count.
    """
    num_tokens, num_experts = probs_TE.shape
    f_E = torch.bincount(experts_TK.flatten(), minlength=num_experts).to(probs_TE.dtype) / experts_TK.numel()
    P_E = probs_TE.mean(dim=0)
    return num_experts * torch.sum(
        f_E * P_E
    )  # Fedus et al. 2021, eq. 4: alpha * N * sum_i f_i * P_i, alpha applied later


def router_z_loss(logits_TE: Tensor) -> Tensor:
    """ST-MoE router z-loss, unscaled: penalises large logits that make the router's exp round off."""
    return (
        torch.logsumexp(logits_TE, dim=-1).square().mean()
    )  # Zoph et al. 2022, eq. 5: (1/B) sum_i (log sum_j e^x_ij)^2


def router_entropy(probs_TE: Tensor) -> Tensor:
    """Mean over tokens of the entropy (nats) of the router's softmax; log(E) is a uniform router."""
    probs_TE = probs_TE.detach().float()
    return -torch.xlogy(probs_TE, probs_TE).sum(dim=-1).mean()


@dataclass
class MoEStats:
    """What one MoE layer did with one micro-batch.

    The layer returns its losses live (with autograd graph) so the model can sum them into the training loss;
    the copies kept in `ModelAux.layers` are detached (see `detached`). Everything else is detached already.
    """

    layer: int  # transformer layer index
    tokens_per_expert: Tensor  # (E,) float: assignments each expert computed (after capacity dropping)
    routed_per_expert: Tensor  # (E,) float: assignments the router chose (before capacity dropping)
    dropped: Tensor  # () long: assignments dropped by capacity
    assignments: int  # T * K
    router_entropy: Tensor  # () mean per-token entropy of the router softmax, nats
    aux_loss: Tensor  # () unscaled Switch load-balancing loss
    z_loss: Tensor  # () unscaled router z-loss

    def detached(self) -> MoEStats:
        return dataclasses.replace(self, aux_loss=self.aux_loss.detach(), z_loss=self.z_loss.detach())

    @property
    def load_cv(self) -> float:
        """Coefficient of variation of the routed load (population std / mean); 0 is perfectly balanced."""
        load = self.routed_per_expert.float()
        return float(load.std(correction=0) / load.mean())

    @property
    def max_load_ratio(self) -> float:
        """Busiest expert's routed load over the mean; with capacity factor c, loads above c get dropped."""
        load = self.routed_per_expert.float()
        return float(load.max() / load.mean())

    @property
    def drop_frac(self) -> float:
        return float(self.dropped) / self.assignments


# The keys of `aggregate_stats`, logged as `moe/<key>` (README, "Metrics").
AGGREGATE_KEYS = ("aux_loss", "z_loss", "drop_frac", "load_cv", "max_load_ratio", "router_entropy")


def aggregate_stats(layers: list[MoEStats]) -> dict[str, float]:
    """Means over MoE layers of the per-layer statistics (empty for a dense model)."""
    if not layers:
        return {}
    n = len(layers)
    return {
        "aux_loss": sum(float(s.aux_loss) for s in layers) / n,
        "z_loss": sum(float(s.z_loss) for s in layers) / n,
        "drop_frac": sum(s.drop_frac for s in layers) / n,
        "load_cv": sum(s.load_cv for s in layers) / n,
        "max_load_ratio": sum(s.max_load_ratio for s in layers) / n,
        "router_entropy": sum(float(s.router_entropy) for s in layers) / n,
    }


def per_layer_stats(layers: list[MoEStats]) -> dict[str, float]:
    """`layer{i}/<stat>` for each MoE layer, i being its index among all transformer layers."""
    out: dict[str, float] = {}
    for s in layers:
        out[f"layer{s.layer}/load_cv"] = s.load_cv
        out[f"layer{s.layer}/max_load_ratio"] = s.max_load_ratio
        out[f"layer{s.layer}/drop_frac"] = s.drop_frac
        out[f"layer{s.layer}/router_entropy"] = float(s.router_entropy)
        out[f"layer{s.layer}/aux_loss"] = float(s.aux_loss)
    return out
