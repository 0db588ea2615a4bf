"""Golden tests for every balancing loss and the aux-loss-free bias: 1.0 at balance, monotone in imbalance,
gradient into the router, softmax once, and the bias steering selection without touching the gates.

Shape legend: T tokens, B sequences of S tokens, D model width, E experts, K choices per token, G groups.
"""

from __future__ import annotations

import pytest
import torch
from moe_helpers import make_layer, one_thread  # noqa: F401 (one_thread: autouse fixture)

from workbench.models.moe import (
    MoELayer,
    device_balance_loss,
    global_load_balancing_loss,
    router_z_loss,
    sequence_load_balancing_loss,
    switch_load_balancing_loss,
)
from workbench.models.transformer import ModelAux

LOSS_NAMES = ("aux_loss", "seq_aux_loss", "global_aux_loss", "device_loss")
WEIGHT_FIELDS = {
    "aux_loss": "aux_loss_weight",
    "seq_aux_loss": "seq_aux_loss_weight",
    "global_aux_loss": "global_aux_loss_weight",
    "device_loss": "device_loss_weight",
    "z_loss": "z_loss_weight",
}
SKEWS = [i / 10 for i in range(11)]


def all_weights(**on: float) -> dict[str, float]:
    """Every balancing weight 0 except those given."""
    weights = {field: 0.0 for field in WEIGHT_FIELDS.values()}
    weights.update(on)
    return weights


# ---- synthetic routers: exact values ----


def skewed_router(a: float, num_tokens: int = 400, dtype=torch.float64):
    """E=4, K=1: every token's distribution and the routed load both move a share `a` onto expert 0.

    P = (1-a)/4 + a*[1,0,0,0] per token; loads 100+300a on expert 0, 100-100a on the others (400 tokens).
    f = P, so E * sum f*P = 4 * ((1+3a)^2 + 3(1-a)^2) / 16 = 1 + 3a^2.
    """
    p_E = torch.full((4,), (1 - a) / 4, dtype=dtype)
    p_E[0] += a
    routed_E = torch.tensor([round(100 + 300 * a)] + [round(100 - 100 * a)] * 3)
    return p_E.expand(num_tokens, 4).clone(), routed_E


def balanced_assignments(num_tokens: int, num_experts: int, top_k: int):
    """experts_TK with every expert chosen equally often: token t picks t, t+1, ..., t+k-1 (mod E)."""
    return (torch.arange(num_tokens)[:, None] + torch.arange(top_k)[None, :]) % num_experts


