"""Typed configuration schemas, one dataclass per Hydra group.

YAML files in ``conf/`` only compose and fill these; a typo or a wrong type fails at compose time
because every schema is registered in Hydra's ConfigStore (see ``workbench.config.store``).
Cross-field rules live in ``workbench.config.validate.validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """Decoder-only transformer. Dense and MoE differ only in the feed-forward slot (``ffn``)."""

    ffn: str = "dense"  # "dense" (SwiGLU) or "moe" (settings in the root `moe` node)
    vocab_size: int | None = None  # None: taken from the tokenizer
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512  # hidden width of the dense SwiGLU FFN
    moe_every: int = 1  # MoE in every n-th layer (1 = all; Switch/GShard interleave with 2), dense elsewhere
    rope_base: float = 10000.0  # RoFormer (Su et al. 2021) default
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02  # GPT-2 init; residual output projections are scaled by 1/sqrt(2*n_layers)
    dropout: float = 0.0


@dataclass
class MoEConfig:
    """Mixture-of-Experts feed-forward; used by layers where ``model.ffn == "moe"``."""

    num_experts: int = 8
    top_k: int = 2
    # Hidden width of each expert. None keeps active FFN FLOPs equal to the dense model: d_ff // top_k.
    expert_hidden: int | None = None
    # Capacity per expert C = ceil(T * top_k / num_experts * capacity_factor) (GShard / Switch eq. 3).
    capacity_factor: float = 1.25
    dropless: bool = False  # True: every assignment is computed, capacity_factor is ignored
    # Rescale each token's top-k combine weights to sum to 1 (GShard top-2; Mixtral). Without it, top-2 of 8
    # starts with weights near 2/8 and the MoE output is ~4x smaller than the dense FFN it replaces.
    # Ignored for top_k=1, where it would make the weight 1 and cut the router off from the main loss (Switch).
    normalize_top_k: bool = True
    aux_loss_weight: float = 0.01  # Switch load-balancing loss alpha (Fedus et al. 2021, sec. 2.2)
    z_loss_weight: float = 0.0  # router z-loss (Zoph et al. 2022, ST-MoE eq. 5); 1e-3 is their value


@dataclass
class PrecisionConfig:
    """Numeric policy. The fp32 islands apply under any policy that computes in a half type."""

    policy: str = "fp32"  # fp32 | bf16-mixed | fp16-mixed | bf16-true
    fp32_router: bool = True  # router logits and softmax in fp32 (Switch "selective precision", sec. 2.4)
    fp32_softmax: bool = False  # attention scores and softmax in fp32
    fp32_loss: bool = True  # logits upcast to fp32 before the cross-entropy


@dataclass
class DataConfig:
    """Where documents come from, how they are split, tokenized and packed."""

    source: str = "embedded"  # embedded | files | hub
    # embedded: which Python-shipped corpora to include ("code": stdlib source, "prose": pydoc topics + docstrings)
    embedded_kinds: list[str] = field(default_factory=lambda: ["code", "prose"])
    include_tests: bool = False  # embedded: also the stdlib's own test suites (several times larger)
    paths: list[str] = field(
        default_factory=list
    )  # files: local .jsonl / .json / .parquet / .txt files or globs
    text_field: str = "text"  # files/hub: column holding the document text
    hub_id: str | None = None  # hub: a Hugging Face dataset id
    hub_config: str | None = None
    hub_split: str = "train"
    hub_streaming: bool = False
    max_docs: int | None = None  # cap on documents (after a stable ordering), for quick runs
    val_fraction: float = 0.05  # share of documents in validation, by a stable hash of the document id
    split_salt: str = "workbench"  # changes which documents land in validation, deterministically
    tokenizer: str = "byte"  # byte | bpe
    bpe_vocab_size: int = 4096
    seq_len: int = 256
    batch_size: int = 16
    num_workers: int = 0
    cache_dir: str = ".cache/workbench"


@dataclass
class TrainerConfig:
    """Optimisation and loop settings (the recipe; sizes of the run live in `budget`)."""

    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1
    val_every_n_steps: int = 100
    val_batches: int = 16  # validation batches per evaluation (the same ones every time)
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 0  # 0: only the final checkpoint
    num_threads: int | None = None  # torch intra-op threads on CPU; None leaves torch's default
    progress_bar: bool = True
    compile: bool = False  # torch.compile the network


@dataclass
class BudgetConfig:
    """How much the run may spend. Unset limits are ignored; the run stops when the first set one is spent."""

    steps: int | None = None
    tokens: int | None = None
    flops: float | None = None  # analytic training FLOPs (see README, "Cost accounting")
    usd: float | None = None  # money at cost.usd_per_hour * devices


@dataclass
class CostConfig:
    """Hardware whose peak and price turn measured time into MFU, device-hours and money."""

    hardware: str = "cpu"  # cpu | a100 | h100 | h200 (peaks and prices in workbench.cost.hardware)
    peak_flops: float | None = (
        None  # per device; None: the table's value for the compute dtype (cpu: measured)
    )
    usd_per_hour: float | None = None  # per device; None: the table's value


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    enabled: bool = True
    # None: $MLFLOW_TRACKING_URI if set, else a SQLite store `mlflow.db` in the project root
    tracking_uri: str | None = None
    experiment_name: str = "workbench"
    run_name: str | None = None  # None: "<name>-<timestamp>"
    log_checkpoints: bool = False  # also upload checkpoints as MLflow artifacts


@dataclass
class TrainConfig:
    """Root config composed by ``conf/train.yaml``."""

    name: str = "default"  # experiment name, set by each preset in conf/experiment/
    seed: int = 0
    ckpt_path: str | None = None  # resume from this checkpoint (same MLflow run, continued step count)
    output_dir: str = "outputs/${name}/${now:%Y-%m-%d_%H-%M-%S}"  # checkpoints and run files
    model: ModelConfig = MISSING
    moe: MoEConfig = field(default_factory=MoEConfig)
    precision: PrecisionConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    budget: BudgetConfig = MISSING
    cost: CostConfig = MISSING
    tracking: TrackingConfig = MISSING
    tags: dict[str, Any] = field(default_factory=dict)  # extra MLflow tags
