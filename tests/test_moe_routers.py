"""Every router against a naive per-token (or per-expert) reference written here, plus the routers' controls:
hash and random determinism, noise and jitter only in training, expert choice's causal leak, expert shapes.

Shape legend: T tokens, D model width, E experts, K choices per token, G expert groups, F expert hidden width.
"""

from __future__ import annotations

import pytest
import torch
from moe_helpers import make_layer, one_thread, swiglu  # noqa: F401 (one_thread: autouse fixture)

from workbench.config.schema import ModelConfig, MoEConfig, PrecisionConfig, RouterConfig
from workbench.models import build_model
from workbench.models.moe import MoELayer, MoEShape, expert_capacity


def routed_expert(P: dict, x_D, e: int):
    return swiglu(x_D, P["experts.w1_EDF"][e], P["experts.w3_EDF"][e], P["experts.w2_EFD"][e])


def combine_by_hand(P: dict, x_TD, experts_TK, weights_TK):
    """y_t = sum_j weights[t, j] * expert_{experts[t, j]}(x_t), one token at a time."""
    rows = []
    for t in range(x_TD.shape[0]):
        y_D = torch.zeros_like(x_TD[t])
        for j in range(experts_TK.shape[1]):
            y_D = y_D + weights_TK[t, j] * routed_expert(P, x_TD[t], int(experts_TK[t, j]))
        rows.append(y_D)
    return torch.stack(rows)


def assert_layer_matches(layer: MoELayer, x_TD, reference, token_ids_T=None, tol=1e-5):
    """Outputs and gradients (x and every parameter): the layer against `reference(x_TD, params_by_name)`."""
    g_TD = torch.randn_like(x_TD)
    x = x_TD.clone().requires_grad_()
    y, stats = layer(x, token_ids_T=token_ids_T)
    (y * g_TD).sum().backward()

    x_ref = x_TD.clone().requires_grad_()
    P = {n: p.detach().clone().requires_grad_() for n, p in layer.named_parameters()}
    y_ref = reference(x_ref, P)
    (y_ref * g_TD).sum().backward()

    torch.testing.assert_close(y.detach(), y_ref.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=tol, rtol=tol)
    for name, p in layer.named_parameters():
        g_ref = P[name].grad if P[name].grad is not None else torch.zeros_like(p)
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(g, g_ref, atol=tol, rtol=tol, msg=f"gradient of {name}")
    return y.detach(), stats


# ---- expert choice ----


@pytest.mark.parametrize("capacity_factor,capacity", [(0.5, 6), (1.5, 18)])  # C = ceil(24 * 2 / 4 * CF)
def test_expert_choice_matches_a_loop_over_experts_in_outputs_and_gradients(capacity_factor, capacity):
    num_tokens, num_experts, top_k = 24, 4, 2
    layer = make_layer(
        num_experts=num_experts,
        top_k=top_k,
        expert_hidden=6,
        capacity_factor=capacity_factor,
        router={"type": "expert_choice"},
    )
    assert (
        expert_capacity(num_tokens, top_k, num_experts, capacity_factor)
        == layer.capacity(num_tokens)
        == capacity
    )
    x_TD = torch.randn(num_tokens, 8)

    def reference(x_TD, P):
        probs_TE = torch.stack([(x_TD[t] @ P["router.w_ED"].T).softmax(dim=-1) for t in range(num_tokens)])
        y_TD = torch.zeros_like(x_TD)
        for e in range(num_experts):  # Zhou et al. 2022: expert e takes its C best tokens
            for t in probs_TE[:, e].topk(capacity).indices.tolist():
                y_TD = y_TD.index_add(
                    0, torch.tensor([t]), (probs_TE[t, e] * routed_expert(P, x_TD[t], e))[None]
                )
        return y_TD

    y, stats = assert_layer_matches(layer, x_TD, reference)

    assert stats.kept_E.tolist() == [capacity] * num_experts
    assert int(stats.dropped) == 0
    per_token = torch.bincount(layer.router(x_TD, capacity=capacity).plan.token_A, minlength=num_tokens)
    assert int(stats.unrouted) == int((per_token == 0).sum())
    for t in torch.nonzero(per_token == 0).flatten().tolist():
        assert torch.all(y[t] == 0)
    # A token may get no expert (tight capacity) or more than k (loose capacity).
    assert (per_token == 0).any() if capacity_factor < 1 else per_token.max() > top_k


# ---- token choice variants ----


