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
class RouterConfig:
    """Which experts each token goes to, and with what weight. ``type`` picks a class in
    ``workbench.models.moe.router``; the other fields are options, each used by the types named beside it.
    """

    # topk: token choice (GShard, Mixtral, DeepSeek); switch: top-1 with input jitter (Fedus et al. 2021);
    # noisy_topk: learned Gaussian noise on the logits (Shazeer et al. 2017); expert_choice: each expert takes
    # its top-C tokens (Zhou et al. 2022); hash: expert by token id (Roller et al. 2021); random: uniform.
    type: str = "topk"
    score: str = "softmax"  # topk/switch/noisy_topk: softmax | sigmoid (DeepSeek-V3)
    # False: softmax over all E experts, then top-k (GShard); True: top-k on logits, softmax over the k chosen
    # (Megatron pre_softmax=False; Shazeer 2017). Softmax scores only.
    softmax_after_topk: bool = False
    # Rescale each token's top-k weights to sum to 1 (Mixtral; DeepSeek-V3 for sigmoid). Without it, softmax
    # top-2 of 8 starts with weights near 2/8 and the MoE output is ~4x smaller than the dense FFN it replaces.
    # Ignored for top-1 softmax, where it would make the weight 1 and cut the router off from the main loss.
    normalize_top_k: bool = True
    route_scale: float = 1.0  # multiplies the combine weights (DeepSeek-V3 uses 2.5 with 256 experts)
    jitter_eps: float = 0.0  # training only: router input * U(1-eps, 1+eps) (Switch uses 1e-2)
    # Group-limited routing (DeepSeek-V2/V3): experts in num_groups contiguous groups; each token first keeps
    # its best group_top_k groups (ranked by group_score), then picks top-k experts inside them.
    num_groups: int = 1
    group_top_k: int | None = None  # None: all groups
    group_score: str = "top2_sum"  # max (DeepSeek-V2) | top2_sum (DeepSeek-V3)
    # Auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3): a per-expert bias added to the scores for
    # selection only, updated after each optimizer step by rate * sign(mean load - load). 0 turns it off.
    bias_update_rate: float = 0.0
    bias_update: str = "sign"  # sign (Wang et al.: better) | proportional: rate * (mean - load) / mean
    bias_center: bool = False  # subtract the bias mean after each update (torchtitan); selection is unchanged
    seed: int = 0  # hash and random routers: seed of the token->expert table / of eval-time draws


@dataclass
class MoEConfig:
    """Mixture-of-Experts feed-forward; used by layers where ``model.ffn == "moe"``.

    ``num_experts``, ``top_k`` and ``expert_hidden`` describe coarse experts; ``segmentation`` m splits each
    into m finer ones (DeepSeekMoE): m*num_experts experts of width expert_hidden/m, m*top_k - num_shared_experts
    routed per token, plus num_shared_experts always-on experts of the fine width. Active FFN FLOPs stay fixed.
    """

    num_experts: int = 8
    top_k: int = 2
    # Hidden width of each coarse expert. None keeps active FFN FLOPs equal to the dense model: d_ff // top_k.
    expert_hidden: int | None = None
    segmentation: int = 1  # fine-grained expert segmentation factor m (Dai et al. 2024, sec. 3.1)
    num_shared_experts: int = (
        0  # always-on experts, taken out of the m*top_k active ones (Dai et al. 2024, sec. 3.2)
    )
    router: RouterConfig = field(default_factory=RouterConfig)

    # Capacity per expert C = ceil(T * k / E * capacity_factor) (GShard; Switch eq. 3); for expert choice each
    # expert takes exactly C tokens, i.e. c = k * capacity_factor experts per token on average (Zhou et al. 2022).
    capacity_factor: float = 1.25
    eval_capacity_factor: float | None = None  # None: capacity_factor (ST-MoE raises it to 2.0 at eval)
    drop_policy: str = (
        "position"  # position: choice-major token order (GShard) | probs: lowest weights dropped
    )
    dropless: bool = False  # True: every assignment is computed, the capacity factors are ignored
    pad_to_capacity: bool = False  # run experts on a fixed (E, C, D) buffer, empty slots zero (static shapes)
    experts_backend: str = "auto"  # auto | loop | grouped_mm (see workbench.models.moe.experts)

    # Balancing stack: every term is logged unscaled as moe/<name> and scaled as moe/<name>_scaled; weight 0 = off.
    # Each term is 1.0 for a perfectly balanced router, so it adds exactly its weight (README, "MoE").
    aux_loss_weight: float = (
        0.01  # Switch load-balancing loss over the micro-batch (Fedus et al. 2021, eq. 4)
    )
    seq_aux_loss_weight: float = 0.0  # the same per sequence, averaged (DeepSeek-V2/V3 sequence-wise)
    global_aux_loss_weight: float = (
        0.0  # the same with loads summed over data-parallel ranks (Qiu et al. 2025)
    )
    z_loss_weight: float = 0.0  # router z-loss (Zoph et al. 2022, ST-MoE eq. 5); 1e-3 is their value
    device_loss_weight: float = 0.0  # DeepSeek-V2 device-level balance over expert groups (Dai et al. 2024)
    device_groups: int | None = None  # groups for device_loss; None: router.num_groups

    stats_every_n_steps: int | None = None  # routing statistics interval; None: trainer.log_every_n_steps
    log_expert_loads: bool = True  # also log moe/layer<i>/load/e<j>, each expert's share of the assignments


