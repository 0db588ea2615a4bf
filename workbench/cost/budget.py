"""Budgets: how much a run may spend, in steps, tokens, analytic FLOPs or money (enforced by the CostMeter)."""

from __future__ import annotations

import math

from workbench.config import ConfigError, check_fields
from workbench.config.schema import BudgetConfig


def validate_budget(b: BudgetConfig) -> None:
    check_fields(b, "budget")
    if all(v is None for v in (b.steps, b.tokens, b.flops, b.usd)):
        raise ConfigError(
            "budget: no limit set; set at least one of budget.steps, budget.tokens, budget.flops, budget.usd"
        )


def budget_steps(budget: BudgetConfig, tokens_per_step: int, flops_per_token: float) -> int | None:
    """The step count at which the first step/token/FLOP limit is reached (None if only money limits)."""
    limits = []
    if budget.steps is not None:
        limits.append(int(budget.steps))
    if budget.tokens is not None:
        limits.append(math.ceil(budget.tokens / tokens_per_step))
    if budget.flops is not None:
        limits.append(math.ceil(budget.flops / (flops_per_token * tokens_per_step)))
    return min(limits) if limits else None
