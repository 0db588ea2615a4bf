"""The dense feed-forward network: the FFN slot's default, which MoELayer replaces."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DenseFFN(nn.Module):
    """SwiGLU FFN without biases: x_TD -> (y_TD, None), the same interface as MoELayer (whose stats are None here).

    Keyword context the MoE layer reads (token ids, sequence length) is accepted and ignored.
    """

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)  # gate
        self.w3 = nn.Linear(d_model, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, d_model, bias=False)  # down

    def forward(self, x_TD: Tensor, **_) -> tuple[Tensor, None]:
        return self.w2(F.silu(self.w1(x_TD)) * self.w3(x_TD)), None  # FFN_SwiGLU (Shazeer 2020, GLU Variants)