def test_shared_experts_add_each_fine_grained_shared_expert_to_the_routed_ones():
    # DeepSeekMoE: 4 coarse experts of width 8, top-2, split m=2 -> 8 experts of width 4; 2 of the 4 active
    # fine experts are shared, so 2 are routed.
    layer = make_layer(
        num_experts=4, top_k=2, expert_hidden=8, segmentation=2, num_shared_experts=2, dropless=True
    )
    assert layer.shape == MoEShape(num_experts=8, top_k=2, expert_hidden=4, num_shared=2)
    assert layer.shared.w1.weight.shape == (8, 8)  # 2 shared experts of width 4, hidden units concatenated
    h = 4
    x_TD = torch.randn(20, 8)

    def reference(x_TD, P):
        experts, weights = [], []
        for t in range(x_TD.shape[0]):
            w_K, e_K = (x_TD[t] @ P["router.w_ED"].T).softmax(dim=-1).topk(2)
            experts.append(e_K)
            weights.append(w_K / w_K.sum())
        y_TD = combine_by_hand(P, x_TD, torch.stack(experts), torch.stack(weights))
        for i in range(2):  # each shared expert is its own SwiGLU on a block of h hidden units
            block = slice(i * h, (i + 1) * h)
            w1_DF = P["shared.w1.weight"][block].T
            w3_DF = P["shared.w3.weight"][block].T
            w2_FD = P["shared.w2.weight"][:, block].T
            y_TD = y_TD + torch.stack([swiglu(x_TD[t], w1_DF, w3_DF, w2_FD) for t in range(x_TD.shape[0])])
        return y_TD

    assert_layer_matches(layer, x_TD, reference)


def group_limited_by_hand(scores_E, num_groups: int, group_top_k: int, top_k: int, how: str) -> list[int]:
    """DeepSeek-V2/V3 selection for one token: score each group (its best, or its best two summed), keep the
    best `group_top_k` groups, then the top-k experts inside them."""
    per_group = scores_E.numel() // num_groups
    group_scores = []
    for g in range(num_groups):
        members = sorted(scores_E[g * per_group : (g + 1) * per_group].tolist(), reverse=True)
        group_scores.append(members[0] if how == "max" else members[0] + members[1])
    kept_groups = sorted(range(num_groups), key=lambda g: -group_scores[g])[:group_top_k]
    candidates = [e for g in kept_groups for e in range(g * per_group, (g + 1) * per_group)]
    return sorted(candidates, key=lambda e: -float(scores_E[e]))[:top_k]


def score_by_hand(logits_E, score: str):
    return torch.sigmoid(logits_E) if score == "sigmoid" else logits_E.softmax(dim=-1)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("how", ["max", "top2_sum"])
def test_group_limited_routing_matches_a_per_token_reference(how, score):
    num_tokens, num_groups, group_top_k, top_k = 32, 4, 2, 3
    router = {"num_groups": num_groups, "group_top_k": group_top_k, "group_score": how, "score": score}
    layer = make_layer(num_experts=16, top_k=top_k, expert_hidden=4, dropless=True, router=router)
    x_TD = torch.randn(num_tokens, 8)
    w_ED = layer.router.w_ED.detach()
    chosen = [
        group_limited_by_hand(score_by_hand(x_TD[t] @ w_ED.T, score), num_groups, group_top_k, top_k, how)
        for t in range(num_tokens)
    ]
    unlimited = [
        score_by_hand(x_TD[t] @ w_ED.T, score).topk(top_k).indices.tolist() for t in range(num_tokens)
    ]
    assert chosen != unlimited  # the group limit binds on this input

    assert layer.router(x_TD).experts_TK.tolist() == chosen

    def reference(x_TD, P):
        experts_TK = torch.tensor(chosen)
        scores_TE = torch.stack(
            [score_by_hand(x_TD[t] @ P["router.w_ED"].T, score) for t in range(num_tokens)]
        )
        weights_TK = scores_TE.gather(1, experts_TK)
        return combine_by_hand(P, x_TD, experts_TK, weights_TK / weights_TK.sum(dim=-1, keepdim=True))

    assert_layer_matches(layer, x_TD, reference)


def test_max_and_top2_sum_group_scores_pick_different_experts():
    # Guards the test above: on its inputs the two group scores disagree for some token.
    layer = make_layer(num_experts=16, top_k=3, expert_hidden=4)
    x_TD = torch.randn(32, 8)
    w_ED = layer.router.w_ED.detach()
    by = {
        how: [group_limited_by_hand((x_TD[t] @ w_ED.T).softmax(-1), 4, 2, 3, how) for t in range(32)]
        for how in ("max", "top2_sum")
    }
    assert by["max"] != by["top2_sum"]


