"""The transformer: shapes, causality, tying, parameter counts, init scales, and that it learns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.config.schema import ModelConfig, MoEConfig, PrecisionConfig
from workbench.models import DenseFFN, ModelAux, MoELayer, MoEStats, Transformer, build_model

V, D, L, H, D_FF = 256, 64, 2, 2, 128  # the dense debug size


def debug_cfg(ffn: str = "dense", **kw) -> ModelConfig:
    return ModelConfig(
        **{"ffn": ffn, "vocab_size": V, "d_model": D, "n_layers": L, "n_heads": H, "d_ff": D_FF, **kw}
    )


def moe_cfg(**kw) -> MoEConfig:
    return MoEConfig(**{"num_experts": 4, "top_k": 2, "expert_hidden": D_FF // 2, **kw})


def make(
    ffn: str = "dense", moe: MoEConfig | None = None, precision: PrecisionConfig | None = None, seed=0, **kw
):
    torch.manual_seed(seed)
    return build_model(debug_cfg(ffn, **kw), moe or moe_cfg(), precision or PrecisionConfig())


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_forward_shapes_and_aux(ffn):
    model = make(ffn)
    logits, aux = model(torch.randint(0, V, (3, 16)))
    assert isinstance(model, Transformer) and isinstance(aux, ModelAux)
    assert logits.shape == (3, 16, V)
    if ffn == "dense":
        assert aux.layers == [] and aux.losses == {} and aux.weighted(moe_cfg()).item() == 0.0
    else:
        assert [s.layer for s in aux.layers] == [0, 1] and all(isinstance(s, MoEStats) for s in aux.layers)
        assert set(aux.losses) == {"aux_loss", "z_loss"}
        assert aux.losses["aux_loss"].shape == () and aux.losses["z_loss"].shape == ()
        # live losses carry gradients, the per-layer copies kept for logging are detached
        assert aux.losses["aux_loss"].requires_grad and not aux.layers[0].losses["aux_loss"].requires_grad
        cfg = moe_cfg(aux_loss_weight=0.01, z_loss_weight=1e-3)
        expected = 0.01 * aux.losses["aux_loss"] + 1e-3 * aux.losses["z_loss"]
        torch.testing.assert_close(aux.weighted(cfg), expected)
        mean_aux = sum(s.losses["aux_loss"] for s in aux.layers) / 2
        torch.testing.assert_close(aux.losses["aux_loss"].detach(), mean_aux)


@pytest.mark.parametrize("ffn,moe", [("dense", None), ("moe", moe_cfg(dropless=True))])
def test_causal(ffn, moe):
    # Capacity-limited MoE is deliberately left out: which assignments an expert drops depends on the whole
    # micro-batch, later tokens included, so token dropping is not causal (true of GShard/Switch too).
    model = make(ffn, moe).eval()
    idx = torch.randint(0, V, (2, 24))
    changed = idx.clone()
    changed[:, 15] = (changed[:, 15] + 1) % V
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_weight_tying():
    tied = make(tie_embeddings=True)
    untied = make(tie_embeddings=False)
    assert tied.lm_head.weight is tied.embed.weight
    assert untied.lm_head.weight is not untied.embed.weight
    assert untied.param_counts()["total"] - tied.param_counts()["total"] == V * D


def test_param_counts_dense():
    counts = make().param_counts()
    per_layer = 2 * D + 4 * D * D + 3 * D * D_FF  # two norms, q/k/v/o, SwiGLU
    assert counts["total"] == V * D + L * per_layer + D
    assert counts["active"] == counts["total"]
    assert counts["embedding"] == V * D


def test_param_counts_moe_by_hand():
    E, k, F_e = 4, 2, 32
    counts = make("moe", moe_cfg(num_experts=E, top_k=k, expert_hidden=F_e)).param_counts()
    experts = E * 3 * D * F_e
    per_layer = 2 * D + 4 * D * D + D * E + experts  # norms, attention, router, experts
    total = V * D + L * per_layer + D
    assert counts["total"] == total == 99136
    assert counts["active"] == total - L * (E - k) * 3 * D * F_e == 74560
    assert counts["active"] < counts["total"]


def test_moe_every_places_moe_in_every_nth_layer():
    model = make("moe", n_layers=4, moe_every=2)
    kinds = [type(b.ffn) for b in model.blocks]
    assert kinds == [DenseFFN, MoELayer, DenseFFN, MoELayer]
    _, aux = model(torch.randint(0, V, (1, 8)))
    assert [s.layer for s in aux.layers] == [1, 3]


def test_init_scales_experts_like_the_dense_ffn():
    torch.manual_seed(0)
    cfg = ModelConfig(ffn="moe", vocab_size=V, d_model=128, n_layers=4, n_heads=2, d_ff=512, init_std=0.02)
    moe = build_model(cfg, MoEConfig(num_experts=8, top_k=2, expert_hidden=256), PrecisionConfig())
    dense = build_model(ModelConfig(**{**cfg.__dict__, "ffn": "dense"}), MoEConfig(), PrecisionConfig())
    out_std = 0.02 / math.sqrt(2 * 4)
    for block_moe, block_dense in zip(moe.blocks, dense.blocks, strict=True):
        experts, ffn = block_moe.ffn.experts, block_dense.ffn
        for got, want, std in [
            (experts.w1_EDF, ffn.w1.weight, 0.02),
            (experts.w3_EDF, ffn.w3.weight, 0.02),
            (experts.w2_EFD, ffn.w2.weight, out_std),
            (block_moe.attn.wo.weight, block_dense.attn.wo.weight, out_std),
        ]:
            assert got.std().item() == pytest.approx(std, rel=0.05)
            assert want.std().item() == pytest.approx(std, rel=0.05)


def test_build_model_needs_resolved_sizes():
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(ModelConfig(), MoEConfig(), PrecisionConfig())
    # expert_hidden=None: each expert is d_ff // top_k wide, so active FFN FLOPs equal the dense model's
    model = build_model(
        debug_cfg("moe"), MoEConfig(num_experts=4, top_k=2, expert_hidden=None), PrecisionConfig()
    )
    assert model.moe_layers()[0].experts.w1_EDF.shape == (4, D, D_FF // 2)


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_learns_a_fixed_batch(ffn):
    model = make(ffn)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(1)
    idx = torch.randint(0, V, (4, 33))
    x, y = idx[:, :-1], idx[:, 1:]
    losses = []
    for _ in range(30):
        logits, aux = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        (loss + aux.weighted(moe_cfg())).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(V), abs=0.3)
    assert losses[-1] < 0.4 * losses[0]


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_fp32_softmax_and_router_under_bf16_autocast(ffn):
    precision = PrecisionConfig(policy="bf16-mixed", fp32_softmax=True)
    model = make(ffn, precision=precision)
    idx = torch.randint(0, V, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, aux = model(idx)
        loss = F.cross_entropy(logits.float().flatten(0, 1), idx.flatten()) + aux.weighted(moe_cfg())
    loss.backward()
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(loss)
    reference, _ = make(ffn)(idx)  # same seed, same weights, fp32 throughout
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.05)
