"""Expert implementations: E SwiGLU feed-forward networks applied to their contiguous slices of x_AD.

One module, `SwiGLUExperts`, holds the weights; its `backend` chooses how the same math runs:
    loop        a Python loop over experts on `torch.split` slices (any device, dtype and width)
    grouped_mm  `torch.nn.functional.grouped_mm` (i.e. `torch._grouped_mm`): one call per projection, the
                experts' row ranges given as offsets; falls back to the loop where the kernel refuses the inputs
    auto        the faster of the two for the device and sizes, by the measurements at `auto_backend`
`swiglu_experts_reference` is the plain statement of the math that the tests hold every backend to.

Shape legend:
    A  kept assignments, sorted by expert (see dispatch.py); a: one expert's slice of them
    D  model width
    F  expert hidden width
    E  routed experts
    C  capacity: rows per expert in the padded layout
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.config.choices import ExpertsBackend
from workbench.models.moe.dispatch import compute_dtype

BACKENDS = tuple(ExpertsBackend)

# "auto" on CPU: grouped_mm while the hidden activations (A x F) fit in this many bytes, the loop beyond.
# Measured with torch 2.13 on a 2-core AMD EPYC (Zen 5, AVX-512, MKL), 2 threads, fp32, balanced routing;
# best ms of forward + backward of the experts alone, loop / grouped_mm, by the size of A x F in fp32 (T = A/k):
#     D    E   k   F        2 MiB        4 MiB        8 MiB        16 MiB       32 MiB
#     512  8   2   1024     43 / 40                   123 / 122    203 / 203    397 / 417   (T=4096)
#     512  64  8   256      70 / 57                   152 / 153    239 / 262    438 / 543   (T=4096)
#     256  8   2   512                                57 / 57      106 / 108    206 / 238
#     128  8   2   256      10 / 9                    32 / 31
#     128  64  8   64       21 / 15      23 / 20      40 / 37      72 / 72
# The GEMMs themselves run as fast in either (grouped_mm's CPU kernel is a loop of mm over the groups); the loop
# pays a Python step per expert and copies (torch.cat; stacking the weight gradients), grouped_mm pays for SiLU
# and the gate product over all A rows at once, out of cache once A x F outgrows it, where the loop works on
# one expert's cache-resident slice. Fusing w1|w3 into one GEMM (cat at call time) was 3-10% slower in both
# at T=4096: the copy of both weights each step outweighs the gain. bf16 (AVX-512 BF16) at the first two rows'
# T=4096 (16 MiB in bf16): loop 102 and 137 ms, grouped_mm 118 and 166 ms.
# CUDA is not measured here: grouped_mm is its single-launch kernel (bf16, sm80+) and needs no host sync, where
# the loop reads kept_E on the host every step.
GROUPED_MM_CPU_MAX_BYTES = 8 * 2**20


def swiglu(x_AD: Tensor, w1_DF: Tensor, w3_DF: Tensor, w2_FD: Tensor) -> Tensor:
    """One expert on its rows."""
    return (F.silu(x_AD @ w1_DF) * (x_AD @ w3_DF)) @ w2_FD  # FFN_SwiGLU (Shazeer 2020, GLU Variants, eq. 6)


def swiglu_experts_reference(
    x_AD: Tensor, kept_E: Tensor, w1_EDF: Tensor, w3_EDF: Tensor, w2_EFD: Tensor
) -> Tensor:
    """Plain PyTorch: each expert picks its rows by a mask of expert ids and runs on them; no backend tricks."""
    expert_A = torch.repeat_interleave(torch.arange(len(kept_E), device=x_AD.device), kept_E.to(x_AD.device))
    y_AD = torch.zeros_like(x_AD)
    for e in range(len(kept_E)):
        rows = expert_A == e
        y_AD = y_AD.index_put((rows,), swiglu(x_AD[rows], w1_EDF[e], w3_EDF[e], w2_EFD[e]))
    return y_AD


def swiglu_experts_loop(
    x_AD: Tensor, kept_E: Tensor, w1_EDF: Tensor, w3_EDF: Tensor, w2_EFD: Tensor
) -> Tensor:
    """A loop over experts, each on its `torch.split` slice; reads kept_E on the host."""
    # unbind, not w[e]: the backward of E indexings would write E zero-filled (E, D, F) gradients and sum
    # them (5x slower at E=64); unbind's backward stacks the E slices once.
    x_aD_E = torch.split(x_AD, kept_E.tolist())
    slices = zip(x_aD_E, w1_EDF.unbind(0), w3_EDF.unbind(0), w2_EFD.unbind(0), strict=True)
    return torch.cat([swiglu(x_aD, w1_DF, w3_DF, w2_FD) for x_aD, w1_DF, w3_DF, w2_FD in slices])


def _contiguous_grad(y: Tensor) -> Tensor:
    # grouped_mm's backward rejects gradients with zero strides, e.g. the expanded ones of `y.sum()`.
    if y.requires_grad:
        y.register_hook(torch.Tensor.contiguous)
    return y


def swiglu_experts_grouped_mm(
    x_AD: Tensor, kept_E: Tensor, w1_EDF: Tensor, w3_EDF: Tensor, w2_EFD: Tensor
) -> Tensor:
    """Three grouped GEMMs over all experts; no host sync. Check `grouped_mm_supports` first."""
    offsets_E = torch.cumsum(kept_E, dim=0, dtype=torch.int32)  # end row of each expert's slice
    dtype = compute_dtype(x_AD)  # grouped_mm is not autocast-aware: cast as autocast would for a matmul
    x_AD, w1_EDF, w3_EDF, w2_EFD = (t.to(dtype) for t in (x_AD, w1_EDF, w3_EDF, w2_EFD))
    gate_AF = F.grouped_mm(x_AD, w1_EDF, offs=offsets_E)
    up_AF = F.grouped_mm(x_AD, w3_EDF, offs=offsets_E)
    h_AF = F.silu(gate_AF) * up_AF  # FFN_SwiGLU (Shazeer 2020, GLU Variants, eq. 6)
    return _contiguous_grad(F.grouped_mm(h_AF, w2_EFD, offs=offsets_E))


def grouped_mm_supports(x_AD: Tensor, hidden: int) -> bool:
    """Whether torch 2.13's grouped_mm takes these inputs (else the loop runs).

    CPU: fp32, bf16 and fp16 (not fp64), every row stride a multiple of 16 bytes. CUDA: bf16 on sm80 or newer.
    """
    if not hasattr(F, "grouped_mm"):
        return False
    dtype = compute_dtype(x_AD)
    if x_AD.device.type == "cpu":
        dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
    elif x_AD.device.type == "cuda":
        dtypes = (torch.bfloat16,) if torch.cuda.get_device_capability(x_AD.device) >= (8, 0) else ()
    else:
        return False
    itemsize = torch.empty((), dtype=dtype).element_size()
    return dtype in dtypes and (x_AD.shape[-1] * itemsize) % 16 == 0 and (hidden * itemsize) % 16 == 0


def auto_backend(x_AD: Tensor, hidden: int) -> str:
    """What "auto" runs on these inputs: grouped_mm on CUDA and for small activations on CPU, else the loop."""
    if not grouped_mm_supports(x_AD, hidden):
        return "loop"
    if x_AD.device.type != "cpu":
        return "grouped_mm"
    itemsize = torch.empty((), dtype=compute_dtype(x_AD)).element_size()
    return "grouped_mm" if x_AD.shape[0] * hidden * itemsize <= GROUPED_MM_CPU_MAX_BYTES else "loop"


class SwiGLUExperts(nn.Module):
    """E SwiGLU experts with stacked weights: x_AD (rows grouped by expert, kept_E rows each) -> y_AD.

    Weights are stored input-major (w1_EDF: x_D @ w1_EDF[e] -> h_F), the layout grouped GEMM kernels take;
    checkpoints and the Hugging Face converters (interop.py) read them by these names. Initialisation is left
    to the model, which gives experts the scale the dense FFN would have.
    """

    def __init__(self, num_experts: int, d_model: int, hidden: int, backend: str = "auto") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"experts backend {backend!r} is not one of: {', '.join(BACKENDS)}")
        self.backend = backend
        self.w1_EDF = nn.Parameter(torch.empty(num_experts, d_model, hidden))  # gate
        self.w3_EDF = nn.Parameter(torch.empty(num_experts, d_model, hidden))  # up
        self.w2_EFD = nn.Parameter(torch.empty(num_experts, hidden, d_model))  # down

    def resolved_backend(self, x_AD: Tensor) -> str:
        """The backend that runs on these inputs: "auto" resolved, grouped_mm only where the kernel applies."""
        hidden = self.w1_EDF.shape[-1]
        if self.backend == "auto":
            return auto_backend(x_AD, hidden)
        if self.backend == "grouped_mm" and not grouped_mm_supports(x_AD, hidden):
            return "loop"
        return self.backend

    def forward(self, x_AD: Tensor, kept_E: Tensor) -> Tensor:
        run = (
            swiglu_experts_grouped_mm if self.resolved_backend(x_AD) == "grouped_mm" else swiglu_experts_loop
        )
        return run(x_AD, kept_E, self.w1_EDF, self.w3_EDF, self.w2_EFD)

    def forward_padded(self, x_ECD: Tensor) -> Tensor:
        """Capacity-padded layout: C rows per expert, zero rows in unused slots (which stay zero)."""
        h_ECF = F.silu(torch.bmm(x_ECD, self.w1_EDF)) * torch.bmm(x_ECD, self.w3_EDF)  # Shazeer 2020, eq. 6
        return torch.bmm(h_ECF, self.w2_EFD)

    def extra_repr(self) -> str:
        num_experts, d_model, hidden = self.w1_EDF.shape
        return f"num_experts={num_experts}, d_model={d_model}, hidden={hidden}, backend={self.backend!r}"
