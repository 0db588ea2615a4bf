"""Every experts backend against the plain reference: outputs and gradients, empty and uneven experts, padding."""

from __future__ import annotations

import pytest
import torch

from workbench.models.moe.experts import (
    GROUPED_MM_CPU_MAX_BYTES,
    SwiGLUExperts,
    grouped_mm_supports,
    swiglu,
    swiglu_experts_reference,
)

E, D, F = 5, 16, 32
BACKENDS = ["loop", "grouped_mm", "auto"]
KEPT = {
    "uneven_with_empty": [7, 0, 19, 1, 3],
    "all_in_last": [0, 0, 0, 0, 11],
    "all_in_first": [11, 0, 0, 0, 0],
    "nothing_kept": [0, 0, 0, 0, 0],
    "random": torch.randint(0, 40, (E,), generator=torch.Generator().manual_seed(3)).tolist(),
}
NAMES = ("output", "x grad", "w1 grad", "w3 grad", "w2 grad")


def make_experts(backend: str, d_model: int = D, hidden: int = F, dtype=torch.float32) -> SwiGLUExperts:
    torch.manual_seed(0)
    experts = SwiGLUExperts(E, d_model, hidden, backend=backend)
    for w in experts.parameters():
        torch.nn.init.normal_(w, std=0.3)
    return experts.to(dtype)


