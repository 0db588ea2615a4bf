"""The MoE layer against references written here: dense equivalence, a naive loop, capacity dropping, losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.config.schema import MoEConfig
from workbench.models import DenseFFN
from workbench.models.moe import MoELayer, TopKRouter, router_z_loss, switch_load_balancing_loss


def make_layer(d_model: int = 8, seed: int = 0, fp32_router: bool = True, **moe) -> MoELayer:
    torch.manual_seed(seed)
    layer = MoELayer(d_model, MoEConfig(**moe), fp32_router=fp32_router)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return layer


def naive_moe(x_TD, w_ED, w1_EDF, w3_EDF, w2_EFD, top_k, keep=None, normalize=True):
    """Loop over tokens and their choices; `keep[t][j]` False skips token t's j-th choice.

    `normalize`: the chosen weights are rescaled to sum to 1 before any dropping (moe.normalize_top_k).
    """
    probs_TE = (x_TD @ w_ED.T).softmax(dim=-1)
    weights_TK, experts_TK = probs_TE.topk(top_k, dim=-1)
    if normalize and top_k > 1:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
    rows = []
    for t in range(x_TD.shape[0]):
        y_D = torch.zeros_like(x_TD[t])
        for j in range(top_k):
            if keep is not None and not keep[t][j]:
                continue
            e = int(experts_TK[t, j])
            h_F = F.silu(x_TD[t] @ w1_EDF[e]) * (x_TD[t] @ w3_EDF[e])
            y_D = y_D + weights_TK[t, j] * (h_F @ w2_EFD[e])
        rows.append(y_D)
    return torch.stack(rows)


def expected_keep(experts_TK: torch.Tensor, capacity: int) -> tuple[list[list[bool]], int]:
    """The documented priority rule, by hand: first choices of all tokens in token order, then second choices..."""
    num_tokens, top_k = experts_TK.shape
    filled: dict[int, int] = {}
    keep = [[False] * top_k for _ in range(num_tokens)]
    for j in range(top_k):
        for t in range(num_tokens):
            e = int(experts_TK[t, j])
            if filled.get(e, 0) < capacity:
                keep[t][j] = True
                filled[e] = filled.get(e, 0) + 1
    dropped = sum(not k for row in keep for k in row)
    return keep, dropped


def layer_params(layer: MoELayer) -> list[torch.Tensor]:
    return [layer.router.w_ED, layer.experts.w1_EDF, layer.experts.w3_EDF, layer.experts.w2_EFD]


def reference_grads(layer: MoELayer, x_TD, g_TD, top_k, keep=None):
    """Output and gradients (input, router, experts) of the naive loop on copies of the layer's weights."""
    x = x_TD.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in layer_params(layer)]
    y = naive_moe(x, *params, top_k=top_k, keep=keep, normalize=layer.router.normalize)
    (y * g_TD).sum().backward()
    return y.detach(), x.grad, [p.grad for p in params]


@pytest.mark.parametrize("moe", [dict(dropless=True), dict(dropless=False, capacity_factor=8.0)])
def test_one_expert_top1_equals_dense_ffn(moe):
    torch.manual_seed(0)
    d_model, hidden = 16, 24
    dense = DenseFFN(d_model, hidden)
    layer = MoELayer(d_model, MoEConfig(num_experts=1, top_k=1, expert_hidden=hidden, **moe))
    with torch.no_grad():
        layer.router.w_ED.normal_()
        layer.experts.w1_EDF[0].copy_(dense.w1.weight.T)
        layer.experts.w3_EDF[0].copy_(dense.w3.weight.T)
        layer.experts.w2_EFD[0].copy_(dense.w2.weight.T)
    x_dense = torch.randn(20, d_model, requires_grad=True)
    x_moe = x_dense.detach().clone().requires_grad_()
    g = torch.randn(20, d_model)

    y_dense, none = dense(x_dense)
    y_moe, stats = layer(x_moe)
    (y_dense * g).sum().backward()
    (y_moe * g).sum().backward()

    assert none is None
    assert int(stats.dropped) == 0
    torch.testing.assert_close(y_moe, y_dense, atol=1e-5, rtol=0)
    torch.testing.assert_close(x_moe.grad, x_dense.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.experts.w2_EFD.grad[0], dense.w2.weight.grad.T, atol=1e-5, rtol=0)


