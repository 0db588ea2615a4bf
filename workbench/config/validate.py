"""Cross-field rules, run before any work. Each failure is one line that names the key and what is allowed."""

from __future__ import annotations

import dataclasses
import re
import typing

from omegaconf.errors import OmegaConfBaseException

from workbench.config.schema import DataConfig, TrainConfig
from workbench.cost.hardware import HARDWARE


class ConfigError(ValueError):
    """A config value that cannot run; the message is one line naming the key."""


POLICIES = ("fp32", "bf16-mixed", "fp16-mixed", "bf16-true")
FFN_KINDS = ("dense", "moe")
SOURCES = ("embedded", "files", "hub")
TOKENIZERS = ("byte", "bpe")
EMBEDDED_KINDS = ("code", "prose")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


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
    m, moe, p, d, t, b, c = cfg.model, cfg.moe, cfg.precision, cfg.data, cfg.trainer, cfg.budget, cfg.cost

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

    _positive("moe.num_experts", moe.num_experts)
    _positive("moe.top_k", moe.top_k)
    if moe.top_k > moe.num_experts:
        raise ConfigError(
            f"moe.top_k={moe.top_k} > moe.num_experts={moe.num_experts}; top_k must be in 1..{moe.num_experts}"
        )
    if moe.capacity_factor <= 0:
        raise ConfigError(
            f"moe.capacity_factor={moe.capacity_factor} must be > 0 (use moe.dropless=true for no capacity limit)"
        )
    _positive("moe.expert_hidden", moe.expert_hidden, allow_none=True)
    if moe.expert_hidden is None and m.d_ff < moe.top_k:
        raise ConfigError(
            f"moe.expert_hidden=null needs model.d_ff >= moe.top_k (d_ff // top_k), got d_ff={m.d_ff}"
        )
    _positive("moe.aux_loss_weight", moe.aux_loss_weight, allow_zero=True)
    _positive("moe.z_loss_weight", moe.z_loss_weight, allow_zero=True)

    _choice("precision.policy", p.policy, POLICIES)

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
