"""The network: a plain nn.Module transformer whose FFN slot holds a dense SwiGLU or an MoE layer."""

from workbench.models.ffn import DenseFFN
from workbench.models.moe import MoELayer, MoEStats, aggregate_stats, per_layer_stats
from workbench.models.transformer import ModelAux, Transformer, build_model, validate_model

__all__ = [
    "DenseFFN",
    "ModelAux",
    "MoELayer",
    "MoEStats",
    "Transformer",
    "aggregate_stats",
    "build_model",
    "per_layer_stats",
    "validate_model",
]
