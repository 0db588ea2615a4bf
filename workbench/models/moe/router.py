"""Routers: which experts each token goes to, and with what combine weight.

Every router maps x_TD to a `Routing`; dispatch, experts and losses only read that, so a new router is a
new class here and nothing else changes.

Shape legend:
    T  tokens in the micro-batch (batch * sequence, flattened)
    D  model width
    E  routed experts
    K  experts chosen per token (top_k)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Routing:
    """A router's decision for one micro-batch."""

    logits_TE: Tensor  # pre-softmax scores; fp32 when the router runs in fp32 (z-loss reads these)
    probs_TE: Tensor  # softmax over all E experts (load-balancing loss reads these)
    experts_TK: Tensor  # long: chosen experts, best first
    weights_TK: Tensor  # combine weights, in the activation dtype


class TopKRouter(nn.Module):
    """Token choice: softmax over all experts, then each token takes its top-k (GShard; Switch for k=1).

    The combine weights are the chosen probabilities as they are (they sum to less than 1 for k < E), as in
    Switch and GShard; `normalize=True` rescales them to sum to 1 per token (Mixtral).
    """

    def __init__(
        self, d_model: int, num_experts: int, top_k: int, fp32: bool = True, normalize: bool = False
    ) -> None:
        super().__init__()
        self.top_k = top_k
        self.fp32 = fp32
        self.normalize = normalize
        self.w_ED = nn.Parameter(torch.empty(num_experts, d_model))  # no bias (Switch, GShard)

    def forward(self, x_TD: Tensor) -> Routing:
        if self.fp32:
            # Switch sec. 2.4 "selective precision": a bf16 router diverged; casting only the router to fp32 did not.
            # autocast is switched off, otherwise it would cast the fp32 operands straight back to half.
            with torch.autocast(device_type=x_TD.device.type, enabled=False):
                logits_TE = F.linear(x_TD.float(), self.w_ED.float())
                probs_TE = logits_TE.softmax(dim=-1)
        else:
            logits_TE = F.linear(x_TD, self.w_ED)
            probs_TE = logits_TE.softmax(dim=-1)
        weights_TK, experts_TK = probs_TE.topk(self.top_k, dim=-1)
        if self.normalize:
            weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
        return Routing(logits_TE, probs_TE, experts_TK, weights_TK.to(x_TD.dtype))