@dataclass
class PrecisionConfig:
    """Numeric policy. The fp32 islands apply under any policy that computes in a half type."""

    policy: str = "fp32"  # fp32 | bf16-mixed | fp16-mixed | bf16-true
    # Router dtypes, stage by stage (Switch "selective precision", sec. 2.4: a bf16 router diverged, an fp32 one
    # did not). Each is fp32 | fp64 | bf16 | fp16 | compute (the dtype the policy computes in). param: the router
    # weight's storage, kept even under bf16-true; logits: the projection; scores: softmax/sigmoid, top-k and
    # losses; combine: the weights and the weighted sum of expert outputs.
    router_param_dtype: str = "fp32"
    router_logits_dtype: str = "fp32"
    router_scores_dtype: str = "fp32"
    router_combine_dtype: str = "fp32"
    fp32_softmax: bool = False  # attention scores and softmax in fp32
    fp32_loss: bool = True  # logits upcast to fp32 before the cross-entropy


@dataclass
class SourceConfig:
    """One named source of a data mixture (`data.source=mixture`)."""

    name: str = MISSING
    # embedded | files | hub (as data.source) | synthetic (verified procedural tasks) | inject (copies and junk
    # derived from another source) | teacher (samples of trained workbench checkpoints)
    kind: str = "embedded"
    weight: float | None = None  # share of the mixture's training tokens (before temperature); None: its size
    embedded_kinds: list[str] = field(default_factory=lambda: ["code", "prose"])
    include_tests: bool = False
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str = "train"
    hub_streaming: bool = False
    max_docs: int | None = None
    generator: str | None = None  # synthetic: arithmetic | sorting | string
    docs: int = 1000  # synthetic / inject / teacher: documents to make
    base: str | None = None  # inject: the source whose documents are copied and corrupted
    checkpoints: list[str] = field(default_factory=list)  # teacher: one per generation, oldest first
    mode: str = "replace"  # teacher: replace (last generation only) | accumulate (every generation)
    params: dict[str, Any] = field(default_factory=dict)  # generator / inject / teacher settings
    seed: int = 0
    filter: bool = True  # false: this source bypasses the filters (a trusted or held-out source)


@dataclass
class MixtureConfig:
    """Sources, filters and token-based mixing (README "Data mixtures")."""

    sources: list[SourceConfig] = field(default_factory=list)
    # Applied in order to every source with filter=true; each is {type: <filter>, <threshold>: value, ...}.
    filters: list[dict[str, Any]] = field(default_factory=list)
    tokens: int | None = None  # exact training tokens of the mixture; None: every kept training token once
    temperature: float = 1.0  # p_source ~ weight^(1/T): T > 1 flattens towards uniform (XLM, Conneau et al.)
    validation: list[str] = field(default_factory=list)  # held-out set: these sources' unfiltered validation
    # split; empty: every source's validation split after filtering
    workers: int = 1  # processes computing signals (results are identical for any number)
    max_doc_bytes: int = 10_000_000  # larger documents are dropped as input:too_large before any filter
    samples_per_rule: int = 3  # dropped documents shown per rule in the report
    chunk_docs: int = 256  # documents per signal task


@dataclass
class DataConfig:
    """Where documents come from, how they are split, tokenized and packed."""

    source: str = "embedded"  # embedded | files | hub | mixture (several sources, filtered and mixed)
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
    mixture: MixtureConfig = field(default_factory=MixtureConfig)  # data.source=mixture


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
