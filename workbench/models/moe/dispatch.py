"""Token permutation: group the router's assignments by expert, apply capacity, and scatter results back.

An *assignment* is one (token, choice) pair; token choice makes T*K of them. Dispatch sorts them by expert
with a stable argsort and computes each one's slot within its expert from cumulative counts, so there is no
Python loop over tokens.

Capacity priority (who is kept when an expert is over capacity C):
- "position" (GShard, Lepikhin et al. 2020, Algorithm 1): choice-major order, i.e. the first choices of all
  tokens in token order, then the second choices in token order, and so on;
- "probs" (Megatron's "probs" policy; DeepSeek-V2): highest combine weight first, position order among ties.
A dropped assignment contributes nothing; a token whose every assignment is dropped gets a zero FFN output and
passes on through the residual. Both are counted (`DispatchPlan.dropped`, `unrouted_tokens`).

Shape legend:
    T  tokens in the micro-batch (batch * sequence, flattened)
    D  model width
    E  routed experts
    K  experts chosen per token (top_k)
    N  all assignments, T*K; as an index, choice-major: n = k*T + t
    A  kept assignments, sorted by expert (priority order within each expert)
    C  capacity (slots per expert)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls run in here: autocast's when it is on, else the activations'."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """C = ceil(T*K/E * capacity_factor) (GShard; Switch eq. 3), at most T since an expert sees a token once."""
    # The 1e-9 stops float error from rounding e.g. 100 * 1.1 = 110.00000000000001 up to 111.
    capacity = math.ceil(num_tokens * top_k / num_experts * capacity_factor - 1e-9)
    return max(1, min(capacity, num_tokens))


@dataclass
class DispatchPlan:
    """Where each kept assignment comes from, where it goes, and with what weight."""

    token_A: Tensor  # long: source token of each kept assignment
    expert_A: Tensor  # long: its expert (non-decreasing)
    slot_A: Tensor  # long: its position within the expert, 0..kept-1
    weight_A: Tensor  # its combine weight
    kept_E: Tensor  # long: assignments each expert computes
    routed_E: Tensor  # long: assignments the router chose per expert, before dropping

    @property
    def dropped(self) -> Tensor:
        return self.routed_E.sum() - self.kept_E.sum()

    def unrouted_tokens(self, num_tokens: int) -> Tensor:
        """Tokens no expert computes: they pass through the residual unchanged."""
        return (torch.bincount(self.token_A, minlength=num_tokens) == 0).sum()


def plan_dispatch(
    experts_TK: Tensor,
    weights_TK: Tensor,
    num_experts: int,
    capacity: int | None,
    policy: str = "position",
) -> DispatchPlan:
    """Sort token-choice assignments by expert and drop those past `capacity` (None: dropless, keep all)."""
    num_tokens = experts_TK.shape[0]
    experts_N = experts_TK.t().reshape(-1)  # choice-major: the "position" priority order
    weights_N = weights_TK.t().reshape(-1)
    if capacity is not None and policy == "probs":
        by_weight_N = torch.argsort(weights_N.detach(), descending=True, stable=True)
        sorted_N = by_weight_N[torch.argsort(experts_N[by_weight_N], stable=True)]
    else:
        sorted_N = torch.argsort(experts_N, stable=True)  # stable: priority order within each expert
    routed_E = torch.bincount(experts_N, minlength=num_experts)
    start_E = torch.cumsum(routed_E, dim=0) - routed_E
    expert_S = experts_N[sorted_N]
    slot_S = torch.arange(sorted_N.numel(), device=sorted_N.device) - start_E[expert_S]
    if capacity is None:
        kept_E, assignment_A, expert_A, slot_A = routed_E, sorted_N, expert_S, slot_S
    else:
        keep_S = slot_S < capacity  # each expert keeps its first C in priority order
        assignment_A, expert_A, slot_A = sorted_N[keep_S], expert_S[keep_S], slot_S[keep_S]
        kept_E = routed_E.clamp(max=capacity)
    return DispatchPlan(
        assignment_A % num_tokens, expert_A, slot_A, weights_N[assignment_A], kept_E, routed_E
    )


def plan_expert_choice(token_EC: Tensor, weight_EC: Tensor) -> DispatchPlan:
    """The plan of an expert-choice router: expert e computes tokens token_EC[e] (Zhou et al. 2022)."""
    num_experts, capacity = token_EC.shape
    device = token_EC.device
    kept_E = torch.full((num_experts,), capacity, dtype=torch.long, device=device)
    return DispatchPlan(
        token_A=token_EC.reshape(-1),
        expert_A=torch.arange(num_experts, device=device).repeat_interleave(capacity),
        slot_A=torch.arange(capacity, device=device).repeat(num_experts),
        weight_A=weight_EC.reshape(-1),
        kept_E=kept_E,
        routed_E=kept_E.clone(),
    )


def permute(x_TD: Tensor, plan: DispatchPlan) -> Tensor:
    """x_AD: one row per kept assignment, contiguous per expert."""
    return x_TD.index_select(0, plan.token_A)  # not x_TD[idx]: its backward is a slow accumulating scatter


def permute_padded(x_TD: Tensor, plan: DispatchPlan, num_experts: int, capacity: int) -> Tensor:
    """x_ECD: kept assignments at their (expert, slot); empty slots are zero rows (pad to capacity)."""
    x_ND = x_TD.new_zeros(num_experts * capacity, x_TD.shape[-1])
    x_ND = x_ND.index_copy(0, plan.expert_A * capacity + plan.slot_A, x_TD[plan.token_A])
    return x_ND.view(num_experts, capacity, -1)


def unpad(y_ECD: Tensor, plan: DispatchPlan) -> Tensor:
    """y_AD from the padded expert outputs, in plan order."""
    capacity = y_ECD.shape[1]
    return y_ECD.reshape(-1, y_ECD.shape[-1])[plan.expert_A * capacity + plan.slot_A]


def unpermute(y_AD: Tensor, plan: DispatchPlan, num_tokens: int, dtype: torch.dtype) -> Tensor:
    """y_TD = sum over a token's kept assignments of weight * expert output, accumulated in `dtype`."""
    y_AD = y_AD.to(dtype) * plan.weight_A.to(dtype)[:, None]
    return y_AD.new_zeros(num_tokens, y_AD.shape[-1]).index_add(0, plan.token_A, y_AD)
