"""Decoder-only transformer LM (pre-norm, RMSNorm, RoPE, SwiGLU); dense and MoE differ only in the FFN slot.

Shape legend (trailing comments):
    B batch, T sequence, D d_model, H heads, d head dim, V vocabulary
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.config import ConfigError, check_fields
from workbench.config.schema import ModelConfig, MoEConfig, PrecisionConfig
from workbench.models.ffn import DenseFFN
from workbench.models.moe import LOSS_WEIGHTS, MoELayer, MoEStats
from workbench.models.moe.layer import validate_moe

# Parameters that write into the residual stream; GPT-2 scales their init by 1/sqrt(2 * n_layers).
RESIDUAL_OUTPUTS = ("attn.wo.weight", "ffn.w2.weight", "ffn.experts.w2_EFD", "ffn.shared.w2.weight")


@dataclass
class ModelAux:
    """Auxiliary outputs of a forward pass.

    `losses` maps each balancing loss (workbench.models.moe.LOSS_WEIGHTS) to its *unscaled* mean over MoE
    layers, with gradients; `weighted(moe_cfg)` is the term added to the training loss. Empty for a dense
    model. `layers` holds detached per-layer stats.
    """

    losses: dict[str, Tensor] = field(default_factory=dict)
    layers: list[MoEStats] = field(default_factory=list)

    @classmethod
    def collect(cls, layers: list[MoEStats]) -> ModelAux:
        if not layers:
            return cls()
        names = [k for k in layers[0].losses if all(k in s.losses for s in layers)]
        return cls(
            losses={k: torch.stack([s.losses[k] for s in layers]).mean() for k in names},
            layers=[s.detached() for s in layers],
        )

    def weighted(self, moe_cfg: MoEConfig) -> Tensor:
        """The term added to the training loss: sum of weight * loss (Switch sec. 2.2; ST-MoE sec. 3.1;
        DeepSeek-V2 sec. 2.2.4); 0 for a dense model."""
        terms = [
            getattr(moe_cfg, LOSS_WEIGHTS[k]) * v
            for k, v in self.losses.items()
            if getattr(moe_cfg, LOSS_WEIGHTS[k]) > 0
        ]
        return torch.stack(terms).sum() if terms else torch.zeros(())


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain, computed in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(
            x32.pow(2).mean(dim=-1, keepdim=True) + self.eps
        )  # Zhang & Sennrich 2019, eq. 4
        return (y * self.weight.float()).to(x.dtype)


def apply_rope(x: Tensor, base: float) -> Tensor:
    """Rotary position embedding (Su et al. 2021, RoFormer sec. 3.4.2) on x of shape (B, H, T, d).

    Pairs are (i, i + d/2) (the GPT-NeoX layout) rather than adjacent dims: the same rotation up to a fixed
    permutation of head dims, without strided slicing. Angles are built in fp32 on every call, so there is
    no cached table to go stale or be cast to bf16 along with the model.
    """
    seq_len, head_dim = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=x.device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=x.device, dtype=torch.float32), inv_freq)  # (T, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(
        self, d_model: int, n_heads: int, rope_base: float, dropout: float, fp32_softmax: bool
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.rope_base = rope_base
        self.dropout = dropout
        self.fp32_softmax = fp32_softmax
        self.wqkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        qkv = self.wqkv(x).view(B, T, 3, self.n_heads, D // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, d)
        q, k = apply_rope(q, self.rope_base), apply_rope(k, self.rope_base)
        o = self._attend(q, k, v)  # (B, H, T, d)
        return self.wo(o.transpose(1, 2).reshape(B, T, D))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dropout_p = self.dropout if self.training else 0.0
        if self.fp32_softmax and q.dtype in (torch.float16, torch.bfloat16):
            # autocast off: it would cast the fp32 operands back to half before the kernel.
            with torch.autocast(device_type=q.device.type, enabled=False):
                o = F.scaled_dot_product_attention(
                    q.float(), k.float(), v.float(), dropout_p=dropout_p, is_causal=True
                )
            return o.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


class Block(nn.Module):
    """Pre-norm transformer block; `ffn` is either DenseFFN or MoELayer, both (tokens, D) -> ((tokens, D), stats)."""

    def __init__(
        self, attn: CausalSelfAttention, ffn: nn.Module, d_model: int, norm_eps: float, dropout: float
    ):
        super().__init__()
        self.norm1 = RMSNorm(d_model, norm_eps)
        self.attn = attn
        self.norm2 = RMSNorm(d_model, norm_eps)
        self.ffn = ffn
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, idx: Tensor) -> tuple[Tensor, MoEStats | None]:
        x = x + self.drop(self.attn(self.norm1(x)))
        # The FFN sees tokens, not sequences; the ids feed hash routing, seq_len the sequence-wise balance loss.
        h, stats = self.ffn(self.norm2(x).flatten(0, 1), token_ids_T=idx.flatten(), seq_len=x.shape[1])
        x = x + self.drop(h.view(x.shape))
        return x, stats


class Transformer(nn.Module):
    """Token ids (B, T) -> logits (B, T, V) and ModelAux."""

    def __init__(self, cfg: ModelConfig, moe_cfg: MoEConfig, precision_cfg: PrecisionConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is None; set it from the tokenizer before building the model")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(
                CausalSelfAttention(
                    cfg.d_model, cfg.n_heads, cfg.rope_base, cfg.dropout, precision_cfg.fp32_softmax
                ),
                self._ffn(i, cfg, moe_cfg, precision_cfg),
                cfg.d_model,
                cfg.norm_eps,
                cfg.dropout,
            )
            for i in range(cfg.n_layers)
        )
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight  # Press & Wolf 2017
        self.reset_parameters(cfg.init_std, cfg.n_layers)

    @staticmethod
    def _ffn(i: int, cfg: ModelConfig, moe_cfg: MoEConfig, precision_cfg: PrecisionConfig) -> nn.Module:
        if cfg.ffn == "moe" and (i + 1) % cfg.moe_every == 0:
            return MoELayer(cfg.d_model, moe_cfg, precision_cfg, layer=i, d_ff=cfg.d_ff)
        return DenseFFN(cfg.d_model, cfg.d_ff)

    def reset_parameters(self, std: float, n_layers: int) -> None:
        """Every matrix ~ N(0, std), residual output projections ~ N(0, std / sqrt(2 * n_layers)) (GPT-2).

        Experts get exactly the dense FFN's scales: a larger expert init alone flipped MoE vs dense in a
        measured CPU run (see shared/reference/moe-anchors.md), so the comparison depends on it.
        """
        for name, p in self.named_parameters():  # a tied matrix is listed (and initialised) once
            if p.dim() < 2:
                continue  # norm gains stay at 1
            scale = 1 / math.sqrt(2 * n_layers) if name.endswith(RESIDUAL_OUTPUTS) else 1.0
            nn.init.normal_(p, mean=0.0, std=std * scale)

    def forward(self, idx: Tensor) -> tuple[Tensor, ModelAux]:
        x = self.drop(self.embed(idx))  # (B, T, D)
        moe_stats: list[MoEStats] = []
        for block in self.blocks:
            x, stats = block(x, idx)
            if stats is not None:
                moe_stats.append(stats)
        logits = self.lm_head(self.norm(x))  # (B, T, V)
        return logits, ModelAux.collect(moe_stats)

    def moe_layers(self) -> list[MoELayer]:
        return [m for m in self.modules() if isinstance(m, MoELayer)]

    def update_router_biases(self) -> None:
        """Apply the aux-loss-free bias update of every MoE router (after each optimizer step)."""
        for m in self.moe_layers():
            m.router.update_bias()

    def param_counts(self) -> dict[str, int]:
        """total: unique parameters (tied counted once); active: used per token; embedding: the input table."""
        total = sum(p.numel() for p in self.parameters())
        # Each token uses k of E routed experts (expert choice: k * capacity_factor on average), so the rest of
        # each MoE layer's routed expert weights sit idle for it.
        idle = sum(
            round(m.routed_param_count() * (1 - m.shape.active_experts(m.cfg) / m.num_experts))
            for m in self.moe_layers()
        )
        embedding = self.embed.weight.numel()
        return {
            "total": total,
            "active": total - idle,
            "embedding": embedding,
            "non_embedding": total - embedding,
        }


def validate_model(cfg: ModelConfig, moe_cfg: MoEConfig) -> None:
    """The `model` slice's rules, and the `moe` slice's when the FFN slot is an MoE."""
    check_fields(cfg, "model")
    if cfg.d_model % cfg.n_heads:
        heads = [h for h in range(1, cfg.d_model + 1) if cfg.d_model % h == 0 and (cfg.d_model // h) % 2 == 0]
        raise ConfigError(
            f"model.d_model={cfg.d_model} is not divisible by model.n_heads={cfg.n_heads}; "
            f"allowed n_heads: {', '.join(map(str, heads))}"
        )
    if (cfg.d_model // cfg.n_heads) % 2:
        raise ConfigError(
            f"model.d_model/model.n_heads={cfg.d_model // cfg.n_heads} must be even (rotary embeddings rotate pairs)"
        )
    if cfg.ffn == "moe":
        validate_moe(moe_cfg, cfg.d_ff)


def build_model(model_cfg: ModelConfig, moe_cfg: MoEConfig, precision_cfg: PrecisionConfig) -> Transformer:
    """The network for `model_cfg`; vocab_size (and expert_hidden for MoE) must be resolved already."""
    if model_cfg.vocab_size is None:
        raise ValueError("model.vocab_size is None; set it from the tokenizer before building the model")
    return Transformer(model_cfg, moe_cfg, precision_cfg)
