"""Load balance: the auxiliary losses that push a router toward it and the statistics that measure it.

Normalisation convention (README, "MoE"): every loss here is 1.0 for a perfectly balanced router, so a term
with weight w adds exactly w to the training loss at balance, whatever E, K or the number of groups. f counts
the assignments the router chose (before capacity dropping) as fractions of all of them; P is the mean over
tokens of each token's distribution over experts (softmax, or sigmoid scores normalised per token). f is a
count, so gradient flows only through P, into the router.

Shape legend:
    T  tokens in the micro-batch (batch * sequence, flattened); B sequences of S tokens
    K  experts chosen per token (top_k)
    E  routed experts
    G  expert groups (devices)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from workbench.config import ConfigError
from workbench.config.schema import MoEConfig

# Loss name -> the MoEConfig field holding its weight.
LOSS_WEIGHTS = {
    "aux_loss": "aux_loss_weight",
    "seq_aux_loss": "seq_aux_loss_weight",
    "global_aux_loss": "global_aux_loss_weight",
    "z_loss": "z_loss_weight",
    "device_loss": "device_loss_weight",
}


def validate_balancing(cfg: MoEConfig, num_experts: int) -> None:
    """Rules of the balancing stack over `num_experts` routed experts (weights >= 0 are schema bounds)."""
    if cfg.device_loss_weight > 0:
        groups = cfg.device_groups or cfg.router.num_groups
        if groups < 2 or num_experts % groups:
            raise ConfigError(
                f"moe.device_loss_weight > 0 needs moe.device_groups (or moe.router.num_groups) >= 2 dividing "
                f"the {num_experts} routed experts; got {groups}"
            )


def switch_load_balancing_loss(probs_TE: Tensor, routed_E: Tensor) -> Tensor:
    """Switch Transformer auxiliary loss over the micro-batch, unscaled: E * sum_i f_i * P_i, 1.0 at balance.

    f_i = routed_E[i] / sum(routed_E), i.e. over the T*K assignments (Megatron's normalisation), so the balanced
    value is 1 for any K.
    """
    num_experts = probs_TE.shape[-1]
    f_E = routed_E.to(probs_TE.dtype) / routed_E.sum()
    return num_experts * torch.sum(
        f_E * probs_TE.mean(dim=0)
    )  # Fedus et al. 2021, eq. 4 (alpha applied later)


def global_load_balancing_loss(probs_TE: Tensor, routed_E: Tensor) -> Tensor:
    """The Switch loss with f from the loads of all data-parallel ranks (Qiu et al. 2025, eq. 3); P stays local.

    With one process it equals the micro-batch loss.
    """
    routed_E = routed_E.detach().clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(routed_E)
    return switch_load_balancing_loss(probs_TE, routed_E)


def sequence_load_balancing_loss(probs_TE: Tensor, experts_TK: Tensor, seq_len: int) -> Tensor:
    """The Switch loss computed within each sequence and averaged over sequences (DeepSeek-V3 eq. 17-20)."""
    num_tokens, num_experts = probs_TE.shape
    top_k = experts_TK.shape[1]
    batch = num_tokens // seq_len
    counts_BE = torch.zeros(batch, num_experts, device=probs_TE.device, dtype=probs_TE.dtype)
    counts_BE.scatter_add_(
        1,
        experts_TK.reshape(batch, seq_len * top_k),
        torch.ones(batch, seq_len * top_k, device=probs_TE.device, dtype=probs_TE.dtype),
    )
    f_BE = counts_BE / (seq_len * top_k)
    P_BE = probs_TE.view(batch, seq_len, num_experts).mean(dim=1)
    return (num_experts * (f_BE * P_BE).sum(dim=-1)).mean()


def device_balance_loss(probs_TE: Tensor, routed_E: Tensor, num_groups: int) -> Tensor:
    """DeepSeek-V2 device-level balance loss (eq. 14-16), unscaled: sum_d f'_d * P'_d, 1.0 at balance.

    Experts sit in `num_groups` contiguous groups (devices); f'_d is the mean over the group of f_i scaled so a
    balanced expert has f_i = 1, and P'_d the sum of the group's P_i.
    """
    num_experts = probs_TE.shape[-1]
    f_E = routed_E.to(probs_TE.dtype) / routed_E.sum() * num_experts
    f_G = f_E.view(num_groups, -1).mean(dim=-1)
    P_G = probs_TE.mean(dim=0).view(num_groups, -1).sum(dim=-1)
    return torch.sum(f_G * P_G)


def router_z_loss(logits_TE: Tensor) -> Tensor:
    """ST-MoE router z-loss, unscaled: penalises large logits that make the router's exp round off."""
    return torch.logsumexp(logits_TE, dim=-1).square().mean()  # Zoph et al. 2022, eq. 5


def router_entropy(probs_TE: Tensor) -> Tensor:
    """Mean over tokens of the entropy (nats) of each token's distribution over experts; log(E) is uniform."""
    probs_TE = probs_TE.detach().float()
    return -torch.xlogy(probs_TE, probs_TE).sum(dim=-1).mean()


def marginal_entropy(probs_TE: Tensor) -> Tensor:
    """Entropy (nats) of the mean distribution over experts: log(E) when experts are used evenly on average."""
    p_E = probs_TE.detach().float().mean(dim=0)
    return -torch.xlogy(p_E, p_E).sum()


def max_violation(load_E: Tensor) -> float:
    """MaxVio = (max_i load_i - mean load) / mean load (Wang et al. 2024, eq. 5); 0 is perfectly balanced."""
    load_E = load_E.float()
    mean = load_E.mean()
    return float((load_E.max() - mean) / mean) if mean > 0 else 0.0


@dataclass
class MoEStats:
    """What one MoE layer did with one micro-batch.

    `losses` are live (with autograd graph) so the model can sum them into the training loss; `detached` makes
    the copy kept for logging. Everything else is detached already.
    """

    layer: int  # transformer layer index
    num_tokens: int
    kept_E: Tensor  # (E,) float: assignments each expert computed (after capacity dropping)
    routed_E: Tensor  # (E,) float: assignments the router chose (before capacity dropping)
    dropped: Tensor  # () long: assignments dropped by capacity
    unrouted: Tensor  # () long: tokens that no expert computed (residual only)
    padded_slots: int  # empty expert slots computed because of pad_to_capacity
    router_entropy: Tensor  # () mean per-token entropy of the routing distribution, nats
    marginal_entropy: Tensor  # () entropy of the batch-mean routing distribution, nats
    logsumexp: Tensor | None  # () mean logsumexp of the router logits (None: no logits)
    bias_range: float | None  # max - min of the aux-free bias (None: no bias)
    router_flip_rate: Tensor | None  # share of tokens routed differently than by an fp32 router (None: fp32)
    losses: dict[str, Tensor] = field(default_factory=dict)  # unscaled balancing losses, by LOSS_WEIGHTS name

    def detached(self) -> MoEStats:
        return dataclasses.replace(self, losses={k: v.detach() for k, v in self.losses.items()})

    @property
    def assignments(self) -> int:
        return int(self.routed_E.sum())

    @property
    def load_cv(self) -> float:
        """Coefficient of variation of the routed load (population std / mean); 0 is perfectly balanced."""
        load = self.routed_E.float()
        return float(load.std(correction=0) / load.mean())

    @property
    def max_vio(self) -> float:
        return max_violation(self.routed_E)

    @property
    def max_load_ratio(self) -> float:
        """Busiest expert's routed load over the mean (1 + MaxVio); above the capacity factor, tokens drop."""
        return 1.0 + self.max_vio

    @property
    def drop_frac(self) -> float:
        return float(self.dropped) / max(1, self.assignments)

    @property
    def unrouted_frac(self) -> float:
        return float(self.unrouted) / max(1, self.num_tokens)

    @property
    def pad_frac(self) -> float:
        computed = float(self.kept_E.sum()) + self.padded_slots
        return self.padded_slots / computed if computed else 0.0

    def scalars(self) -> dict[str, float]:
        """The per-layer statistics logged as moe/<key> (averaged over layers) and moe/layer<i>/<key>."""
        out = {k: float(v.detach()) for k, v in self.losses.items()}
        out.update(
            drop_frac=self.drop_frac,
            unrouted_frac=self.unrouted_frac,
            pad_frac=self.pad_frac,
            load_cv=self.load_cv,
            max_vio=self.max_vio,
            max_load_ratio=self.max_load_ratio,
            router_entropy=float(self.router_entropy),
            marginal_entropy=float(self.marginal_entropy),
        )
        if self.logsumexp is not None:
            out["logsumexp"] = float(self.logsumexp)
        if self.bias_range is not None:
            out["bias_range"] = self.bias_range
        if self.router_flip_rate is not None:
            out["router_flip_rate"] = float(self.router_flip_rate)
        return out


# The keys of `aggregate_stats` that every MoE run logs as moe/<key> (README, "Metrics").
AGGREGATE_KEYS = (
    "aux_loss",
    "z_loss",
    "drop_frac",
    "unrouted_frac",
    "load_cv",
    "max_vio",
    "max_load_ratio",
    "router_entropy",
    "marginal_entropy",
)


def aggregate_stats(layers: list[MoEStats]) -> dict[str, float]:
    """Means over MoE layers of the per-layer statistics (empty for a dense model)."""
    if not layers:
        return {}
    per_layer = [s.scalars() for s in layers]
    keys = [k for k in per_layer[0] if all(k in d for d in per_layer)]
    return {k: sum(d[k] for d in per_layer) / len(per_layer) for k in keys}


def per_layer_stats(layers: list[MoEStats], expert_loads: bool = False) -> dict[str, float]:
    """`layer{i}/<stat>` for each MoE layer (i: its index among all transformer layers); with `expert_loads`
    also `layer{i}/load/e{j}`, expert j's share of the layer's routed assignments."""
    out: dict[str, float] = {}
    for s in layers:
        out.update({f"layer{s.layer}/{k}": v for k, v in s.scalars().items()})
        if expert_loads:
            share_E = (s.routed_E / s.routed_E.sum().clamp(min=1)).tolist()
            out.update({f"layer{s.layer}/load/e{j}": v for j, v in enumerate(share_E)})
    return out
