"""Cross-field rules, run before any work. Each failure is one line that names the key and what is allowed."""

from __future__ import annotations

import dataclasses
import re
import typing

from omegaconf.errors import OmegaConfBaseException

from workbench.config.schema import DataConfig, TrainConfig
from workbench.cost.hardware import HARDWARE
from workbench.models.moe.dispatch import DROP_POLICIES
from workbench.models.moe.experts import BACKENDS
from workbench.models.moe.router import DTYPE_CHOICES, ROUTERS


class ConfigError(ValueError):
    """A config value that cannot run; the message is one line naming the key."""


POLICIES = ("fp32", "bf16-mixed", "fp16-mixed", "bf16-true")
FFN_KINDS = ("dense", "moe")
SOURCES = ("embedded", "files", "hub", "mixture")
TOKENIZERS = ("byte", "bpe")
EMBEDDED_KINDS = ("code", "prose")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
ROUTER_TYPES = tuple(ROUTERS)
SCORES = ("softmax", "sigmoid")
GROUP_SCORES = ("max", "top2_sum")
BIAS_UPDATES = ("sign", "proportional")


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(
    key: str, value: float | int | None, allow_none: bool = False, allow_zero: bool = False
) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} must be {bound}" + (" (or null)" if allow_none else ""))


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError on the first inconsistent value."""
    m, p, d, t, b, c = cfg.model, cfg.precision, cfg.data, cfg.trainer, cfg.budget, cfg.cost

    _choice("model.ffn", m.ffn, FFN_KINDS)
    for key in ("d_model", "n_layers", "n_heads", "d_ff", "moe_every"):
        _positive(f"model.{key}", getattr(m, key))
    _positive("model.vocab_size", m.vocab_size, allow_none=True)
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
            f"allowed n_heads: {', '.join(str(h) for h in range(1, m.d_model + 1) if m.d_model % h == 0 and (m.d_model // h) % 2 == 0)}"
        )
    if (m.d_model // m.n_heads) % 2:
        raise ConfigError(
            f"model.d_model/model.n_heads={m.d_model // m.n_heads} must be even (rotary embeddings rotate pairs)"
        )
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout={m.dropout} must be in [0, 1)")
    _positive("model.init_std", m.init_std)

    if m.ffn == "moe":
        validate_moe(cfg)

    _choice("precision.policy", p.policy, POLICIES)
    for stage in ("param", "logits", "scores", "combine"):
        _choice(f"precision.router_{stage}_dtype", getattr(p, f"router_{stage}_dtype"), DTYPE_CHOICES)

    validate_data(d)

    _positive("trainer.lr", t.lr)
    if not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"trainer.min_lr_ratio={t.min_lr_ratio} must be in [0, 1]")
    _positive("trainer.warmup_steps", t.warmup_steps, allow_zero=True)
    _positive("trainer.weight_decay", t.weight_decay, allow_zero=True)
    _positive("trainer.grad_clip", t.grad_clip, allow_zero=True)
    for key in ("val_every_n_steps", "val_batches", "log_every_n_steps", "devices"):
        _positive(f"trainer.{key}", getattr(t, key))
    _positive("trainer.checkpoint_every_n_steps", t.checkpoint_every_n_steps, allow_zero=True)
    _positive("trainer.num_threads", t.num_threads, allow_none=True)
    _choice("trainer.accelerator", t.accelerator, ACCELERATORS)

    limits = {"steps": b.steps, "tokens": b.tokens, "flops": b.flops, "usd": b.usd}
    if all(v is None for v in limits.values()):
        raise ConfigError(
            "budget: no limit set; set at least one of budget.steps, budget.tokens, budget.flops, budget.usd"
        )
    for key, value in limits.items():
        _positive(f"budget.{key}", value, allow_none=True)

    _choice("cost.hardware", c.hardware, tuple(HARDWARE))
    _positive("cost.peak_flops", c.peak_flops, allow_none=True)
    _positive("cost.usd_per_hour", c.usd_per_hour, allow_none=True, allow_zero=True)
    if c.hardware != "cpu" and t.accelerator == "cpu":
        raise ConfigError(
            f"cost.hardware={c.hardware} with trainer.accelerator=cpu: MFU would use a GPU peak for a CPU run"
        )


def validate_moe(cfg: TrainConfig) -> None:
    """The MoE slice's rules (checked when model.ffn=moe)."""
    m, moe, r = cfg.model, cfg.moe, cfg.moe.router
    for key in ("num_experts", "top_k", "segmentation"):
        _positive(f"moe.{key}", getattr(moe, key))
    _positive("moe.num_shared_experts", moe.num_shared_experts, allow_zero=True)
    if moe.top_k > moe.num_experts:
        raise ConfigError(
            f"moe.top_k={moe.top_k} > moe.num_experts={moe.num_experts}; top_k must be in 1..{moe.num_experts}"
        )
    _positive("moe.expert_hidden", moe.expert_hidden, allow_none=True)
    coarse = moe.expert_hidden if moe.expert_hidden is not None else m.d_ff // moe.top_k
    if coarse < moe.segmentation or coarse % moe.segmentation:
        raise ConfigError(
            f"moe.segmentation={moe.segmentation} must divide the expert width {coarse} "
            f"(moe.expert_hidden, or model.d_ff // moe.top_k when null)"
        )
    routed_k = moe.top_k * moe.segmentation - moe.num_shared_experts
    if routed_k < 1:
        raise ConfigError(
            f"moe.num_shared_experts={moe.num_shared_experts} leaves no routed expert: it must be < "
            f"moe.top_k * moe.segmentation = {moe.top_k * moe.segmentation}"
        )
    experts = moe.num_experts * moe.segmentation
    if moe.capacity_factor <= 0:
        raise ConfigError(
            f"moe.capacity_factor={moe.capacity_factor} must be > 0 (use moe.dropless=true for no capacity limit)"
        )
    _positive("moe.eval_capacity_factor", moe.eval_capacity_factor, allow_none=True)
    _choice("moe.drop_policy", moe.drop_policy, DROP_POLICIES)
    _choice("moe.experts_backend", moe.experts_backend, BACKENDS)
    for key in (
        "aux_loss_weight",
        "seq_aux_loss_weight",
        "global_aux_loss_weight",
        "z_loss_weight",
        "device_loss_weight",
    ):
        _positive(f"moe.{key}", getattr(moe, key), allow_zero=True)
    _positive("moe.stats_every_n_steps", moe.stats_every_n_steps, allow_none=True)

    _choice("moe.router.type", r.type, ROUTER_TYPES)
    _choice("moe.router.score", r.score, SCORES)
    _choice("moe.router.group_score", r.group_score, GROUP_SCORES)
    _choice("moe.router.bias_update", r.bias_update, BIAS_UPDATES)
    _positive("moe.router.route_scale", r.route_scale)
    _positive("moe.router.bias_update_rate", r.bias_update_rate, allow_zero=True)
    if not 0 <= r.jitter_eps < 1:
        raise ConfigError(f"moe.router.jitter_eps={r.jitter_eps} must be in [0, 1)")
    if r.type == "switch" and routed_k != 1:
        raise ConfigError(
            f"moe.router.type=switch routes to 1 expert; got {routed_k} routed experts per token (moe.top_k)"
        )
    if r.softmax_after_topk and r.score != "softmax":
        raise ConfigError("moe.router.softmax_after_topk=true needs moe.router.score=softmax")
    if r.type in ("noisy_topk", "expert_choice") and r.score != "softmax":
        raise ConfigError(
            f"moe.router.score={r.score!r} with moe.router.type={r.type}: only softmax is allowed"
        )
    if r.type in ("expert_choice", "hash", "random"):
        for key, off in (("bias_update_rate", 0.0), ("num_groups", 1), ("jitter_eps", 0.0)):
            if getattr(r, key) != off:
                raise ConfigError(
                    f"moe.router.{key}={getattr(r, key)} does not apply to moe.router.type={r.type}; set it to {off}"
                )
    if r.type == "expert_choice":
        if moe.dropless:
            raise ConfigError(
                "moe.dropless=true with moe.router.type=expert_choice: each expert always takes "
                "C = T*top_k/E*capacity_factor tokens; set moe.dropless=false"
            )
        if moe.seq_aux_loss_weight > 0:
            raise ConfigError("moe.seq_aux_loss_weight > 0 needs a token-choice router (not expert_choice)")
    _positive("moe.router.num_groups", r.num_groups)
    if experts % r.num_groups:
        raise ConfigError(
            f"moe.router.num_groups={r.num_groups} must divide the {experts} routed experts "
            f"(moe.num_experts * moe.segmentation)"
        )
    if r.group_top_k is not None:
        if not 1 <= r.group_top_k <= r.num_groups:
            raise ConfigError(
                f"moe.router.group_top_k={r.group_top_k} must be in 1..moe.router.num_groups={r.num_groups}"
            )
        if r.group_top_k * (experts // r.num_groups) < routed_k:
            raise ConfigError(
                f"moe.router.group_top_k={r.group_top_k} groups of {experts // r.num_groups} experts cannot hold "
                f"the {routed_k} experts each token picks"
            )
    if moe.device_loss_weight > 0:
        groups = moe.device_groups or r.num_groups
        if groups < 2 or experts % groups:
            raise ConfigError(
                f"moe.device_loss_weight > 0 needs moe.device_groups (or moe.router.num_groups) >= 2 dividing "
                f"the {experts} routed experts; got {groups}"
            )
    elif moe.device_groups is not None:
        _positive("moe.device_groups", moe.device_groups)


def validate_data(d: DataConfig) -> None:
    """The data slice's rules; the datamodule runs them too, for callers that skip `validate`."""
    _choice("data.source", d.source, SOURCES)
    _choice("data.tokenizer", d.tokenizer, TOKENIZERS)
    if d.source == "embedded":
        if not d.embedded_kinds:
            raise ConfigError(f"data.embedded_kinds is empty; choose from: {', '.join(EMBEDDED_KINDS)}")
        for kind in d.embedded_kinds:
            _choice("data.embedded_kinds", kind, EMBEDDED_KINDS)
    if d.source == "files" and not d.paths:
        raise ConfigError(
            "data.paths is empty; data.source=files needs at least one .jsonl/.json/.parquet/.txt path"
        )
    if d.source == "hub" and not d.hub_id:
        raise ConfigError("data.hub_id is not set; data.source=hub needs a Hugging Face dataset id")
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={d.val_fraction} must be in (0, 1)")
    if d.seq_len < 2:
        raise ConfigError(f"data.seq_len={d.seq_len} must be >= 2")
    _positive("data.batch_size", d.batch_size)
    _positive("data.max_docs", d.max_docs, allow_none=True)
    _positive("data.num_workers", d.num_workers, allow_zero=True)
    if d.source == "mixture":
        from workbench.data.mixture import validate_mixture  # the filters' own checks, before any work

        validate_mixture(d)
    if d.tokenizer == "bpe" and d.bpe_vocab_size <= 257:
        raise ConfigError(
            f"data.bpe_vocab_size={d.bpe_vocab_size} must be > 257 (256 byte symbols + end-of-text)"
        )


# ---- one-line messages for errors raised while Hydra composes -------------------------------------------


def _schema_at(path: str) -> type | None:
    """The dataclass typing the node at a dotted path of the root config, if any."""
    node: type | None = TrainConfig
    for part in [p for p in path.split(".") if p]:
        if node is None or not dataclasses.is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        node = hints[part] if dataclasses.is_dataclass(hints[part]) else None
    return node


def _field_type(full_key: str) -> str | None:
    parent, _, leaf = full_key.rpartition(".")
    schema = _schema_at(parent)
    if schema is None:
        return None
    hint = typing.get_type_hints(schema).get(leaf)
    if hint is None:
        return None
    return re.sub(r"\btyping\.", "", getattr(hint, "__name__", None) or str(hint)).replace("NoneType", "None")


def compose_error_message(exc: BaseException) -> str:
    """Turn a Hydra/OmegaConf composition error into one line that names the key and what is allowed."""
    text = str(exc)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], flags=re.M)
        return f"{group}={option}: no such option; available: {', '.join(options) or '(none)'}"
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    full_key = getattr(cause, "full_key", None)
    first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if full_key:
        if "not in" in first or type(cause).__name__ in ("ConfigAttributeError", "ConfigKeyError"):
            parent = full_key.rpartition(".")[0]
            schema = _schema_at(parent)
            allowed = ", ".join(f.name for f in dataclasses.fields(schema)) if schema else "(see the schema)"
            where = parent or "the root config"
            return f"{full_key}: unknown key; keys allowed in {where}: {allowed}"
        expected = _field_type(full_key)
        return f"{full_key}: {first}" + (f"; expected {expected}" if expected else "")
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