@pytest.mark.parametrize("normalize", [True, False])
def test_dropless_matches_naive_loop_in_outputs_and_gradients(normalize):
    top_k = 2
    layer = make_layer(
        d_model=8, num_experts=4, top_k=top_k, expert_hidden=6, dropless=True, normalize_top_k=normalize
    )
    assert layer.router.normalize is normalize
    x = torch.randn(32, 8, requires_grad=True)
    g = torch.randn(32, 8)

    y, stats = layer(x)
    (y * g).sum().backward()
    y_ref, gx_ref, gparams_ref = reference_grads(layer, x, g, top_k)

    assert int(stats.dropped) == 0 and stats.assignments == 64
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, gx_ref, atol=1e-5, rtol=1e-5)
    for p, g_ref in zip(layer_params(layer), gparams_ref, strict=True):
        torch.testing.assert_close(p.grad, g_ref, atol=1e-5, rtol=1e-5)


def test_capacity_drops_exactly_the_assignments_past_capacity_hand_built():
    # Router = identity on the first 3 dims, so each row's first 3 entries are its router logits.
    logits = [[3, 2, 0], [3, 0, 2], [3, 2, 0], [2, 3, 0], [3, 2, 0], [0, 2, 3]]
    x = torch.zeros(6, 5)
    x[:, :3] = torch.tensor(logits, dtype=torch.float32)
    x[:, 3:] = torch.randn(6, 2)
    layer = make_layer(d_model=5, num_experts=3, top_k=2, expert_hidden=4, capacity_factor=0.5)
    with torch.no_grad():
        layer.router.w_ED.zero_()
        layer.router.w_ED[:, :3] = torch.eye(3)
    assert layer.capacity(6) == 2  # ceil(6 * 2 / 3 * 0.5)

    y, stats = layer(x)

    # First choices: expert 0 gets tokens 0,1,2,4 and keeps 0,1; expert 1 keeps 3; expert 2 keeps 5.
    # Second choices: 0->e1 kept (e1 full now), 1->e2 kept (e2 full), then 2->e1, 3->e0, 4->e1, 5->e1 dropped.
    keep = [[True, True], [True, True], [False, False], [True, False], [False, False], [True, False]]
    assert expected_keep(torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0], [0, 1], [2, 1]]), 2) == (keep, 6)
    assert int(stats.dropped) == 6 and stats.drop_frac == 0.5
    assert stats.tokens_per_expert.tolist() == [2.0, 2.0, 2.0]
    assert stats.routed_per_expert.tolist() == [5.0, 5.0, 2.0]
    y_ref = naive_moe(
        x, *[p.detach() for p in layer_params(layer)], top_k=2, keep=keep, normalize=layer.router.normalize
    )
    torch.testing.assert_close(y.detach(), y_ref, atol=1e-5, rtol=1e-5)
    assert torch.all(y[2] == 0) and torch.all(y[4] == 0)  # every assignment dropped: zero output
    assert not torch.all(y[3] == 0)


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 1.25])
def test_capacity_drops_match_priority_rule_on_skewed_random_routing(capacity_factor):
    num_tokens, d_model, top_k = 40, 8, 2
    layer = make_layer(
        d_model=d_model, seed=1, num_experts=4, top_k=top_k, expert_hidden=6, capacity_factor=capacity_factor
    )
    with torch.no_grad():
        layer.router.w_ED[0] += 1.0  # skew the router toward expert 0 so capacity binds
    x = torch.randn(num_tokens, d_model, requires_grad=True) + 0.5
    x.retain_grad()
    g = torch.randn(num_tokens, d_model)

    y, stats = layer(x)
    (y * g).sum().backward()

    experts_TK = (x.detach() @ layer.router.w_ED.detach().T).topk(top_k, dim=-1).indices
    capacity = math.ceil(num_tokens * top_k / 4 * capacity_factor)
    keep, dropped = expected_keep(experts_TK, capacity)
    assert dropped > 0
    assert int(stats.dropped) == dropped
    kept_per_expert = torch.zeros(4)
    for t in range(num_tokens):
        for j in range(top_k):
            kept_per_expert[experts_TK[t, j]] += keep[t][j]
    assert stats.tokens_per_expert.tolist() == kept_per_expert.tolist()
    y_ref, gx_ref, gparams_ref = reference_grads(layer, x, g, top_k, keep=keep)
    torch.testing.assert_close(y.detach(), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, gx_ref, atol=1e-5, rtol=1e-5)
    for p, g_ref in zip(layer_params(layer), gparams_ref, strict=True):
        torch.testing.assert_close(p.grad, g_ref, atol=1e-5, rtol=1e-5)