def data(rows: int, d_model: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x_AD, g_AD = torch.randn(2, rows, d_model, generator=gen).to(dtype)
    return x_AD, g_AD


def run_module(experts: SwiGLUExperts, x_AD, kept_E, g_AD) -> list[torch.Tensor]:
    """Output and gradients (input, w1, w3, w2) under the loss sum(y * g)."""
    experts.zero_grad(set_to_none=True)
    x_AD = x_AD.clone().requires_grad_()
    y_AD = experts(x_AD, kept_E)
    (y_AD * g_AD).sum().backward()
    ex = experts
    return [y_AD.detach(), x_AD.grad, ex.w1_EDF.grad, ex.w3_EDF.grad, ex.w2_EFD.grad]


def run_reference(experts: SwiGLUExperts, x_AD, kept_E, g_AD) -> list[torch.Tensor]:
    """The same through `swiglu_experts_reference`, in fp32 on the module's (possibly rounded) numbers."""
    weights = [w.detach().float().requires_grad_() for w in (experts.w1_EDF, experts.w3_EDF, experts.w2_EFD)]
    x_AD = x_AD.float().requires_grad_()
    y_AD = swiglu_experts_reference(x_AD, kept_E, *weights)
    (y_AD * g_AD.float()).sum().backward()
    return [y_AD.detach(), x_AD.grad] + [w.grad for w in weights]


def check_against_reference(experts: SwiGLUExperts, kept: list[int], dtype, atol: float, rtol: float) -> None:
    kept_E = torch.tensor(kept)
    x_AD, g_AD = data(sum(kept), experts.w1_EDF.shape[1], dtype)
    got = run_module(experts, x_AD, kept_E, g_AD)
    want = run_reference(experts, x_AD, kept_E, g_AD)
    for name, a, b in zip(NAMES, got, want, strict=True):
        assert a.dtype == dtype and a.shape == b.shape, name
        torch.testing.assert_close(a.float(), b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
    for e, rows in enumerate(kept):  # an expert with no rows gets exactly zero gradient
        if rows == 0:
            assert all(int(grad[e].count_nonzero()) == 0 for grad in got[2:]), e


@pytest.mark.parametrize("kept", KEPT.values(), ids=KEPT.keys())
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_reference_fp32(backend, kept):
    experts = make_experts(backend)
    expected = "grouped_mm" if backend == "auto" else backend  # auto: small activations
    assert experts.resolved_backend(torch.empty(sum(kept), D)) == expected
    check_against_reference(experts, kept, torch.float32, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_bf16(backend):
    # bf16 keeps 8 bits of mantissa; the reference runs in fp32 on the same bf16 weights and inputs.
    experts = make_experts(backend, dtype=torch.bfloat16)
    check_against_reference(experts, KEPT["uneven_with_empty"], torch.bfloat16, atol=0.15, rtol=0.05)


def test_reference_is_the_per_expert_swiglu():
    experts = make_experts("loop")
    kept_E = torch.tensor([2, 0, 3, 0, 1])
    x_AD, _ = data(6, D, torch.float32)
    y_AD = swiglu_experts_reference(x_AD, kept_E, experts.w1_EDF, experts.w3_EDF, experts.w2_EFD)
    for row, e in enumerate([0, 0, 2, 2, 2, 4]):
        h_F = torch.nn.functional.silu(x_AD[row] @ experts.w1_EDF[e]) * (x_AD[row] @ experts.w3_EDF[e])
        torch.testing.assert_close(y_AD[row], h_F @ experts.w2_EFD[e], atol=1e-5, rtol=1e-5)


def test_grouped_mm_accepts_an_expanded_output_gradient():
    # y.sum() hands back a zero-stride gradient, which torch 2.13's grouped_mm backward rejects unless copied.
    experts = make_experts("grouped_mm")
    kept_E = torch.tensor(KEPT["random"])
    x_AD = torch.randn(int(kept_E.sum()), D, requires_grad=True)
    experts(x_AD, kept_E).sum().backward()
    want = run_reference(experts, x_AD.detach(), kept_E, torch.ones(x_AD.shape))
    torch.testing.assert_close(x_AD.grad, want[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "d_model, hidden, dtype",
    [(6, F, torch.float32), (D, 10, torch.float32), (D, F, torch.float64), (D, 36, torch.bfloat16)],
    ids=["width_not_16_bytes", "hidden_not_16_bytes", "fp64", "bf16_hidden_not_16_bytes"],
)
def test_grouped_mm_falls_back_to_the_loop_where_the_kernel_refuses(d_model, hidden, dtype):
    experts = make_experts("grouped_mm", d_model=d_model, hidden=hidden, dtype=dtype)
    assert not grouped_mm_supports(torch.empty(0, d_model, dtype=dtype), hidden)
    assert experts.resolved_backend(torch.empty(0, d_model, dtype=dtype)) == "loop"
    tol = 0.15 if dtype == torch.bfloat16 else 1e-5
    check_against_reference(experts, KEPT["uneven_with_empty"], dtype, atol=tol, rtol=tol)


def test_grouped_mm_under_autocast_matches_the_loop():
    kept_E = torch.tensor(KEPT["uneven_with_empty"])
    x_AD, _ = data(int(kept_E.sum()), D, torch.float32)
    outputs = {}
    for backend in ("loop", "grouped_mm"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[backend] = make_experts(backend)(x_AD, kept_E)
    assert outputs["grouped_mm"].dtype == outputs["loop"].dtype == torch.bfloat16
    torch.testing.assert_close(outputs["grouped_mm"], outputs["loop"], atol=0.05, rtol=0.02)


def test_forward_padded_matches_per_expert_swiglu_and_keeps_empty_slots_zero():
    experts = make_experts("auto")
    capacity = 6
    rows_E = [6, 0, 2, 5, 1]  # slots in use per expert; the rest are zero padding
    x_ECD = torch.zeros(E, capacity, D)
    for e, rows in enumerate(rows_E):
        x_ECD[e, :rows] = torch.randn(rows, D)
    x_ECD.requires_grad_()
    y_ECD = experts.forward_padded(x_ECD)
    g_ECD = torch.randn(E, capacity, D)
    (y_ECD * g_ECD).sum().backward()

    kept_E = torch.tensor(rows_E)
    x_AD = torch.cat([x_ECD.detach()[e, :rows] for e, rows in enumerate(rows_E)])
    g_AD = torch.cat([g_ECD[e, :rows] for e, rows in enumerate(rows_E)])
    y_ref, x_grad_ref, *w_grads_ref = run_reference(experts, x_AD, kept_E, g_AD)
    for e, rows in enumerate(rows_E):
        assert int(y_ECD[e, rows:].count_nonzero()) == 0
        for row in range(rows):
            want = swiglu(x_ECD[e, row], experts.w1_EDF[e], experts.w3_EDF[e], experts.w2_EFD[e])
            torch.testing.assert_close(y_ECD[e, row], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([y_ECD.detach()[e, :r] for e, r in enumerate(rows_E)]), y_ref)
    torch.testing.assert_close(torch.cat([x_ECD.grad[e, :r] for e, r in enumerate(rows_E)]), x_grad_ref)
    grads = (experts.w1_EDF.grad, experts.w3_EDF.grad, experts.w2_EFD.grad)
    for name, grad, ref in zip(NAMES[2:], grads, w_grads_ref, strict=True):
        torch.testing.assert_close(grad, ref, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_auto_takes_grouped_mm_while_the_hidden_activations_fit_the_budget_then_the_loop():
    experts = make_experts("auto")
    rows = GROUPED_MM_CPU_MAX_BYTES // (F * 4)  # A x F fp32 exactly at the budget
    assert experts.resolved_backend(torch.empty(rows, D)) == "grouped_mm"
    assert experts.resolved_backend(torch.empty(rows + 1, D)) == "loop"
    assert (
        experts.resolved_backend(torch.empty(rows + 1, D, dtype=torch.bfloat16)) == "grouped_mm"
    )  # half the bytes
    assert experts.resolved_backend(torch.empty(8, D, dtype=torch.float64)) == "loop"  # no fp64 kernel


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        SwiGLUExperts(E, D, F, backend="triton")


def test_loop_under_autocast_gives_fp32_weight_gradients_that_match_the_reference():
    # bf16-mixed: the loop runs its GEMMs in bf16 and hands the fp32 weights fp32 gradients, as autocast would.
    experts = make_experts("loop")
    kept_E = torch.tensor(KEPT["uneven_with_empty"])
    x_AD, g_AD = data(int(kept_E.sum()), D, torch.float32)
    x_AD.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_AD = experts(x_AD, kept_E)
    assert y_AD.dtype == torch.bfloat16
    (y_AD.float() * g_AD).sum().backward()
    want = run_reference(experts, x_AD.detach(), kept_E, g_AD)
    got = [x_AD.grad, experts.w1_EDF.grad, experts.w3_EDF.grad, experts.w2_EFD.grad]
    for name, a, b in zip(NAMES[1:], got, want[1:], strict=True):
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a, b, atol=0.15, rtol=0.05, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("frozen", ["input", "weights"])
def test_loop_computes_only_the_gradients_asked_for(frozen):
    experts = make_experts("loop")
    kept_E = torch.tensor(KEPT["random"])
    x_AD, g_AD = data(int(kept_E.sum()), D, torch.float32)
    want = run_reference(experts, x_AD.clone(), kept_E, g_AD)
    if frozen == "weights":
        experts.requires_grad_(False)
        x_AD.requires_grad_()
    (experts(x_AD, kept_E) * g_AD).sum().backward()
    if frozen == "weights":
        assert experts.w1_EDF.grad is None and experts.w2_EFD.grad is None
        torch.testing.assert_close(x_AD.grad, want[1], atol=1e-5, rtol=1e-5)
    else:
        assert x_AD.grad is None
        torch.testing.assert_close(experts.w2_EFD.grad, want[4], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(experts.w1_EDF.grad, want[2], atol=1e-5, rtol=1e-5)
