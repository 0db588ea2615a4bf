"""The MoE layer against naive per-token references written here: top-k, dense equivalence, capacity,
padding, router dtypes.

Shape legend: T tokens, D model width, E experts, K choices per token, F expert hidden width.
"""

from __future__ import annotations

import math

import pytest
import torch
from moe_helpers import make_layer, one_thread, swiglu  # noqa: F401 (one_thread: autouse fixture)

from workbench.config.schema import PrecisionConfig
from workbench.models import DenseFFN
from workbench.models.moe import MoELayer


def naive_topk(x_TD, w_ED, w1_EDF, w3_EDF, w2_EFD, top_k, normalize=True, keep=None):
    """One token at a time: softmax over experts, top-k, optional renormalisation, weighted sum of SwiGLUs.

    `keep[t][j]` False skips token t's j-th choice (dropped by capacity).
    """
    rows = []
    for t in range(x_TD.shape[0]):
        probs_E = (x_TD[t] @ w_ED.T).softmax(dim=-1)
        weights_K, experts_K = probs_E.topk(top_k)
        if normalize and top_k > 1:
            weights_K = weights_K / weights_K.sum()
        y_D = torch.zeros_like(x_TD[t])
        for j in range(top_k):
            if keep is None or keep[t][j]:
                e = int(experts_K[j])
                y_D = y_D + weights_K[j] * swiglu(x_TD[t], w1_EDF[e], w3_EDF[e], w2_EFD[e])
        rows.append(y_D)
    return torch.stack(rows)


def routing_by_hand(x_TD, w_ED, top_k, normalize=True):
    """experts_TK and weights_TK of a softmax top-k router, token by token."""
    experts, weights = [], []
    for t in range(x_TD.shape[0]):
        w_K, e_K = (x_TD[t] @ w_ED.T).softmax(dim=-1).topk(top_k)
        weights.append(w_K / w_K.sum() if normalize and top_k > 1 else w_K)
        experts.append(e_K)
    return torch.stack(experts), torch.stack(weights)


def expected_keep(experts_TK, weights_TK, capacity: int, policy: str) -> list[list[bool]]:
    """The documented priority rule by hand: walk assignments in priority order; each expert keeps C.

    position: choice-major (all first choices in token order, then all second choices...);
    probs: highest weight first, choice-major order among equal weights.
    """
    num_tokens, top_k = experts_TK.shape
    order = [(j, t) for j in range(top_k) for t in range(num_tokens)]
    if policy == "probs":
        order.sort(key=lambda jt: -float(weights_TK[jt[1], jt[0]]))  # stable: ties stay choice-major
    filled = [0] * (int(experts_TK.max()) + 1)
    keep = [[False] * top_k for _ in range(num_tokens)]
    for j, t in order:
        e = int(experts_TK[t, j])
        if filled[e] < capacity:
            keep[t][j] = True
            filled[e] += 1
    return keep


def layer_params(layer: MoELayer) -> list[torch.Tensor]:
    return [layer.router.w_ED, layer.experts.w1_EDF, layer.experts.w3_EDF, layer.experts.w2_EFD]


def reference_and_grads(layer: MoELayer, x_TD, g_TD, keep=None):
    """The naive loop's output and its gradients (input, router, experts) on copies of the layer's weights."""
    x = x_TD.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in layer_params(layer)]
    y = naive_topk(x, *params, layer.top_k, layer.cfg.router.normalize_top_k, keep)
    (y * g_TD).sum().backward()
    return y.detach(), x.grad, [p.grad for p in params]


def run_with_grads(layer: MoELayer, x_TD, g_TD):
    x = x_TD.detach().clone().requires_grad_()
    y, stats = layer(x)
    (y * g_TD).sum().backward()
    return y.detach(), x.grad, [p.grad for p in layer_params(layer)], stats


def assert_matches_reference(layer: MoELayer, x_TD, keep=None, tol=1e-5):
    g_TD = torch.randn_like(x_TD)
    y, gx, gparams, stats = run_with_grads(layer, x_TD, g_TD)
    y_ref, gx_ref, gparams_ref = reference_and_grads(layer, x_TD, g_TD, keep)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(gx, gx_ref, atol=tol, rtol=tol)
    for g, g_ref in zip(gparams, gparams_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=tol, rtol=tol)
    return y, stats


