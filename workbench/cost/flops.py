"""Analytic model FLOPs per token, the numerator of MFU and the unit of `budget.flops`.

Convention (PaLM, Chowdhery et al. 2022, App. B; torchtitan for MoE):
- 1 multiply-add = 2 FLOPs. Forward = 2 x the active matmul parameters (q, k, v, o projections; FFN matrices,
  for MoE layers only the top_k experts of width expert_hidden plus the router d_model x E; the LM head
  d_model x V; the input embedding lookup counts 0) + attention scores and weighted sum, 2 x 2 x n_layers x
  seq_len x d_model, with no discount for the causal mask.
- Training = 3 x forward (backward = 2 x forward). Norms, RoPE, softmax and SwiGLU's elementwise ops count 0.
- MoE layers count the routed experts each token uses (top_k after segmentation; for expert choice the average,
  top_k * capacity_factor), the shared experts, and the router (twice for noisy top-k, whose noise has its own
  matrix; hash and random routers have none).
- These are model FLOPs: dropped tokens, capacity padding and recomputation are not subtracted or added.
"""

from __future__ import annotations

from workbench.config.schema import ModelConfig, MoEConfig
from workbench.models.moe.shape import MoEShape

TRAIN_PER_FORWARD = (
    3  # forward + backward, whose two matmuls per forward matmul (input and weight grads) cost 2x
)
FLOPS_PER_MAC = 2


def num_moe_layers(model_cfg: ModelConfig) -> int:
    """Layers whose FFN is MoE: layer i when ffn == "moe" and (i + 1) % moe_every == 0."""
    if model_cfg.ffn != "moe":
        return 0
    return sum(1 for i in range(model_cfg.n_layers) if (i + 1) % model_cfg.moe_every == 0)


def flops_per_token(model_cfg: ModelConfig, moe_cfg: MoEConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token, by part, plus "forward".

    Keys (training FLOPs unless named otherwise): "total" = "dense_matmul" + "experts" + "router" + "attention";
    "dense_matmul": attention projections, dense FFNs and the LM head; "experts": the top_k routed experts;
    "router": the router matmul; "attention": QK^T and attention x V; "forward": total / 3.
    """
    if model_cfg.vocab_size is None:
        raise ValueError("model.vocab_size is None; FLOPs need the tokenizer's vocabulary size")
    d, n_layers = model_cfg.d_model, model_cfg.n_layers
    n_moe = num_moe_layers(model_cfg)
    n_dense = n_layers - n_moe

    # Forward multiply-adds per token.
    macs_dense = n_layers * 4 * d * d + n_dense * 3 * d * model_cfg.d_ff + d * model_cfg.vocab_size
    macs_experts = 0
    macs_router = 0
    if n_moe:
        shape = MoEShape.of(moe_cfg, model_cfg.d_ff)
        per_token = shape.active_experts(moe_cfg) + shape.num_shared  # only the experts a token visits
        macs_experts = n_moe * per_token * 3 * d * shape.expert_hidden
        router_matrices = {"hash": 0, "random": 0, "noisy_topk": 2}.get(moe_cfg.router.type, 1)
        macs_router = n_moe * d * shape.num_experts * router_matrices
    macs_attention = n_layers * 2 * seq_len * d  # PaLM App. B: 6N + 12*L*H*Q*T, no causal discount

    def train(macs: int) -> float:
        return float(TRAIN_PER_FORWARD * FLOPS_PER_MAC * macs)

    parts = {
        "dense_matmul": train(macs_dense),
        "experts": train(macs_experts),
        "router": train(macs_router),
        "attention": train(macs_attention),
    }
    total = sum(parts.values())
    return {"total": total, "forward": total / TRAIN_PER_FORWARD, **parts}