@pytest.mark.parametrize("num_experts,top_k", [(4, 1), (4, 2), (6, 3), (16, 4)])
def test_every_balance_loss_is_exactly_one_for_a_perfectly_balanced_router(num_experts, top_k):
    num_tokens, seq_len = 96, 48
    uniform_TE = torch.full((num_tokens, num_experts), 1 / num_experts)
    experts_TK = balanced_assignments(num_tokens, num_experts, top_k)
    routed_E = torch.bincount(experts_TK.flatten(), minlength=num_experts)
    assert routed_E.tolist() == [num_tokens * top_k // num_experts] * num_experts
    one = torch.tensor(1.0)

    torch.testing.assert_close(switch_load_balancing_loss(uniform_TE, routed_E), one)
    torch.testing.assert_close(global_load_balancing_loss(uniform_TE, routed_E), one)
    torch.testing.assert_close(sequence_load_balancing_loss(uniform_TE, experts_TK, seq_len), one)
    torch.testing.assert_close(device_balance_loss(uniform_TE, routed_E, 2), one)

    # Balanced loads alone give 1 for any P (E * sum_i P_i / E); a skewed P does not change it.
    probs_TE = torch.randn(num_tokens, num_experts).softmax(dim=-1)
    torch.testing.assert_close(switch_load_balancing_loss(probs_TE, routed_E), one)
    torch.testing.assert_close(device_balance_loss(probs_TE, routed_E, 2), one)


@pytest.mark.parametrize(
    "loss,golden",
    [
        (lambda p, r, e: switch_load_balancing_loss(p, r), lambda a: 1 + 3 * a**2),
        (lambda p, r, e: global_load_balancing_loss(p, r), lambda a: 1 + 3 * a**2),
        # Two groups {0,1},{2,3}: f' = (1+a, 1-a), P' = ((1+a)/2, (1-a)/2), so sum f'P' = 1 + a^2.
        (lambda p, r, e: device_balance_loss(p, r, 2), lambda a: 1 + a**2),
        # Two sequences of 200 tokens, each skewed the same way as the micro-batch.
        (lambda p, r, e: sequence_load_balancing_loss(p, e, 200), lambda a: 1 + 3 * a**2),
    ],
    ids=["switch", "global", "device", "sequence"],
)
def test_each_loss_grows_monotonically_with_imbalance_along_its_golden_curve(loss, golden):
    values = []
    for a in SKEWS:
        probs_TE, routed_E = skewed_router(a)
        # The same loads as token assignments, in two sequences of 200 that are each skewed like the whole.
        per_seq_E = routed_E // 2
        experts_T1 = torch.repeat_interleave(torch.arange(4), per_seq_E).repeat(2)[:, None]
        values.append(float(loss(probs_TE, routed_E, experts_T1)))
        assert values[-1] == pytest.approx(golden(a), rel=1e-12)
    assert values[0] == pytest.approx(1.0, rel=1e-12)
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


def test_sequence_loss_sees_imbalance_within_sequences_that_the_micro_batch_loss_averages_away():
    # Sequence 0 routes everything to experts 0,1 and sequence 1 to experts 2,3: the micro-batch is balanced.
    seq_len, num_experts = 8, 4
    probs_TE = torch.zeros(2 * seq_len, num_experts, dtype=torch.float64)
    probs_TE[:seq_len, :2] = 0.5
    probs_TE[seq_len:, 2:] = 0.5
    experts_TK = torch.tensor([[0, 1]] * seq_len + [[2, 3]] * seq_len)
    routed_E = torch.bincount(experts_TK.flatten(), minlength=num_experts)

    assert float(switch_load_balancing_loss(probs_TE, routed_E)) == pytest.approx(1.0, rel=1e-12)
    # Per sequence: f = P = (1/2, 1/2, 0, 0), so E * sum f*P = 4 * 2 / 4 = 2.
    assert float(sequence_load_balancing_loss(probs_TE, experts_TK, seq_len)) == pytest.approx(2.0, rel=1e-12)
    # Seen as devices {0,1},{2,3} the micro-batch is balanced too.
    assert float(device_balance_loss(probs_TE, routed_E, 2)) == pytest.approx(1.0, rel=1e-12)


def test_device_loss_with_one_expert_per_group_is_the_switch_loss():
    logits_TE = torch.randn(40, 8, dtype=torch.float64) * 3
    logits_TE[:, 0] += 4.0
    probs_TE = logits_TE.softmax(dim=-1)
    routed_E = torch.bincount(logits_TE.argmax(dim=-1), minlength=8)
    switch = switch_load_balancing_loss(probs_TE, routed_E)
    torch.testing.assert_close(device_balance_loss(probs_TE, routed_E, 8), switch)
    assert float(switch) > 1.2  # an imbalanced router, so the identity is not 1 == 1


def test_global_loss_on_one_process_is_the_micro_batch_loss_with_gradient_through_p_only():
    logits_TE = (torch.randn(40, 8, dtype=torch.float64) * 2).requires_grad_()
    routed_E = torch.bincount(logits_TE.detach().argmax(dim=-1), minlength=8)
    global_loss = global_load_balancing_loss(logits_TE.softmax(dim=-1), routed_E)
    torch.testing.assert_close(global_loss, switch_load_balancing_loss(logits_TE.softmax(dim=-1), routed_E))
    global_loss.backward()
    assert logits_TE.grad.abs().sum() > 0


def test_z_loss_matches_the_mean_squared_logsumexp():
    logits_TE = torch.randn(10, 6, dtype=torch.float64) * 5
    by_hand = torch.stack([torch.log(torch.exp(row).sum()) ** 2 for row in logits_TE]).mean()
    torch.testing.assert_close(router_z_loss(logits_TE), by_hand)

    layer = make_layer(num_experts=4, top_k=2, expert_hidden=6)
    x_TD = torch.randn(12, 8)
    _, stats = layer(x_TD)
    logits_TE = (x_TD @ layer.router.w_ED.detach().T).double()
    by_hand = torch.stack([torch.log(torch.exp(row).sum()) ** 2 for row in logits_TE]).mean()
    torch.testing.assert_close(stats.losses["z_loss"].double(), by_hand, atol=1e-5, rtol=1e-5)


# ---- the layer: weighted terms, gradients, softmax once ----


def balanced_layer(seq_len: int, layer_index: int = 0, **moe) -> tuple[MoELayer, torch.Tensor]:
    """A 4-expert top-2 layer whose router picks experts (t, t+1) mod 4 for token t: loads exactly balanced in
    every sequence and every group of two, while the probabilities are far from uniform."""
    layer = make_layer(d_model=4, num_experts=4, top_k=2, expert_hidden=6, **moe)
    layer.layer = layer_index
    with torch.no_grad():
        layer.router.w_ED.copy_(torch.eye(4))
    t = torch.arange(2 * seq_len)
    x_TD = torch.zeros(2 * seq_len, 4)
    x_TD[t, t % 4] = 3.0
    x_TD[t, (t + 1) % 4] = 1.5
    x_TD += 0.3 * torch.randn_like(x_TD)  # P differs from token to token
    return layer, x_TD


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_layer_weighted_term_equals_the_coefficient_at_balance(name):
    coefficient = 0.037
    moe = dict(all_weights(**{WEIGHT_FIELDS[name]: coefficient}), dropless=True, device_groups=2)
    layers_x = [balanced_layer(8, layer_index=i, **moe) for i in range(2)]
    stats = []
    for layer, x_TD in layers_x:
        experts_TK = layer.router(x_TD).experts_TK
        assert experts_TK.tolist() == balanced_assignments(16, 4, 2).tolist()
        stats.append(layer(x_TD, seq_len=8)[1])
        assert stats[-1].routed_E.tolist() == [8.0] * 4

    aux = ModelAux.collect(stats)
    torch.testing.assert_close(aux.losses[name], torch.tensor(1.0))
    torch.testing.assert_close(aux.weighted(layers_x[0][0].cfg), torch.tensor(coefficient))


def test_all_balance_terms_together_add_their_coefficients_at_balance():
    coefficients = {"aux_loss_weight": 0.01, "seq_aux_loss_weight": 0.002, "global_aux_loss_weight": 0.03}
    coefficients["device_loss_weight"] = 0.005
    layer, x_TD = balanced_layer(8, **all_weights(**coefficients), dropless=True, device_groups=2)
    _, stats = layer(x_TD, seq_len=8)
    assert set(stats.losses) == {*LOSS_NAMES, "z_loss"}  # z-loss is computed (weight 0: not added)
    torch.testing.assert_close(
        ModelAux.collect([stats]).weighted(layer.cfg), torch.tensor(sum(coefficients.values()))
    )


@pytest.mark.parametrize("name", [*LOSS_NAMES, "z_loss"])
def test_each_loss_sends_gradient_to_the_router_weights_only(name):
    moe = dict(
        all_weights(**{WEIGHT_FIELDS[name]: 0.01}), aux_loss_weight=0.01, device_groups=2, dropless=True
    )
    layer = make_layer(num_experts=4, top_k=2, expert_hidden=6, **moe)
    _, stats = layer(torch.randn(16, 8), seq_len=8)
    stats.losses[name].backward()
    assert layer.router.w_ED.grad is not None and layer.router.w_ED.grad.abs().sum() > 0
    assert all(p.grad is None for p in layer.experts.parameters())


@pytest.mark.parametrize("router_type", ["hash", "random"])
def test_parameter_free_routers_have_no_gradient_path(router_type):
    layer = make_layer(
        num_experts=4, top_k=2, expert_hidden=6, router={"type": router_type}, z_loss_weight=1e-3
    )
    assert list(layer.router.parameters()) == []
    _, stats = layer(torch.randn(16, 8), token_ids_T=torch.arange(16))
    assert "z_loss" not in stats.losses  # no logits
    assert not stats.losses["aux_loss"].requires_grad
    assert not ModelAux.collect([stats]).weighted(layer.cfg).requires_grad


def test_softmax_is_applied_exactly_once():
    num_experts, top_k = 8, 2
    layer = make_layer(num_experts=num_experts, top_k=top_k, expert_hidden=6, dropless=True)
    with torch.no_grad():
        layer.router.w_ED.mul_(8.0)  # peaked logits: softmax(softmax(.)) would be close to uniform
        layer.router.w_ED[0] += 2.0  # and imbalanced, so the loss is well above its balanced value of 1
    x_TD = torch.randn(64, 8) + 0.5
    logits_TE = x_TD @ layer.router.w_ED.detach().T
    experts_TK = logits_TE.topk(top_k, dim=-1).indices
    f_E = torch.bincount(experts_TK.flatten(), minlength=num_experts).float() / (64 * top_k)
    once = num_experts * torch.sum(f_E * logits_TE.softmax(dim=-1).mean(dim=0))
    twice = num_experts * torch.sum(f_E * logits_TE.softmax(dim=-1).softmax(dim=-1).mean(dim=0))

    _, stats = layer(x_TD)

    torch.testing.assert_close(stats.losses["aux_loss"].detach(), once)
    assert once - twice > 0.3  # a double softmax would be caught by a wide margin


# ---- aux-loss-free bias ----


def skewed_sigmoid_layer(seed: int = 0, **router) -> tuple[MoELayer, torch.Tensor]:
    """E=8 sigmoid top-2 router whose experts 0 and 1 win for nearly every token of a fixed batch."""
    layer = make_layer(
        d_model=16,
        seed=seed,
        num_experts=8,
        top_k=2,
        expert_hidden=4,
        dropless=True,
        router={"score": "sigmoid", **router},
    )
    direction_D = torch.zeros(16)
    direction_D[0] = 1.0
    with torch.no_grad():
        layer.router.w_ED[:2, 0] += 1.0
    torch.manual_seed(seed + 1)
    x_TD = torch.randn(256, 16) * 0.5 + 2.0 * direction_D
    return layer, x_TD


def gates_by_hand(layer: MoELayer, x_TD, experts_TK):
    """The combine weights the gate must give, from the unbiased sigmoid scores at the chosen experts."""
    scores_TE = torch.sigmoid(x_TD @ layer.router.w_ED.detach().T)
    chosen_TK = scores_TE.gather(1, experts_TK)
    return chosen_TK / chosen_TK.sum(dim=-1, keepdim=True) * layer.cfg.router.route_scale


@pytest.mark.parametrize("update", ["sign", "proportional"])
def test_aux_free_bias_balances_a_skewed_router_without_changing_the_gates(update):
    rate = 0.005 if update == "sign" else 0.02
    layer, x_TD = skewed_sigmoid_layer(bias_update_rate=rate, bias_update=update, route_scale=2.5)
    _, stats = layer(x_TD)
    before = stats.max_vio
    assert before > 1.0
    for _ in range(300):
        _, stats = layer(x_TD)
        layer.router.update_bias()
    after = stats.max_vio

    assert after < 0.3 and after < before / 5
    bias_E = layer.router.bias_E
    assert bias_E.abs().max() > 0
    routing = layer.router(x_TD)
    scores_TE = torch.sigmoid(x_TD @ layer.router.w_ED.detach().T)
    # Selection follows the biased scores, and differs from the unbiased choice for many tokens...
    assert torch.equal(routing.experts_TK, (scores_TE + bias_E).topk(2, dim=-1).indices)
    assert (routing.experts_TK != scores_TE.topk(2, dim=-1).indices).any(dim=-1).float().mean() > 0.3
    # ...while the gates are the unbiased scores there, normalised and scaled.
    torch.testing.assert_close(routing.weights_TK, gates_by_hand(layer, x_TD, routing.experts_TK))


def test_bias_update_formulas_one_step_by_hand():
    for update, rate in (("sign", 0.01), ("proportional", 0.05)):
        layer, x_TD = skewed_sigmoid_layer(bias_update_rate=rate, bias_update=update)
        _, stats = layer(x_TD)
        load_E = stats.routed_E
        layer.router.update_bias()
        error_E = load_E.mean() - load_E
        step_E = torch.sign(error_E) if update == "sign" else error_E / load_E.mean()
        torch.testing.assert_close(layer.router.bias_E, rate * step_E)


def test_bias_center_keeps_the_mean_bias_at_zero():
    centred, x_TD = skewed_sigmoid_layer(bias_update_rate=0.01, bias_center=True)
    plain, _ = skewed_sigmoid_layer(bias_update_rate=0.01)
    for _ in range(20):
        for layer in (centred, plain):
            layer(x_TD)
            layer.router.update_bias()
    assert abs(float(centred.router.bias_E.mean())) < 1e-7
    # Without centring the mean drifts: 6 underloaded experts rise while 2 fall.
    assert abs(float(plain.router.bias_E.mean())) > 1e-3
    # Centring shifts every expert equally, so it cannot change which experts are chosen.
    assert torch.equal(centred.router(x_TD).experts_TK, plain.router(x_TD).experts_TK)


def test_pending_loads_accumulate_in_training_and_reset_after_an_update():
    layer, x_TD = skewed_sigmoid_layer(bias_update_rate=0.01)
    _, first = layer(x_TD)
    _, second = layer(x_TD[:100])
    torch.testing.assert_close(layer.router.pending_load_E, first.routed_E + second.routed_E)
    torch.testing.assert_close(layer.load_total_E.float(), first.routed_E + second.routed_E)
    layer.router.update_bias()
    assert torch.count_nonzero(layer.router.pending_load_E) == 0
    assert torch.count_nonzero(layer.router.bias_E) == 8


def test_observe_is_not_called_in_eval_or_without_grad():
    layer, x_TD = skewed_sigmoid_layer(bias_update_rate=0.01)
    layer.eval()
    layer(x_TD)
    layer.train()
    with torch.no_grad():
        layer(x_TD)
    assert torch.count_nonzero(layer.router.pending_load_E) == 0
    assert torch.count_nonzero(layer.load_total_E) == 0
    layer.router.update_bias()  # nothing observed: no update
    assert torch.count_nonzero(layer.router.bias_E) == 0