@pytest.mark.parametrize("normalize", [True, False])
def test_dropless_topk_matches_naive_loop_in_outputs_and_gradients(normalize):
    layer = make_layer(
        num_experts=4, top_k=2, expert_hidden=6, dropless=True, router={"normalize_top_k": normalize}
    )
    x_TD = torch.randn(32, 8)

    _, stats = assert_matches_reference(layer, x_TD)

    assert int(stats.dropped) == 0 and int(stats.unrouted) == 0
    experts_TK, _ = routing_by_hand(x_TD, layer.router.w_ED.detach(), 2)
    assert stats.routed_E.tolist() == torch.bincount(experts_TK.flatten(), minlength=4).float().tolist()
    assert torch.equal(stats.kept_E, stats.routed_E)


def test_renormalisation_changes_the_output():
    # Guards the test above: with and without renormalisation the references disagree, or it checks nothing.
    x_TD = torch.randn(16, 8)
    params = [p.detach() for p in layer_params(make_layer(num_experts=4, top_k=2, expert_hidden=6))]
    with_norm, without = naive_topk(x_TD, *params, 2, True), naive_topk(x_TD, *params, 2, False)
    assert (with_norm - without).abs().max() > 0.1


@pytest.mark.parametrize("moe", [{"dropless": True}, {"dropless": False, "capacity_factor": 1.0}])
def test_one_expert_top1_equals_dense_swiglu(moe):
    torch.manual_seed(0)
    d_model, hidden = 16, 24
    dense = DenseFFN(d_model, hidden)
    layer = make_layer(d_model, num_experts=1, top_k=1, expert_hidden=hidden, **moe)
    with torch.no_grad():
        layer.experts.w1_EDF[0].copy_(dense.w1.weight.T)
        layer.experts.w3_EDF[0].copy_(dense.w3.weight.T)
        layer.experts.w2_EFD[0].copy_(dense.w2.weight.T)
    x_dense = torch.randn(20, d_model, requires_grad=True)
    x_moe = x_dense.detach().clone().requires_grad_()
    g_TD = torch.randn(20, d_model)

    y_dense, no_stats = dense(x_dense)
    y_moe, stats = layer(x_moe)
    (y_dense * g_TD).sum().backward()
    (y_moe * g_TD).sum().backward()

    assert no_stats is None
    assert int(stats.dropped) == 0 and stats.routed_E.tolist() == [20.0]
    torch.testing.assert_close(y_moe, y_dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_moe.grad, x_dense.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.experts.w1_EDF.grad[0], dense.w1.weight.grad.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.experts.w2_EFD.grad[0], dense.w2.weight.grad.T, atol=1e-5, rtol=1e-5)
    # One expert: the softmax weight is exactly 1 whatever the logits, so the router gets no gradient.
    assert torch.count_nonzero(layer.router.w_ED.grad) == 0


# Hand-built routing: an identity router on the first 3 dims makes x[:, :3] the logits. Top-2 choices and the
# renormalised weights sigmoid(gap) (gap = first logit - second logit):
#   t0 [ 1, 0,-5] -> e0 .731, e1 .269      t3 [ 0, 3,-5] -> e1 .953, e0 .047
#   t1 [ 4, 0,-5] -> e0 .982, e1 .018      t4 [-5, 0, 2] -> e2 .881, e1 .119
#   t2 [ 5, 0,-5] -> e0 .993, e1 .007      t5 [-5, 0, 6] -> e2 .998, e1 .002
# Capacity ceil(6 * 2 / 3 * 0.5) = 2.
# position: first choices in token order fill e0 with t0, t1 (t2 dropped), e1 with t3, e2 with t4, t5; then
#   second choices: t0 -> e1 kept (e1 full), every other second choice dropped. t2 loses both: unrouted.
# probs: e0 keeps its two heaviest (t2 .993, t1 .982) and drops t0's first choice (.731) and t3's second;
#   e1 keeps t3 (.953) and t0's second (.269); e2 keeps t4, t5. Every token keeps one assignment.
HAND_LOGITS = [[1, 0, -5], [4, 0, -5], [5, 0, -5], [0, 3, -5], [-5, 0, 2], [-5, 0, 6]]
HAND_EXPECTED = {
    "position": {
        "keep": [[True, True], [True, False], [False, False], [True, False], [True, False], [True, False]],
        "unrouted": 1,
    },
    "probs": {
        "keep": [[False, True], [True, False], [True, False], [True, False], [True, False], [True, False]],
        "unrouted": 0,
    },
}


