"""Mixture-of-Experts feed-forward: router, dispatch, experts and balancing, assembled in `MoELayer`."""

from workbench.models.moe.balancing import (
    MoEStats,
    aggregate_stats,
    per_layer_stats,
    router_z_loss,
    switch_load_balancing_loss,
)
from workbench.models.moe.dispatch import DispatchPlan, expert_capacity, plan_dispatch
from workbench.models.moe.experts import SwiGLUExperts
from workbench.models.moe.layer import MoELayer, expert_param_count
from workbench.models.moe.router import Routing, TopKRouter

__all__ = [
    "DispatchPlan",
    "MoELayer",
    "MoEStats",
    "Routing",
    "SwiGLUExperts",
    "TopKRouter",
    "aggregate_stats",
    "expert_capacity",
    "expert_param_count",
    "per_layer_stats",
    "plan_dispatch",
    "router_z_loss",
    "switch_load_balancing_loss",
]