@pytest.mark.parametrize("normalize", [True, False])
def test_sigmoid_scores_weight_by_the_normalised_sigmoid_times_route_scale(normalize):
    route_scale = 2.5
    layer = make_layer(
        num_experts=8,
        top_k=2,
        expert_hidden=4,
        dropless=True,
        router={"score": "sigmoid", "route_scale": route_scale, "normalize_top_k": normalize},
    )
    x_TD = torch.randn(16, 8)

    routing = layer.router(x_TD)
    sig_TE = torch.sigmoid(x_TD @ layer.router.w_ED.detach().T)
    torch.testing.assert_close(routing.scores_TE, sig_TE / sig_TE.sum(dim=-1, keepdim=True))  # the losses' P

    def reference(x_TD, P):
        experts, weights = [], []
        for t in range(x_TD.shape[0]):
            s_K, e_K = torch.sigmoid(x_TD[t] @ P["router.w_ED"].T).topk(2)
            experts.append(e_K)
            weights.append((s_K / s_K.sum() if normalize else s_K) * route_scale)
        return combine_by_hand(P, x_TD, torch.stack(experts), torch.stack(weights))

    assert_layer_matches(layer, x_TD, reference)


def test_softmax_after_topk_weights_by_the_softmax_of_the_chosen_logits():
    layer = make_layer(
        num_experts=8, top_k=3, expert_hidden=4, dropless=True, router={"softmax_after_topk": True}
    )
    x_TD = torch.randn(16, 8)

    def reference(x_TD, P):
        experts, weights = [], []
        for t in range(x_TD.shape[0]):
            l_K, e_K = (x_TD[t] @ P["router.w_ED"].T).topk(3)
            experts.append(e_K)
            weights.append(l_K.softmax(dim=-1))  # Shazeer et al. 2017: softmax over the k kept logits
        return combine_by_hand(P, x_TD, torch.stack(experts), torch.stack(weights))

    assert_layer_matches(layer, x_TD, reference)


# ---- parameter-free controls ----


def test_hash_router_is_a_fixed_balanced_map_from_token_id_to_distinct_experts():
    num_experts, top_k = 8, 2
    layers = [
        make_layer(
            seed=s,
            num_experts=num_experts,
            top_k=top_k,
            expert_hidden=4,
            dropless=True,
            router={"type": "hash"},
        )
        for s in (0, 1)
    ]
    ids_T = torch.arange(4096)
    x_TD = torch.randn(4096, 8)
    experts = [m.router(x_TD, token_ids_T=ids_T).experts_TK for m in layers]
    assert torch.equal(experts[0], experts[1])  # two freshly built layers: the same table
    shuffled = torch.randperm(4096)[:500]  # the same ids, other positions and inputs
    assert torch.equal(
        layers[0].router(torch.randn(500, 8), token_ids_T=shuffled).experts_TK, experts[0][shuffled]
    )
    assert all(len(set(row)) == top_k for row in experts[0].tolist())
    load_E = torch.bincount(experts[0].flatten(), minlength=num_experts)
    fair = 4096 * top_k / num_experts
    assert load_E.min() >= 0.5 * fair and load_E.max() <= 1.5 * fair

    reseeded = make_layer(
        num_experts=num_experts, top_k=top_k, expert_hidden=4, router={"type": "hash", "seed": 1}
    )
    assert not torch.equal(reseeded.router(x_TD, token_ids_T=ids_T).experts_TK, experts[0])

    def reference(x_TD, P):
        return combine_by_hand(P, x_TD, experts[0][:16], torch.full((16, top_k), 1 / top_k))

    assert_layer_matches(layers[0], x_TD[:16], reference, token_ids_T=ids_T[:16])


def test_random_router_repeats_in_eval_and_redraws_in_training():
    layer = make_layer(num_experts=8, top_k=2, expert_hidden=4, router={"type": "random"})
    x_TD = torch.randn(64, 8)
    layer.eval()
    first, second = layer.router(x_TD).experts_TK, layer.router(x_TD).experts_TK
    assert torch.equal(first, second)
    y1, _ = layer(x_TD)
    y2, _ = layer(x_TD)
    assert torch.equal(y1, y2)
    layer.train()
    first, second = layer.router(x_TD).experts_TK, layer.router(x_TD).experts_TK
    assert not torch.equal(first, second)
    assert all(len(set(row)) == 2 for row in first.tolist())


# ---- noise only in training ----


def test_noisy_topk_adds_noise_in_training_only():
    noisy = make_layer(num_experts=8, top_k=2, expert_hidden=4, dropless=True, router={"type": "noisy_topk"})
    clean = make_layer(
        num_experts=8, top_k=2, expert_hidden=4, dropless=True, router={"softmax_after_topk": True}
    )
    clean.load_state_dict(noisy.state_dict(), strict=False)  # all but the noise weight
    assert torch.equal(clean.router.w_ED, noisy.router.w_ED)
    x_TD = torch.randn(32, 8)

    noisy.eval()
    clean.eval()
    torch.testing.assert_close(noisy(x_TD)[0], clean(x_TD)[0], atol=0, rtol=0)
    torch.testing.assert_close(noisy.router(x_TD).logits_TE, x_TD @ noisy.router.w_ED.detach().T)

    noisy.train()
    first, second = noisy.router(x_TD).logits_TE, noisy.router(x_TD).logits_TE
    assert not torch.equal(first, second)
    assert (first - x_TD @ noisy.router.w_ED.detach().T).abs().max() > 0.1
    # The learned scale: softplus(x W_noise) -> 0 switches the noise off.
    with torch.no_grad():
        noisy.router.w_noise_ED.zero_()
        noisy.router.w_noise_ED[:, 0] = -1e4
    x_pos = x_TD.abs() + 0.1  # x_0 > 0, so x W_noise << 0 for every expert
    torch.testing.assert_close(noisy.router(x_pos).logits_TE, x_pos @ noisy.router.w_ED.detach().T)