@pytest.mark.parametrize("policy", ["position", "probs"])
def test_capacity_drops_the_hand_built_case_by_the_priority_rule(policy):
    layer = make_layer(
        d_model=5, num_experts=3, top_k=2, expert_hidden=4, capacity_factor=0.5, drop_policy=policy
    )
    with torch.no_grad():
        layer.router.w_ED.zero_()
        layer.router.w_ED[:, :3] = torch.eye(3)
    x_TD = torch.cat([torch.tensor(HAND_LOGITS, dtype=torch.float32), torch.randn(6, 2)], dim=1)
    keep = HAND_EXPECTED[policy]["keep"]
    experts_TK, weights_TK = routing_by_hand(x_TD, layer.router.w_ED.detach(), 2)
    assert experts_TK.tolist() == [[0, 1], [0, 1], [0, 1], [1, 0], [2, 1], [2, 1]]
    assert expected_keep(experts_TK, weights_TK, 2, policy) == keep  # the helper agrees with the comment
    assert layer.capacity(6) == 2

    y, stats = assert_matches_reference(layer, x_TD, keep)

    assert stats.routed_E.tolist() == [4.0, 6.0, 2.0]
    assert stats.kept_E.tolist() == [2.0, 2.0, 2.0]
    assert int(stats.dropped) == 6 == stats.routed_E.sum() - stats.kept_E.sum()
    assert stats.drop_frac == 0.5
    assert int(stats.unrouted) == HAND_EXPECTED[policy]["unrouted"]
    for t in range(6):
        assert torch.all(y[t] == 0) == (not any(keep[t]))  # zero output exactly when all choices dropped


@pytest.mark.parametrize("policy", ["position", "probs"])
@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 1.25])
def test_capacity_drops_match_the_priority_rule_on_skewed_random_routing(policy, capacity_factor):
    num_tokens, num_experts, top_k = 40, 4, 2
    layer = make_layer(
        seed=1,
        num_experts=num_experts,
        top_k=top_k,
        expert_hidden=6,
        capacity_factor=capacity_factor,
        drop_policy=policy,
        router={"normalize_top_k": False},  # raw weights: first and second choices interleave in "probs"
    )
    with torch.no_grad():
        layer.router.w_ED[0] += 1.0  # skew toward expert 0 so capacity binds
    torch.manual_seed(2)
    x_TD = torch.randn(num_tokens, 8) + 0.5
    experts_TK, weights_TK = routing_by_hand(x_TD, layer.router.w_ED.detach(), top_k, normalize=False)
    capacity = math.ceil(num_tokens * top_k / num_experts * capacity_factor)
    keep = expected_keep(experts_TK, weights_TK, capacity, policy)
    kept_E = torch.zeros(num_experts)
    for t in range(num_tokens):
        for j in range(top_k):
            kept_E[experts_TK[t, j]] += keep[t][j]
    unrouted = sum(not any(row) for row in keep)
    assert layer.capacity(num_tokens) == capacity
    assert kept_E.sum() < num_tokens * top_k  # capacity binds

    y, stats = assert_matches_reference(layer, x_TD, keep)

    assert stats.kept_E.tolist() == kept_E.tolist()
    assert int(stats.dropped) == num_tokens * top_k - int(kept_E.sum())
    assert int(stats.dropped) == int(stats.routed_E.sum() - stats.kept_E.sum())
    assert int(stats.unrouted) == unrouted
    assert stats.unrouted_frac == unrouted / num_tokens
    for t in range(num_tokens):
        if not any(keep[t]):
            assert torch.all(y[t] == 0)


