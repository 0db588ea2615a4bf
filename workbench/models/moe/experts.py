"""Expert implementations: E feed-forward networks applied to their contiguous slices of x_AD.

Shape legend:
    A  kept assignments, sorted by expert (see dispatch.py); a: one expert's slice of them
    D  model width
    F  expert hidden width
    E  routed experts
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SwiGLUExperts(nn.Module):
    """E SwiGLU experts with stacked weights, run by a loop over experts (not over tokens).

    Weights are stored input-major (w1_EDF: x_D @ w1_EDF[e] -> h_F), the layout grouped-GEMM kernels take.
    Initialisation is left to the model, which gives experts the scale the dense FFN would have.
    """

    def __init__(self, num_experts: int, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w1_EDF = nn.Parameter(torch.empty(num_experts, d_model, hidden))  # gate
        self.w3_EDF = nn.Parameter(torch.empty(num_experts, d_model, hidden))  # up
        self.w2_EFD = nn.Parameter(torch.empty(num_experts, hidden, d_model))  # down

    def forward(self, x_AD: Tensor, kept_E: Tensor) -> Tensor:
        outputs = []
        for e, x_aD in enumerate(torch.split(x_AD, kept_E.tolist())):
            h_aF = F.silu(x_aD @ self.w1_EDF[e]) * (
                x_aD @ self.w3_EDF[e]
            )  # FFN_SwiGLU (Shazeer 2020, GLU Variants)
            outputs.append(h_aF @ self.w2_EFD[e])
        return torch.cat(outputs)