def test_switch_jitter_applies_in_training_only():
    eps = 0.2
    layer = make_layer(num_experts=4, top_k=1, expert_hidden=4, router={"type": "switch", "jitter_eps": eps})
    x_TD = torch.randn(32, 8)
    clean_TE = x_TD @ layer.router.w_ED.detach().T

    layer.eval()
    torch.testing.assert_close(layer.router(x_TD).logits_TE, clean_TE)

    layer.train()
    first, second = layer.router(x_TD).logits_TE, layer.router(x_TD).logits_TE
    assert not torch.equal(first, second)
    assert not torch.allclose(first, clean_TE, atol=1e-3)
    # Multiplicative input jitter: |x*u - x| <= eps*|x| elementwise, so a logit moves at most eps*(|x| @ |W|).
    bound_TE = eps * (x_TD.abs() @ layer.router.w_ED.detach().abs().T)
    assert torch.all((first - clean_TE).abs() <= bound_TE + 1e-5)

    with pytest.raises(ValueError, match="1 expert"):
        make_layer(num_experts=4, top_k=2, expert_hidden=4, router={"type": "switch"})


# ---- causality ----


def tiny_lm(moe: MoEConfig):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(ffn="moe", vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64),
        moe,
        PrecisionConfig(),
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.3)  # larger than the 0.02 init so routing and the FFN visibly move the logits
    return model.eval()


@pytest.mark.parametrize(
    "moe,leaks",
    [
        (
            MoEConfig(num_experts=4, top_k=2, capacity_factor=1.0, router=RouterConfig(type="expert_choice")),
            True,
        ),
        (MoEConfig(num_experts=4, top_k=2, dropless=True), False),
        # Token choice with a capacity leaks too: a later token can take an earlier one's slot (README "MoE").
        (MoEConfig(num_experts=4, top_k=2, capacity_factor=1.0), True),
    ],
    ids=["expert_choice", "dropless_topk", "capacity_topk"],
)
def test_changing_a_later_token_changes_earlier_outputs_only_under_expert_choice(moe, leaks):
    model = tiny_lm(moe)
    torch.manual_seed(1)
    idx = torch.randint(0, 64, (1, 32))
    with torch.no_grad():
        logits, _ = model(idx)
        changes = []
        for token in range(1, 64, 7):  # several replacements of the token at position 20
            other = idx.clone()
            other[0, 20] = (idx[0, 20] + token) % 64
            changes.append(float((model(other)[0][0, :20] - logits[0, :20]).abs().max()))
    if leaks:
        assert min(changes) > 1e-2  # every replacement reaches back past position 20
    else:
        assert max(changes) < 1e-5  # logits are O(5): only rounding may differ


# ---- shapes and parameter counts ----


def test_fine_grained_shared_shape_and_param_counts_by_hand():
    d_model, d_ff, vocab, n_layers = 32, 64, 64, 2
    moe = MoEConfig(num_experts=4, top_k=2, segmentation=2, num_shared_experts=1)
    shape = MoEShape.of(moe, d_ff)
    # Coarse width d_ff // top_k = 32, split in two: 8 experts of width 16; 2*2 - 1 = 3 routed plus 1 shared.
    assert shape == MoEShape(num_experts=8, top_k=3, expert_hidden=16, num_shared=1)
    assert (shape.top_k + shape.num_shared) * shape.expert_hidden == d_ff  # active FFN width = dense FFN
    model = build_model(
        ModelConfig(ffn="moe", vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=2, d_ff=d_ff),
        moe,
        PrecisionConfig(),
    )

    attention = 3 * d_model * d_model + d_model * d_model
    norms = 2 * d_model
    router = 8 * d_model
    routed = 8 * 3 * d_model * 16  # w1, w3, w2 of 8 experts of width 16
    shared = 3 * d_model * 16
    total = n_layers * (attention + norms + router + routed + shared) + vocab * d_model + d_model  # tied head
    idle = n_layers * 5 * 3 * d_model * 16  # 8 - 3 routed experts each token does not use
    counts = model.param_counts()
    assert counts["total"] == total == 38560
    assert counts["active"] == total - idle == 23200
    assert counts["embedding"] == vocab * d_model