def test_probs_and_position_policies_disagree_on_skewed_routing():
    # Guards the test above: on its inputs at CF 0.5 the two rules keep different assignments.
    layer = make_layer(seed=1, num_experts=4, top_k=2, expert_hidden=6, router={"normalize_top_k": False})
    with torch.no_grad():
        layer.router.w_ED[0] += 1.0
    torch.manual_seed(2)
    x_TD = torch.randn(40, 8) + 0.5
    experts_TK, weights_TK = routing_by_hand(x_TD, layer.router.w_ED.detach(), 2, normalize=False)
    assert expected_keep(experts_TK, weights_TK, 10, "position") != expected_keep(
        experts_TK, weights_TK, 10, "probs"
    )


def test_eval_capacity_factor_applies_in_eval_only():
    num_tokens, num_experts, top_k = 40, 4, 2
    layer = make_layer(
        seed=1,
        num_experts=num_experts,
        top_k=top_k,
        expert_hidden=6,
        capacity_factor=1.0,
        eval_capacity_factor=1.5,
    )
    with torch.no_grad():
        layer.router.w_ED[0] += 1.5
    torch.manual_seed(2)
    x_TD = torch.randn(num_tokens, 8) + 0.5
    experts_TK, weights_TK = routing_by_hand(x_TD, layer.router.w_ED.detach(), top_k)
    routed_E = torch.bincount(experts_TK.flatten(), minlength=num_experts).float()

    for training, capacity in ((True, 20), (False, 30)):  # ceil(40 * 2 / 4 * CF) for CF 1.0 and 1.5
        layer.train(training)
        assert layer.capacity(num_tokens) == capacity
        keep = expected_keep(experts_TK, weights_TK, capacity, "position")
        y, stats = layer(x_TD)
        torch.testing.assert_close(
            y, naive_topk(x_TD, *layer_params(layer), top_k, keep=keep), atol=1e-5, rtol=1e-5
        )
        assert stats.kept_E.tolist() == routed_E.clamp(max=capacity).tolist()
        assert int(stats.dropped) == int((routed_E - capacity).clamp(min=0).sum()) > 0
    train_drops = int((routed_E - 20).clamp(min=0).sum())
    assert int(stats.dropped) < train_drops

    layer.cfg.eval_capacity_factor = None  # unset: eval uses the training factor
    assert layer.capacity(num_tokens) == 20


@pytest.mark.parametrize("moe", [{"capacity_factor": 1.0}, {"capacity_factor": 1.5}, {"dropless": True}])
def test_pad_to_capacity_gives_the_same_outputs_and_gradients(moe):
    num_tokens, num_experts = 24, 4
    layers = [
        make_layer(seed=3, num_experts=num_experts, top_k=2, expert_hidden=6, pad_to_capacity=pad, **moe)
        for pad in (False, True)
    ]
    with torch.no_grad():
        for layer in layers:
            layer.router.w_ED[1] += 1.0  # uneven loads: some slots stay empty
    x_TD, g_TD = torch.randn(num_tokens, 8), torch.randn(num_tokens, 8)

    (y, gx, gparams, stats), (y_pad, gx_pad, gparams_pad, stats_pad) = (
        run_with_grads(m, x_TD, g_TD) for m in layers
    )

    torch.testing.assert_close(y_pad, y, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gx_pad, gx, atol=1e-6, rtol=1e-6)
    for g_pad, g in zip(gparams_pad, gparams, strict=True):
        torch.testing.assert_close(g_pad, g, atol=1e-6, rtol=1e-6)
    assert torch.equal(stats_pad.kept_E, stats.kept_E) and int(stats_pad.dropped) == int(stats.dropped)
    slots = layers[1].capacity(num_tokens) or int(stats.kept_E.max())  # dropless pads to the busiest expert
    total = num_experts * slots
    kept = float(stats.kept_E.sum())
    assert kept < total
    assert stats_pad.padded_slots == total - kept
    assert stats_pad.pad_frac == pytest.approx((total - kept) / total, abs=1e-12)
    assert stats.pad_frac == 0.0


