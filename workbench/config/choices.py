"""Closed choices of the config, as Enums that OmegaConf checks when a config composes.

Each is a `StrEnum` whose member names equal their values, so YAML and overrides write the value
(`precision.policy=bf16-mixed`), a bad value fails at compose time with the allowed values listed, and code
compares members with plain strings (`policy == "fp32"`). The component that implements a choice keys its
registry by these members (`ROUTERS[RouterType.topk]`), and a test checks that every member is implemented.
Adding a choice is one member here plus the implementation in its component.
"""

from __future__ import annotations

from enum import StrEnum


def _values(name: str, values: tuple[str, ...], doc: str) -> type[StrEnum]:
    """A StrEnum whose members are named by their values (for values such as `bf16-mixed`)."""
    cls = StrEnum(name, [(v, v) for v in values], module=__name__)
    cls.__doc__ = doc
    return cls


class FFNKind(StrEnum):
    """The feed-forward slot of every transformer block."""

    dense = "dense"  # SwiGLU
    moe = "moe"  # Mixture-of-Experts (settings in the root `moe` node)


class RouterType(StrEnum):
    """Router classes in `workbench.models.moe.router`."""

    topk = "topk"  # token choice (GShard, Mixtral, DeepSeek)
    switch = "switch"  # top-1 with input jitter (Fedus et al. 2021)
    noisy_topk = "noisy_topk"  # learned Gaussian noise on the logits (Shazeer et al. 2017)
    expert_choice = "expert_choice"  # each expert takes its top-C tokens (Zhou et al. 2022)
    hash = "hash"  # expert by token id (Roller et al. 2021)
    random = "random"  # uniform, a lower bound for any learned router


class RouterScore(StrEnum):
    softmax = "softmax"
    sigmoid = "sigmoid"  # DeepSeek-V3


class GroupScore(StrEnum):
    """How a group of experts is ranked in group-limited routing."""

    max = "max"  # DeepSeek-V2
    top2_sum = "top2_sum"  # DeepSeek-V3


class BiasUpdate(StrEnum):
    """The auxiliary-loss-free bias update (Wang et al. 2024)."""

    sign = "sign"  # rate * sign(mean load - load); better in Wang et al.
    proportional = "proportional"  # rate * (mean load - load) / mean load


class DropPolicy(StrEnum):
    """Which assignments an expert over capacity drops (`workbench.models.moe.dispatch`)."""

    position = "position"  # choice-major token order, later tokens dropped first (GShard)
    probs = "probs"  # the lowest router weights dropped first


class ExpertsBackend(StrEnum):
    """How the experts' matmuls run (`workbench.models.moe.experts`)."""

    auto = "auto"  # chosen by measured activation size
    loop = "loop"  # one matmul per expert
    grouped_mm = "grouped_mm"  # torch._grouped_mm over all experts


PrecisionPolicy = _values(
    "PrecisionPolicy",
    ("fp32", "bf16-mixed", "fp16-mixed", "bf16-true"),
    "Numeric policy of a run (`workbench.training.precision`).",
)

RouterDtype = _values(
    "RouterDtype",
    ("fp32", "fp64", "bf16", "fp16", "compute"),
    "Dtype of one router stage; `compute` follows the precision policy.",
)


class DataSourceKind(StrEnum):
    embedded = "embedded"  # Python's own stdlib source and docs (no network)
    files = "files"  # local .jsonl / .json / .parquet / .txt
    hub = "hub"  # a Hugging Face dataset id
    mixture = "mixture"  # several named sources, filtered and mixed by tokens


class EmbeddedKind(StrEnum):
    code = "code"  # stdlib source
    prose = "prose"  # pydoc topics and docstrings


class TokenizerKind(StrEnum):
    byte = "byte"
    bpe = "bpe"  # trained on the corpus with `tokenizers`


class SourceKind(StrEnum):
    """Kinds of one source of a data mixture (`workbench.data.sources`)."""

    embedded = "embedded"
    files = "files"
    hub = "hub"
    synthetic = "synthetic"  # verified procedural tasks
    inject = "inject"  # copies and junk derived from another source
    teacher = "teacher"  # samples of trained workbench checkpoints


class SyntheticTask(StrEnum):
    """Generators of `workbench.data.synthetic`."""

    arithmetic = "arithmetic"
    sorting = "sorting"
    string = "string"


class TeacherMode(StrEnum):
    replace = "replace"  # only the last generation's samples
    accumulate = "accumulate"  # every generation's samples


class Accelerator(StrEnum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"


class HardwareName(StrEnum):
    """Rows of the hardware table (`workbench.cost.hardware`): peaks and prices."""

    a100 = "a100"
    h100 = "h100"
    h200 = "h200"
    cpu = "cpu"


__all__ = [
    "Accelerator",
    "BiasUpdate",
    "DataSourceKind",
    "DropPolicy",
    "EmbeddedKind",
    "ExpertsBackend",
    "FFNKind",
    "GroupScore",
    "HardwareName",
    "PrecisionPolicy",
    "RouterDtype",
    "RouterScore",
    "RouterType",
    "SourceKind",
    "SyntheticTask",
    "TeacherMode",
    "TokenizerKind",
]
