"""Map a workbench precision policy onto Lightning's precision plugin strings."""

from __future__ import annotations

import torch

from workbench.config import check_fields
from workbench.config.choices import PrecisionPolicy
from workbench.config.schema import PrecisionConfig

# One line per `precision.policy` choice (workbench.config.choices.PrecisionPolicy).
LIGHTNING_PRECISION: dict[str, str] = {
    "fp32": "32-true",
    "bf16-mixed": "bf16-mixed",
    "fp16-mixed": "16-mixed",  # autocast fp16 + dynamic GradScaler (skips inf/NaN steps)
    "bf16-true": "bf16-true",
}


def validate_precision(p: PrecisionConfig) -> None:
    check_fields(p, "precision")


def lightning_precision(policy: str, accelerator: str) -> tuple[str, str | None]:
    """(Lightning precision string, note for the user or None).

    fp16 autocast with gradient scaling only exists on CUDA; elsewhere Lightning would silently swap in
    bf16-mixed, so the swap is made here and said out loud, and the run records the policy it really used.
    """
    uses_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if policy == "fp16-mixed" and not uses_cuda:
        return (
            "bf16-mixed",
            "precision.policy=fp16-mixed needs a CUDA GPU for gradient scaling; running bf16-mixed",
        )
    return LIGHTNING_PRECISION[PrecisionPolicy(policy)], None
