"""Our MoELayer against Hugging Face's MixtralSparseMoeBlock holding the same weights (workbench.models.moe.interop).

Dropless top-2 of 8 with renormalised weights is Mixtral's layer, so outputs and every gradient must agree to
fp32 rounding; so must each experts implementation transformers runs on CPU, and the conversion round trip.
"""

from __future__ import annotations

import sys

import pytest
import torch

from workbench.config.schema import MoEConfig
from workbench.models.moe import MoELayer
from workbench.models.moe.interop import (
    from_hf_mixtral_block,
    hf_experts_backends,
    hf_to_ours_experts,
    set_hf_experts_backend,
    to_hf_mixtral_block,
)

pytest.importorskip("transformers")

D, F, E, K, T = 32, 64, 8, 2, 50
WEIGHTS = ("router", "w1", "w3", "w2")


def assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal up to fp32 rounding of differently ordered sums: 1e-6 of the tensor's largest entry (~8 ulps)."""
    atol = 1e-6 * float(expected.abs().max())
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5, msg=lambda m: f"{what}: {m}")


def make_layer(seed: int = 0, **moe) -> MoELayer:
    torch.manual_seed(seed)
    layer = MoELayer(D, MoEConfig(**{**dict(num_experts=E, top_k=K, expert_hidden=F, dropless=True), **moe}))
    with torch.no_grad():
        layer.router.w_ED.normal_(std=0.5)  # well-separated router scores: no near-ties in the top-k
        for w in (layer.experts.w1_EDF, layer.experts.w3_EDF, layer.experts.w2_EFD):
            w.normal_(std=0.2)
    return layer


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(T, D, generator=gen), torch.randn(T, D, generator=gen)


def run_ours(layer: MoELayer, x_TD: torch.Tensor, g_TD: torch.Tensor):
    x_TD = x_TD.clone().requires_grad_()
    y_TD, _ = layer(x_TD)
    (y_TD * g_TD).sum().backward()
    ex = layer.experts
    return y_TD.detach(), x_TD.grad, [layer.router.w_ED.grad, ex.w1_EDF.grad, ex.w3_EDF.grad, ex.w2_EFD.grad]


def run_hf(block, x_TD: torch.Tensor, g_TD: torch.Tensor):
    """The same as `run_ours`, through the HF block ((B, S, D) input), gradients mapped onto our layout."""
    x_BSD = x_TD.clone()[None].requires_grad_()
    y_BSD = block(x_BSD)
    (y_BSD * g_TD[None]).sum().backward()
    experts = block.experts
    w1_grad, w3_grad, w2_grad = hf_to_ours_experts(experts.gate_up_proj.grad, experts.down_proj.grad)
    return y_BSD[0].detach(), x_BSD.grad[0], [block.gate.weight.grad, w1_grad, w3_grad, w2_grad]


@pytest.mark.parametrize("backend", ["loop", "grouped_mm"])
def test_layer_matches_hf_mixtral_block_in_outputs_and_gradients(backend):
    layer = make_layer()
    layer.experts.backend = backend
    block = to_hf_mixtral_block(layer)
    x_TD, g_TD = inputs()

    y, x_grad, w_grads = run_ours(layer, x_TD, g_TD)
    y_hf, x_grad_hf, w_grads_hf = run_hf(block, x_TD, g_TD)

    assert y.abs().mean() > 0.1  # a real signal, not two zeros agreeing
    assert_fp32_close(y, y_hf, "output")
    assert_fp32_close(x_grad, x_grad_hf, "input grad")
    for name, ours, theirs in zip(WEIGHTS, w_grads, w_grads_hf, strict=True):
        assert ours.abs().sum() > 0, name
        assert_fp32_close(ours, theirs, f"{name} grad")


def test_every_hf_cpu_experts_backend_matches_ours():
    layer = make_layer()
    block = to_hf_mixtral_block(layer)
    x_TD, g_TD = inputs()
    y, x_grad, w_grads = run_ours(layer, x_TD, g_TD)

    backends = hf_experts_backends("cpu")
    assert {"eager", "batched_mm", "grouped_mm"} <= set(backends)
    for name in backends:
        set_hf_experts_backend(block, name)
        block.zero_grad(set_to_none=True)
        y_hf, x_grad_hf, w_grads_hf = run_hf(block, x_TD, g_TD)
        assert_fp32_close(y, y_hf, f"{name} output")
        assert_fp32_close(x_grad, x_grad_hf, f"{name} input grad")
        for weight, ours, theirs in zip(WEIGHTS, w_grads, w_grads_hf, strict=True):
            assert_fp32_close(ours, theirs, f"{name} {weight} grad")


def test_round_trip_through_hf_gives_identical_weights_and_outputs():
    layer = make_layer(seed=0)
    other = make_layer(seed=123)  # different weights, overwritten by the copy back
    block = to_hf_mixtral_block(layer)
    from_hf_mixtral_block(block, other)

    for name, p in layer.named_parameters():
        assert torch.equal(p, dict(other.named_parameters())[name]), name
    x_TD, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(other(x_TD)[0], layer(x_TD)[0], atol=0, rtol=0)
    # Our layout in HF's: gate rows first, output-major.
    gate_up_2FD = block.experts.gate_up_proj[3]
    assert torch.equal(gate_up_2FD[:F], layer.experts.w1_EDF[3].T)
    assert torch.equal(gate_up_2FD[F:], layer.experts.w3_EDF[3].T)


def test_size_mismatch_and_unknown_backend_are_refused():
    block = to_hf_mixtral_block(make_layer())
    small = MoELayer(D, MoEConfig(num_experts=E, top_k=K, expert_hidden=F // 2, dropless=True))
    with pytest.raises(ValueError, match="gate_up_proj"):
        from_hf_mixtral_block(block, small)
    with pytest.raises(ValueError, match="experts_implementation"):
        set_hf_experts_backend(block, "no_such_kernel")


def test_a_layer_that_is_not_mixtral_is_refused_unless_not_strict():
    layer = MoELayer(
        D, MoEConfig(num_experts=E, top_k=K, expert_hidden=F, dropless=False, num_shared_experts=0)
    )
    for p in layer.parameters():  # torch.empty may hold NaN, which torch.equal never matches
        torch.nn.init.normal_(p, std=0.02)
    with pytest.raises(ValueError, match="dropless=False"):
        to_hf_mixtral_block(layer)
    block = to_hf_mixtral_block(layer, strict=False)  # the weights still map one to one
    assert torch.equal(block.gate.weight, layer.router.w_ED)


def test_missing_transformers_fails_with_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'transformers>=5'"):
        to_hf_mixtral_block(make_layer())