def test_switch_loss_is_one_when_balanced_and_grows_with_imbalance():
    num_tokens, num_experts, top_k = 16, 4, 2
    uniform_TE = torch.full((num_tokens, num_experts), 1 / num_experts)
    balanced_TK = torch.arange(num_tokens * top_k).reshape(num_tokens, top_k) % num_experts
    assert switch_load_balancing_loss(uniform_TE, balanced_TK).item() == 1.0

    collapsed_TK = torch.zeros(num_tokens, 1, dtype=torch.long)  # every token to expert 0
    losses = []
    for p0 in (0.25, 0.4, 0.6, 0.8, 1.0):
        probs_TE = torch.full((num_tokens, num_experts), (1 - p0) / (num_experts - 1))
        probs_TE[:, 0] = p0
        losses.append(switch_load_balancing_loss(probs_TE, collapsed_TK).item())
    assert (
        losses == sorted(losses)
        and losses[0] == pytest.approx(1.0)
        and losses[-1] == pytest.approx(num_experts)
    )


def test_switch_loss_in_layer_is_one_for_uniform_router_and_its_gradient_reaches_the_router():
    layer = make_layer(num_experts=4, top_k=2, expert_hidden=6)
    with torch.no_grad():
        layer.router.w_ED.zero_()
    _, stats = layer(torch.randn(12, 8))
    assert stats.aux_loss.item() == pytest.approx(1.0, abs=1e-6)

    layer = make_layer(num_experts=4, top_k=2, expert_hidden=6)
    _, stats = layer(torch.randn(12, 8))
    stats.aux_loss.backward()
    assert layer.router.w_ED.grad is not None and layer.router.w_ED.grad.abs().sum() > 0
    assert layer.experts.w1_EDF.grad is None  # the loss only reaches the router


def test_z_loss_matches_formula():
    logits_TE = torch.randn(10, 6, dtype=torch.float64) * 5
    by_hand = torch.log(torch.exp(logits_TE).sum(dim=-1)).pow(2).mean()
    torch.testing.assert_close(router_z_loss(logits_TE), by_hand)

    layer = make_layer(num_experts=4, top_k=2, expert_hidden=6)
    x = torch.randn(12, 8)
    _, stats = layer(x)
    logits = (x @ layer.router.w_ED.T).double()
    torch.testing.assert_close(
        stats.z_loss.double(), torch.log(torch.exp(logits).sum(-1)).pow(2).mean(), atol=1e-5, rtol=1e-5
    )


def test_fp32_router_under_bf16_autocast():
    torch.manual_seed(0)
    router = TopKRouter(8, 4, 2, fp32=True)
    torch.nn.init.normal_(router.w_ED)
    x_fp32, x_bf16 = torch.randn(5, 8), torch.randn(5, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r32 = router(x_fp32)
        r16 = router(x_bf16)
        low = TopKRouter(8, 4, 2, fp32=False)
        torch.nn.init.normal_(low.w_ED)
        r_low = low(x_fp32)
    assert r32.logits_TE.dtype == torch.float32 and r32.probs_TE.dtype == torch.float32
    assert r16.logits_TE.dtype == torch.float32
    assert (
        r32.weights_TK.dtype == torch.float32 and r16.weights_TK.dtype == torch.bfloat16
    )  # activation dtype
    assert r_low.logits_TE.dtype == torch.bfloat16  # without the flag autocast computes the router in bf16

    layer = make_layer(num_experts=4, top_k=2, expert_hidden=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, stats = layer(torch.randn(12, 8))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all() and stats.aux_loss.dtype == torch.float32


def test_large_batch_accounts_for_every_assignment():
    # Also a speed guard: 16k assignments would take seconds if dispatch looped over tokens in Python.
    layer = make_layer(d_model=16, num_experts=8, top_k=2, expert_hidden=8, capacity_factor=1.0)
    y, stats = layer(torch.randn(8192, 16))
    assert y.shape == (8192, 16)
    assert int(stats.tokens_per_expert.sum()) + int(stats.dropped) == stats.assignments
    assert stats.routed_per_expert.sum().item() == stats.assignments


def test_top1_keeps_raw_probability_so_the_router_learns_from_the_loss():
    # Renormalising a single weight would make it exactly 1 and cut the router off from the main loss (Switch).
    layer = make_layer(
        d_model=8, num_experts=4, top_k=1, expert_hidden=6, dropless=True, normalize_top_k=True
    )
    assert layer.router.normalize is False
    x = torch.randn(16, 8)
    y, _ = layer(x)
    y.sum().backward()
    assert layer.router.w_ED.grad.abs().sum() > 0
