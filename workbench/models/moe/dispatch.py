"""Token permutation: group the router's assignments by expert, apply capacity, and scatter results back.

An *assignment* is one (token, choice) pair; there are T*K of them. Dispatch sorts them by expert with a
stable argsort and computes each one's position within its expert from cumulative counts, so there is no
Python loop over tokens.

Capacity priority rule (GShard, Lepikhin et al. 2020, Algorithm 1): assignments are ranked choice-major, i.e.
the first choices of all tokens in token order, then the second choices in token order, and so on; each
expert keeps its first C assignments in that order and drops the rest. A dropped assignment contributes
nothing; a token whose every assignment is dropped gets a zero FFN output and passes on via the residual.

Shape legend:
    T  tokens in the micro-batch (batch * sequence, flattened)
    D  model width
    E  routed experts
    K  experts chosen per token (top_k)
    N  all assignments, T*K; as an index, choice-major: n = k*T + t
    A  kept assignments, sorted by expert (priority order within each expert)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """C = ceil(T*K/E * capacity_factor) (GShard; Switch eq. 3), at most T since an expert sees a token once."""
    # The 1e-9 stops float error from rounding e.g. 100 * 1.1 = 110.00000000000001 up to 111.
    capacity = math.ceil(num_tokens * top_k / num_experts * capacity_factor - 1e-9)
    return max(1, min(capacity, num_tokens))


@dataclass
class DispatchPlan:
    """Where each kept assignment comes from and goes to."""

    assignment_A: Tensor  # long: index n into the choice-major T*K assignments
    token_A: Tensor  # long: source token of each kept assignment
    kept_E: Tensor  # long: assignments each expert computes
    routed_E: Tensor  # long: assignments the router chose per expert, before dropping

    @property
    def dropped(self) -> Tensor:
        return self.routed_E.sum() - self.kept_E.sum()


def plan_dispatch(experts_TK: Tensor, num_experts: int, capacity: int | None) -> DispatchPlan:
    """Sort assignments by expert and drop those past `capacity` (None: dropless, keep all)."""
    num_tokens = experts_TK.shape[0]
    experts_N = experts_TK.t().reshape(-1)  # choice-major: the priority order of the capacity rule
    routed_E = torch.bincount(experts_N, minlength=num_experts)
    # Stable, so within one expert the assignments stay in priority order.
    sorted_N = torch.argsort(experts_N, stable=True)
    if capacity is None:
        return DispatchPlan(sorted_N, sorted_N % num_tokens, routed_E, routed_E)
    start_E = torch.cumsum(routed_E, dim=0) - routed_E
    position_N = torch.arange(sorted_N.numel(), device=sorted_N.device) - start_E[experts_N[sorted_N]]
    assignment_A = sorted_N[position_N < capacity]  # each expert keeps its first C in priority order
    kept_E = routed_E.clamp(max=capacity)
    return DispatchPlan(assignment_A, assignment_A % num_tokens, kept_E, routed_E)


def permute(x_TD: Tensor, plan: DispatchPlan) -> Tensor:
    """x_AD: one row per kept assignment, contiguous per expert."""
    return x_TD[plan.token_A]


def unpermute(y_AD: Tensor, weights_TK: Tensor, plan: DispatchPlan, num_tokens: int) -> Tensor:
    """y_TD = sum over a token's kept assignments of weight * expert output; zero where all were dropped."""
    weights_A = weights_TK.t().reshape(-1)[plan.assignment_A].to(y_AD.dtype)
    y_TD = y_AD.new_zeros(num_tokens, y_AD.shape[-1])
    return y_TD.index_add(0, plan.token_A, y_AD * weights_A[:, None])