def test_top1_softmax_keeps_the_raw_probability_so_the_router_learns_from_the_main_loss():
    # Renormalising one weight would make it exactly 1, cutting the router off from the loss (Switch 2.1).
    layer = make_layer(
        num_experts=4, top_k=1, expert_hidden=6, dropless=True, router={"normalize_top_k": True}
    )
    x_TD = torch.randn(16, 8)

    routing = layer.router(x_TD)
    probs_TE = (x_TD @ layer.router.w_ED.detach().T).softmax(dim=-1)
    torch.testing.assert_close(routing.weights_TK, probs_TE.max(dim=-1, keepdim=True).values)
    assert routing.weights_TK.max() < 0.999

    assert_matches_reference(
        layer, x_TD
    )  # reference: weight = the top-1 probability, router gradient included
    assert layer.router.w_ED.grad.abs().sum() > 0


def test_router_runs_in_fp32_under_bf16_autocast_and_combines_in_fp32():
    layer = make_layer(num_experts=4, top_k=2, expert_hidden=6, dropless=True)
    x_TD = torch.randn(16, 8)  # the residual stream stays fp32 under mixed precision

    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = layer.router(x_TD)
        y_TD, stats = layer(x_TD)

    assert routing.logits_TE.dtype == torch.float32
    assert routing.scores_TE.dtype == torch.float32
    assert routing.weights_TK.dtype == torch.float32
    torch.testing.assert_close(
        routing.logits_TE, x_TD @ layer.router.w_ED.detach().T
    )  # fp32 values, not bf16
    assert stats.losses["aux_loss"].dtype == torch.float32
    # An fp32 combine leaves values a bf16 sum could not hold; the experts' own error is bf16-sized.
    assert y_TD.dtype == torch.float32
    assert (y_TD.bfloat16().float() != y_TD).float().mean() > 0.5
    y_ref = naive_topk(x_TD, *[p.detach() for p in layer_params(layer)], 2)
    torch.testing.assert_close(y_TD, y_ref, atol=0.05, rtol=0.05)


