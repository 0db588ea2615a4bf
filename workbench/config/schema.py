"""Typed configuration schemas, one dataclass per Hydra group.

YAML files in ``conf/`` only compose and fill these; a typo, a wrong type or a value outside a closed choice
(``workbench.config.choices``) fails at compose time because every schema is registered in Hydra's
ConfigStore (``workbench.config.compose``). Per-field bounds are declared here with ``bounded`` and checked
by the component that owns the slice; rules between fields live with that component (README "Layout").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from workbench.config.choices import (
    Accelerator,
    BiasUpdate,
    DataSourceKind,
    DropPolicy,
    EmbeddedKind,
    ExpertsBackend,
    FFNKind,
    GroupScore,
    HardwareName,
    PrecisionPolicy,
    RouterDtype,
    RouterScore,
    RouterType,
    SourceKind,
    SyntheticTask,
    TeacherMode,
    TokenizerKind,
)
from workbench.config.params import bounded, hinted


@dataclass
class ModelConfig:
    """Decoder-only transformer. Dense and MoE differ only in the feed-forward slot (``ffn``)."""

    ffn: FFNKind = FFNKind.dense  # dense (SwiGLU) or moe (settings in the root `moe` node)
    vocab_size: int | None = bounded(None, gt=0)  # None: taken from the tokenizer
    d_model: int = bounded(128, gt=0)
    n_layers: int = bounded(4, gt=0)
    n_heads: int = bounded(4, gt=0)
    d_ff: int = bounded(512, gt=0)  # hidden width of the dense SwiGLU FFN
    # MoE in every n-th layer (1 = all; Switch/GShard interleave with 2), dense elsewhere
    moe_every: int = bounded(1, gt=0)
    rope_base: float = bounded(10000.0, gt=0)  # RoFormer (Su et al. 2021) default
    tie_embeddings: bool = True
    norm_eps: float = bounded(1e-5, gt=0)
    # GPT-2 init; residual output projections are scaled by 1/sqrt(2*n_layers)
    init_std: float = bounded(0.02, gt=0)
    dropout: float = bounded(0.0, ge=0, lt=1)


@dataclass
class RouterConfig:
    """Which experts each token goes to, and with what weight. ``type`` picks a class in
    ``workbench.models.moe.router``; the other fields are options, each used by the types named beside it.
    """

    type: RouterType = RouterType.topk  # see workbench.config.choices.RouterType
    score: RouterScore = RouterScore.softmax  # topk/switch/noisy_topk: softmax | sigmoid (DeepSeek-V3)
    # False: softmax over all E experts, then top-k (GShard); True: top-k on logits, softmax over the k chosen
    # (Megatron pre_softmax=False; Shazeer 2017). Softmax scores only.
    softmax_after_topk: bool = False
    # Rescale each token's top-k weights to sum to 1 (Mixtral; DeepSeek-V3 for sigmoid). Without it, softmax
    # top-2 of 8 starts with weights near 2/8 and the MoE output is ~4x smaller than the dense FFN it replaces.
    # Ignored for top-1 softmax, where it would make the weight 1 and cut the router off from the main loss.
    normalize_top_k: bool = True
    # multiplies the combine weights (DeepSeek-V3 uses 2.5 with 256 experts)
    route_scale: float = bounded(1.0, gt=0)
    # training only: router input * U(1-eps, 1+eps) (Switch uses 1e-2)
    jitter_eps: float = bounded(0.0, ge=0, lt=1)
    # Group-limited routing (DeepSeek-V2/V3): experts in num_groups contiguous groups; each token first keeps
    # its best group_top_k groups (ranked by group_score), then picks top-k experts inside them.
    num_groups: int = bounded(1, gt=0)
    group_top_k: int | None = None  # None: all groups
    group_score: GroupScore = GroupScore.top2_sum  # max (DeepSeek-V2) | top2_sum (DeepSeek-V3)
    # Auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3): a per-expert bias added to the scores for
    # selection only, updated after each optimizer step by rate * sign(mean load - load). 0 turns it off.
    bias_update_rate: float = bounded(0.0, ge=0)
    bias_update: BiasUpdate = BiasUpdate.sign  # sign (Wang et al.: better) | proportional
    bias_center: bool = False  # subtract the bias mean after each update (torchtitan); selection is unchanged
    seed: int = 0  # hash and random routers: seed of the token->expert table / of eval-time draws


@dataclass
class MoEConfig:
    """Mixture-of-Experts feed-forward; used by layers where ``model.ffn == "moe"``.

    ``num_experts``, ``top_k`` and ``expert_hidden`` describe coarse experts; ``segmentation`` m splits each
    into m finer ones (DeepSeekMoE): m*num_experts experts of width expert_hidden/m, m*top_k - num_shared_experts
    routed per token, plus num_shared_experts always-on experts of the fine width. Active FFN FLOPs stay fixed.
    """

    num_experts: int = bounded(8, gt=0)
    top_k: int = bounded(2, gt=0)
    # Hidden width of each coarse expert. None keeps active FFN FLOPs equal to the dense model: d_ff // top_k.
    expert_hidden: int | None = bounded(None, gt=0)
    segmentation: int = bounded(1, gt=0)  # fine-grained expert segmentation factor m (Dai et al. 2024, 3.1)
    # always-on experts, taken out of the m*top_k active ones (Dai et al. 2024, sec. 3.2)
    num_shared_experts: int = bounded(0, ge=0)
    router: RouterConfig = field(default_factory=RouterConfig)

    # Capacity per expert C = ceil(T * k / E * capacity_factor) (GShard; Switch eq. 3); for expert choice each
    # expert takes exactly C tokens, i.e. c = k * capacity_factor experts per token on average (Zhou et al. 2022).
    capacity_factor: float = bounded(1.25, gt=0, hint="use moe.dropless=true for no capacity limit")
    # None: capacity_factor (ST-MoE raises it to 2.0 at eval)
    eval_capacity_factor: float | None = bounded(None, gt=0)
    drop_policy: DropPolicy = DropPolicy.position  # position: choice-major order (GShard) | probs
    dropless: bool = False  # True: every assignment is computed, the capacity factors are ignored
    pad_to_capacity: bool = False  # run experts on a fixed (E, C, D) buffer, empty slots zero (static shapes)
    experts_backend: ExpertsBackend = ExpertsBackend.auto  # see workbench.models.moe.experts

    # Balancing stack: every term is logged unscaled as moe/<name> and scaled as moe/<name>_scaled; weight 0 = off.
    # Each term is 1.0 for a perfectly balanced router, so it adds exactly its weight (README, "MoE").
    # Switch load-balancing loss over the micro-batch (Fedus et al. 2021, eq. 4)
    aux_loss_weight: float = bounded(0.01, ge=0)
    seq_aux_loss_weight: float = bounded(0.0, ge=0)  # the same per sequence, averaged (DeepSeek-V2/V3)
    # the same with loads summed over data-parallel ranks (Qiu et al. 2025)
    global_aux_loss_weight: float = bounded(0.0, ge=0)
    z_loss_weight: float = bounded(0.0, ge=0)  # router z-loss (Zoph et al. 2022, ST-MoE eq. 5); 1e-3 theirs
    device_loss_weight: float = bounded(0.0, ge=0)  # DeepSeek-V2 device-level balance over expert groups
    device_groups: int | None = bounded(None, gt=0)  # groups for device_loss; None: router.num_groups

    # routing statistics interval; None: trainer.log_every_n_steps
    stats_every_n_steps: int | None = bounded(None, gt=0)
    log_expert_loads: bool = True  # also log moe/layer<i>/load/e<j>, each expert's share of the assignments


@dataclass
class PrecisionConfig:
    """Numeric policy. The fp32 islands apply under any policy that computes in a half type."""

    policy: PrecisionPolicy = PrecisionPolicy("fp32")  # fp32 | bf16-mixed | fp16-mixed | bf16-true
    # Router dtypes, stage by stage (Switch "selective precision", sec. 2.4: a bf16 router diverged, an fp32 one
    # did not). Each is fp32 | fp64 | bf16 | fp16 | compute (the dtype the policy computes in). param: the router
    # weight's storage, kept even under bf16-true; logits: the projection; scores: softmax/sigmoid, top-k and
    # losses; combine: the weights and the weighted sum of expert outputs.
    router_param_dtype: RouterDtype = RouterDtype("fp32")
    router_logits_dtype: RouterDtype = RouterDtype("fp32")
    router_scores_dtype: RouterDtype = RouterDtype("fp32")
    router_combine_dtype: RouterDtype = RouterDtype("fp32")
    fp32_softmax: bool = False  # attention scores and softmax in fp32
    fp32_loss: bool = True  # logits upcast to fp32 before the cross-entropy


@dataclass
class SourceConfig:
    """One source of a data mixture (`data.source=mixture`), keyed by its name in `data.mixture.sources`."""

    kind: SourceKind = SourceKind.embedded
    # share of the mixture's training tokens (before temperature); None: its size
    weight: float | None = bounded(None, ge=0, hint="or null: its natural size")
    embedded_kinds: list[EmbeddedKind] = field(
        default_factory=lambda: [EmbeddedKind.code, EmbeddedKind.prose]
    )
    include_tests: bool = False
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str = "train"
    hub_streaming: bool = False
    max_docs: int | None = bounded(None, gt=0)
    generator: SyntheticTask | None = None  # synthetic: arithmetic | sorting | string
    docs: int = bounded(1000, ge=1)  # synthetic / inject / teacher: documents to make
    base: str | None = None  # inject: the source whose documents are copied and corrupted
    checkpoints: list[str] = field(default_factory=list)  # teacher: one per generation, oldest first
    mode: TeacherMode = TeacherMode.replace  # teacher: replace (last generation) | accumulate (every one)
    params: dict[str, Any] = field(default_factory=dict)  # generator / inject / teacher settings
    seed: int = 0
    filter: bool = True  # false: this source bypasses the filters (a trusted or held-out source)


@dataclass
class MixtureConfig:
    """Sources, filters and token-based mixing (README "Data mixtures")."""

    sources: dict[str, SourceConfig] = hinted(
        "sources are keyed by name: data.mixture.sources.<name>.<key>=<value>", default_factory=dict
    )
    # Filters by name: {<name>: {<param>: value, ...}}; `type` defaults to the name (give it to use one filter
    # type twice), `enabled: false` turns one off. Applied in `order`, or in the order listed when it is empty.
    filters: dict[str, dict[str, Any]] = hinted(
        "filters are addressed by name: data.mixture.filters.<name>.<param>=<value>", default_factory=dict
    )
    order: list[str] = field(default_factory=list)
    # exact training tokens of the mixture; None: every kept training token once
    tokens: int | None = bounded(None, ge=1, hint="or null: every kept token once")
    # p_source ~ weight^(1/T): T > 1 flattens towards uniform (XLM, Conneau & Lample 2019)
    temperature: float = bounded(1.0, gt=0)
    # held-out set: these sources' unfiltered validation split; empty: every source's validation split after
    # filtering
    validation: list[str] = field(default_factory=list)
    workers: int = bounded(1, ge=1)  # processes computing signals (results are identical for any number)
    max_doc_bytes: int = bounded(10_000_000, ge=1)  # larger documents are dropped as input:too_large
    samples_per_rule: int = bounded(3, ge=0)  # dropped documents shown per rule in the report
    chunk_docs: int = bounded(256, ge=1)  # documents per signal task


@dataclass
class DataConfig:
    """Where documents come from, how they are split, tokenized and packed."""

    source: DataSourceKind = DataSourceKind.embedded  # embedded | files | hub | mixture
    # embedded: which Python-shipped corpora to include ("code": stdlib source, "prose": pydoc topics + docstrings)
    embedded_kinds: list[EmbeddedKind] = field(
        default_factory=lambda: [EmbeddedKind.code, EmbeddedKind.prose]
    )
    include_tests: bool = False  # embedded: also the stdlib's own test suites (several times larger)
    paths: list[str] = field(default_factory=list)  # files: local .jsonl / .json / .parquet / .txt or globs
    text_field: str = "text"  # files/hub: column holding the document text
    hub_id: str | None = None  # hub: a Hugging Face dataset id
    hub_config: str | None = None
    hub_split: str = "train"
    hub_streaming: bool = False
    max_docs: int | None = bounded(None, gt=0)  # cap on documents (after a stable ordering), for quick runs
    # share of documents in validation, by a stable hash of the document id
    val_fraction: float = bounded(0.05, gt=0, lt=1)
    split_salt: str = "workbench"  # changes which documents land in validation, deterministically
    tokenizer: TokenizerKind = TokenizerKind.byte  # byte | bpe
    bpe_vocab_size: int = bounded(4096, gt=257, hint="256 byte symbols + end-of-text")
    seq_len: int = bounded(256, ge=2)
    batch_size: int = bounded(16, gt=0)
    num_workers: int = bounded(0, ge=0)
    cache_dir: str = ".cache/workbench"
    mixture: MixtureConfig = field(default_factory=MixtureConfig)  # data.source=mixture


@dataclass
class TrainerConfig:
    """Optimisation and loop settings (the recipe; sizes of the run live in `budget`)."""

    lr: float = bounded(3e-3, gt=0)
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = bounded(50, ge=0)
    weight_decay: float = bounded(0.1, ge=0)
    beta1: float = bounded(0.9, ge=0, lt=1)
    beta2: float = bounded(0.95, ge=0, lt=1)
    grad_clip: float = bounded(1.0, ge=0)  # max global grad norm; 0 disables
    accelerator: Accelerator = Accelerator.auto  # auto | cpu | gpu | cuda
    devices: int = bounded(1, gt=0)
    val_every_n_steps: int = bounded(100, gt=0)
    val_batches: int = bounded(16, gt=0)  # validation batches per evaluation (the same ones every time)
    log_every_n_steps: int = bounded(10, gt=0)
    checkpoint_every_n_steps: int = bounded(0, ge=0)  # 0: only the final checkpoint
    num_threads: int | None = bounded(
        None, gt=0
    )  # torch intra-op threads on CPU; None leaves torch's default
    progress_bar: bool = True
    compile: bool = False  # torch.compile the network


@dataclass
class BudgetConfig:
    """How much the run may spend. Unset limits are ignored; the run stops when the first set one is spent."""

    steps: int | None = bounded(None, gt=0, hint="or null")
    tokens: int | None = bounded(None, gt=0, hint="or null")
    flops: float | None = bounded(None, gt=0, hint="or null")  # analytic training FLOPs (README "Cost")
    usd: float | None = bounded(None, gt=0, hint="or null")  # money at cost.usd_per_hour * devices


@dataclass
class CostConfig:
    """Hardware whose peak and price turn measured time into MFU, device-hours and money."""

    hardware: HardwareName = HardwareName.cpu  # a row of workbench.cost.hardware.HARDWARE
    # per device; None: the table's value for the compute dtype (cpu: measured)
    peak_flops: float | None = bounded(None, gt=0, hint="or null")
    usd_per_hour: float | None = bounded(None, ge=0, hint="or null")  # per device; None: the table's value


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    enabled: bool = True
    # None: $MLFLOW_TRACKING_URI if set, else a SQLite store `mlflow.db` in the project root
    tracking_uri: str | None = None
    experiment_name: str = "workbench"
    run_name: str | None = None  # None: the preset and what differs from it, "moe_top2 capacity_factor=1"
    log_checkpoints: bool = False  # also upload checkpoints as MLflow artifacts
    log_model: bool = False  # log the final network with mlflow.pytorch (the run's Models / "model" artifact)
    # CPU, memory, disk, network (and GPU where present) as system/* metrics, the UI's System metrics tab
    system_metrics: bool = True
    system_metrics_interval: float = bounded(10.0, gt=0)  # seconds between samples


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
