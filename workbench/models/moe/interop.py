"""Conversion between `MoELayer` and Hugging Face's `MixtralSparseMoeBlock` (transformers 5), both ways.

Used to hold our layer to a reference implementation (tests/test_moe_parity_hf.py) and to time it against one
(benchmarks/moe_layer.py). transformers is imported inside the functions: the workbench does not need it.

The layer must compute what Mixtral does: softmax over E experts, top-k (k > 1), the k weights renormalised to
sum to 1, every assignment computed (`MoEConfig(..., dropless=True)` with the default router); `mixtral_mismatches`
names what differs. Outputs agree to rounding in fp32; in bf16/fp16 the HF block computes its router logits in
that dtype where ours defaults to fp32, so near-ties may route differently. Weight layouts:
    ours  router.w_ED (E, D); experts.w1_EDF (gate), w3_EDF (up): input-major (E, D, F); w2_EFD (E, F, D)
    HF    gate.weight (E, D); experts.gate_up_proj (E, 2F, D) = [gate; up], output-major; down_proj (E, D, F)

Shape legend:
    E  routed experts
    D  model width
    F  expert hidden width
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from workbench.models.moe.layer import MoELayer

# Experts implementations of transformers 5 that run on CPU; the others it registers (deepgemm, sonicmoe) are
# CUDA kernels loaded from the Hugging Face Hub. "eager" is the modelling file's own loop over experts;
# batched_mm gathers a copy of each assignment's expert weights (T*k*3*F*D numbers: decoding-sized batches only).
CPU_EXPERTS_BACKENDS = ("eager", "batched_mm", "grouped_mm")


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "Hugging Face interop needs transformers>=5: pip install 'transformers>=5'"
        ) from err


def hf_experts_backends(device: str | torch.device = "cpu") -> tuple[str, ...]:
    """The `experts_implementation` names the installed transformers offers that run on `device`."""
    _require_transformers()
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    registered = ("eager", *ALL_EXPERTS_FUNCTIONS.valid_keys())
    if torch.device(device).type == "cpu":
        return tuple(name for name in CPU_EXPERTS_BACKENDS if name in registered)
    return registered


def set_hf_experts_backend(block: Any, name: str) -> None:
    """Switch a MixtralSparseMoeBlock's experts to another `experts_implementation` (read at each forward)."""
    _require_transformers()
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if name != "eager" and name not in ALL_EXPERTS_FUNCTIONS.valid_keys():
        raise ValueError(
            f"unknown experts_implementation {name!r}; transformers offers {hf_experts_backends('cuda')}"
        )
    # The block has no PreTrainedModel.set_experts_implementation; its experts read the config at forward time.
    block.experts.config._experts_implementation = name


def mixtral_mismatches(layer: MoELayer) -> list[str]:
    """What in the layer's config makes it compute something other than a Mixtral block (empty: nothing)."""
    cfg = getattr(layer, "cfg", None)
    if cfg is None:
        return []
    router = cfg.router
    renormalised = router.softmax_after_topk or (router.normalize_top_k and layer.top_k > 1)
    rules = {
        f"router.type={router.type!r}, not 'topk'": router.type == "topk",
        f"router.score={router.score!r}, not 'softmax'": router.score == "softmax",
        "top-k weights not renormalised to sum to 1": renormalised,
        f"router.route_scale={router.route_scale}, not 1": router.route_scale == 1.0,
        "router input jitter in training mode": router.jitter_eps == 0 or not layer.training,
        "group-limited routing": router.num_groups == 1 or router.group_top_k in (None, router.num_groups),
        "aux-loss-free bias steers the selection": router.bias_update_rate == 0,
        f"{cfg.num_shared_experts} shared experts": cfg.num_shared_experts == 0,
        "capacity drops assignments (dropless=False)": cfg.dropless,
    }
    return [problem for problem, ok in rules.items() if not ok]


def _layer_sizes(layer: MoELayer) -> tuple[int, int, int, int]:
    num_experts, d_model = layer.router.w_ED.shape
    hidden = layer.experts.w1_EDF.shape[-1]
    top_k = getattr(layer, "top_k", None) or layer.router.top_k
    return num_experts, d_model, hidden, top_k


def to_hf_mixtral_block(layer: MoELayer, experts_implementation: str = "eager", strict: bool = True) -> Any:
    """A MixtralSparseMoeBlock computing what `layer` computes, on its device and in its dtype, weights copied.

    strict=False copies the weights even where the layer routes differently (see `mixtral_mismatches`).
    """
    _require_transformers()
    if strict and (mismatches := mixtral_mismatches(layer)):
        raise ValueError(f"the layer does not compute a Mixtral block: {'; '.join(mismatches)}")
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    num_experts, d_model, hidden, top_k = _layer_sizes(layer)
    config = MixtralConfig(
        hidden_size=d_model,
        intermediate_size=hidden,
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
        router_jitter_noise=0.0,
        hidden_act="silu",
    )
    weight = layer.experts.w1_EDF
    block = MixtralSparseMoeBlock(config).to(device=weight.device, dtype=weight.dtype)
    set_hf_experts_backend(block, experts_implementation)
    gate_up_E2FD, down_EDF = ours_to_hf_experts(
        layer.experts.w1_EDF, layer.experts.w3_EDF, layer.experts.w2_EFD
    )
    with torch.no_grad():
        block.gate.weight.copy_(layer.router.w_ED)
        block.experts.gate_up_proj.copy_(gate_up_E2FD)
        block.experts.down_proj.copy_(down_EDF)
    return block.train(layer.training)


def from_hf_mixtral_block(block: Any, layer: MoELayer) -> MoELayer:
    """Copy a MixtralSparseMoeBlock's router and expert weights into `layer` (same sizes); returns `layer`."""
    num_experts, d_model, hidden, top_k = _layer_sizes(layer)
    gate_up = block.experts.gate_up_proj
    if gate_up.shape != (num_experts, 2 * hidden, d_model) or block.top_k != top_k:
        raise ValueError(
            f"block has gate_up_proj {tuple(gate_up.shape)} and top_k {block.top_k}; the layer needs "
            f"{(num_experts, 2 * hidden, d_model)} and top_k {top_k}"
        )
    w1_EDF, w3_EDF, w2_EFD = hf_to_ours_experts(gate_up, block.experts.down_proj)
    with torch.no_grad():
        layer.router.w_ED.copy_(block.gate.weight)
        layer.experts.w1_EDF.copy_(w1_EDF)
        layer.experts.w3_EDF.copy_(w3_EDF)
        layer.experts.w2_EFD.copy_(w2_EFD)
    return layer


def ours_to_hf_experts(w1_EDF: Tensor, w3_EDF: Tensor, w2_EFD: Tensor) -> tuple[Tensor, Tensor]:
    """(gate_up_E2FD, down_EDF) in Hugging Face's output-major layout, gate rows before up rows."""
    return torch.cat([w1_EDF, w3_EDF], dim=-1).transpose(1, 2), w2_EFD.transpose(1, 2)


def hf_to_ours_experts(gate_up_E2FD: Tensor, down_EDF: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(w1_EDF, w3_EDF, w2_EFD) from Hugging Face's layout; also maps its gradients onto ours."""
    gate_EFD, up_EFD = gate_up_E2FD.chunk(2, dim=1)
    return gate_EFD.transpose(1, 2), up_EFD.transpose(1, 2), down_EDF.transpose(1, 2)
