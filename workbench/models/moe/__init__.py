"""Mixture-of-Experts feed-forward: routers, dispatch, experts and balancing, assembled in `MoELayer`."""

from workbench.models.moe.balancing import (
    AGGREGATE_KEYS,
    LOSS_WEIGHTS,
    MoEStats,
    aggregate_stats,
    device_balance_loss,
    global_load_balancing_loss,
    max_violation,
    per_layer_stats,
    router_z_loss,
    sequence_load_balancing_loss,
    switch_load_balancing_loss,
)
from workbench.models.moe.dispatch import DispatchPlan, expert_capacity, plan_dispatch
from workbench.models.moe.experts import SwiGLUExperts
from workbench.models.moe.layer import MoELayer, router_dtypes, validate_moe
from workbench.models.moe.router import (
    ROUTERS,
    ExpertChoiceRouter,
    HashRouter,
    NoisyTopKRouter,
    RandomRouter,
    Router,
    RouterDtypes,
    Routing,
    SwitchRouter,
    TopKRouter,
)
from workbench.models.moe.shape import MoEShape

__all__ = [
    "AGGREGATE_KEYS",
    "LOSS_WEIGHTS",
    "ROUTERS",
    "DispatchPlan",
    "ExpertChoiceRouter",
    "HashRouter",
    "MoELayer",
    "MoEShape",
    "MoEStats",
    "NoisyTopKRouter",
    "RandomRouter",
    "Router",
    "RouterDtypes",
    "Routing",
    "SwiGLUExperts",
    "SwitchRouter",
    "TopKRouter",
    "aggregate_stats",
    "device_balance_loss",
    "expert_capacity",
    "global_load_balancing_loss",
    "max_violation",
    "per_layer_stats",
    "plan_dispatch",
    "router_dtypes",
    "router_z_loss",
    "sequence_load_balancing_loss",
    "switch_load_balancing_loss",
    "validate_moe",
]
