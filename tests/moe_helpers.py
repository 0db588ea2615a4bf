"""Helpers shared by the MoE layer tests: a randomly initialised layer, the SwiGLU reference, one thread."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.config.schema import MoEConfig, PrecisionConfig, RouterConfig
from workbench.models.moe import MoELayer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors, many small ops: one intra-op thread. Two OpenMP threads on a busy 2-core machine
    spin-wait on each op (300 bias-update steps: 0.2 s on one thread, 3-45 s on two beside a training run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_layer(
    d_model: int = 8, seed: int = 0, precision: PrecisionConfig | None = None, router=None, **moe
) -> MoELayer:
    """A layer with every parameter ~ N(0, 0.5): large enough for varied routing."""
    torch.manual_seed(seed)
    layer = MoELayer(d_model, MoEConfig(router=RouterConfig(**(router or {})), **moe), precision)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=0.5)
    return layer


def swiglu(x_D, w1_DF, w3_DF, w2_FD):
    """One SwiGLU expert on one token (Shazeer 2020, GLU Variants)."""
    return (F.silu(x_D @ w1_DF) * (x_D @ w3_DF)) @ w2_FD