def test_bf16_combine_rounds_the_output_to_bf16():
    # Guards the test above: with router_combine_dtype=bf16 the same check sees bf16-representable outputs.
    layer = make_layer(
        num_experts=4, top_k=2, expert_hidden=6, precision=PrecisionConfig(router_combine_dtype="bf16")
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_TD, _ = layer(torch.randn(16, 8))
    assert torch.equal(y_TD.bfloat16().float(), y_TD)


@pytest.mark.parametrize("router_type", ["topk", "expert_choice"])
def test_router_logits_dtype_compute_follows_autocast(router_type):
    precision = PrecisionConfig(router_logits_dtype="compute", router_combine_dtype="compute")
    layer = make_layer(
        num_experts=4, top_k=2, expert_hidden=6, precision=precision, router={"type": router_type}
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = layer.router(torch.randn(16, 8), capacity=layer.capacity(16))
    assert routing.logits_TE.dtype == torch.bfloat16
    weights = routing.weights_TK if routing.weights_TK is not None else routing.plan.weight_A
    assert weights.dtype == torch.bfloat16


def test_router_logits_dtype_compute_follows_bf16_activations():
    # bf16-true (no autocast): "compute" is the activations' dtype, the default stays fp32.
    x_TD = torch.randn(16, 8).bfloat16()
    compute = make_layer(
        num_experts=4, top_k=2, expert_hidden=6, precision=PrecisionConfig(router_logits_dtype="compute")
    )
    default = make_layer(num_experts=4, top_k=2, expert_hidden=6, precision=PrecisionConfig())
    assert compute.router(x_TD).logits_TE.dtype == torch.bfloat16
    assert compute.router(x_TD).scores_TE.dtype == torch.float32
    assert default.router(x_TD).logits_TE.dtype == torch.float32


def test_router_param_dtype_fp32_survives_a_bf16_model_cast():
    layer = make_layer(num_experts=4, top_k=2, expert_hidden=6, router={"bias_update_rate": 1e-3})
    layer.to(torch.bfloat16)
    assert layer.router.w_ED.dtype == torch.float32
    assert layer.router.bias_E.dtype == torch.float32
    assert layer.experts.w1_EDF.dtype == layer.experts.w2_EFD.dtype == torch.bfloat16
    y_TD, _ = layer(torch.randn(16, 8).bfloat16())
    assert y_TD.dtype == torch.bfloat16 and torch.isfinite(y_TD).all()

    compute = make_layer(
        num_experts=4, top_k=2, expert_hidden=6, precision=PrecisionConfig(router_param_dtype="compute")
    )
    compute.to(torch.bfloat16)
    assert compute.router.w_ED.dtype == torch.bfloat16


def test_router_param_dtype_fp32_keeps_the_weight_values_exactly_through_a_bf16_cast():
    layer = make_layer(num_experts=4, top_k=2, expert_hidden=6)
    w_ED = layer.router.w_ED.detach().clone()
    assert not torch.equal(w_ED.bfloat16().float(), w_ED)  # the values are not bf16-representable
    layer.to(torch.bfloat16)
    assert torch.equal(layer.router.w_ED.detach(), w_ED)


def test_bias_buffer_keeps_its_values_through_a_bf16_cast():
    layer = make_layer(num_experts=4, top_k=2, expert_hidden=6, router={"bias_update_rate": 1e-3})
    layer.router.bias_E.normal_()
    bias_E = layer.router.bias_E.clone()
    layer.to(torch.bfloat16)
    assert torch.equal(layer.router.bias_E, bias_E)


def test_large_batch_accounts_for_every_assignment():
    # Also a speed guard: 16k assignments would take seconds if dispatch looped over tokens in Python.
    num_tokens, num_experts, top_k = 8192, 8, 2
    layer = make_layer(d_model=16, num_experts=num_experts, top_k=top_k, expert_hidden=8, capacity_factor=1.0)
    with torch.no_grad():
        layer.router.w_ED[0] += 0.3
    x_TD = torch.randn(num_tokens, 16)

    y_TD, stats = layer(x_TD)

    capacity = layer.capacity(num_tokens)
    assert capacity == 2048
    experts_TK = (x_TD @ layer.router.w_ED.detach().T).topk(top_k, dim=-1).indices
    routed_E = torch.bincount(experts_TK.flatten(), minlength=num_experts).float()
    assert stats.routed_E.tolist() == routed_E.tolist()
    assert stats.kept_E.tolist() == routed_E.clamp(max=capacity).tolist()
    assert int(stats.dropped) > 0
    assert int(stats.kept_E.sum()) + int(stats.dropped) == num_tokens * top_k == stats.assignments
    keep = expected_keep(experts_TK, None, capacity, "position")
    assert int(stats.unrouted) == sum(not any(row) for row in keep)
    assert y_TD.shape == (num_tokens, 16)


def test_router_flip_rate_prices_a_bf16_router_in_routing_changes():
    """bf16 logits and scores change some tokens' top-2 sets; the layer reports that share exactly."""
    bf16 = PrecisionConfig(router_logits_dtype="bf16", router_scores_dtype="bf16")
    low = make_layer(
        d_model=64, seed=3, num_experts=8, top_k=2, expert_hidden=6, dropless=True, precision=bf16
    )
    full = make_layer(d_model=64, seed=3, num_experts=8, top_k=2, expert_hidden=6, dropless=True)
    x_TD = torch.randn(4096, 64) * 0.1  # small logits: many near-ties for bf16 to break differently
    routing = low.router(x_TD)
    reference = full.router(x_TD)  # same seed, same weights, fp32 throughout
    differs_T = (routing.experts_TK.sort(-1).values != reference.experts_TK.sort(-1).values).any(-1)
    assert 0 < float(routing.flip_rate) < 0.5
    assert float(routing.flip_rate) == pytest.approx(float(differs_T.float().mean()))
    _, stats = low(x_TD)
    assert stats.scalars()["router_flip_rate"] == pytest.approx(float(differs_T.float().mean()))
    _, stats = full(x_TD)
    assert reference.flip_rate is None and "router_flip_rate" not in stats.scalars()  # fp32: nothing to price
