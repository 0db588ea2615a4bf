"""A teacher source: documents sampled from a trained workbench checkpoint, filtered and tagged as synthetic.

``sample_documents(checkpoint, n_docs, seed)`` loads the network from the Lightning checkpoint the runner
writes (``state_dict`` keys prefixed ``network.``; the resolved config and the tokenizer folder are in
``checkpoint["workbench"]``), samples autoregressively on the CPU, drops empty, too short and mostly repeated
samples (counted by reason) and keeps sampling until ``n_docs`` are kept or ``max_tries * n_docs`` samples were
drawn. ``teacher_generations`` chains checkpoints for model-collapse studies: ``replace`` trains the next
generation on the last generation's samples only (Shumailov et al. 2024), ``accumulate`` keeps every
generation's samples (Gerstgrasser et al. 2024).

Sampling is deterministic: one ``torch.Generator`` seeded from (seed, generation) by BLAKE2b, fixed batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from workbench.config.choices import TeacherMode
from workbench.config.params import bounded, choices, key_of, not_allowed, parse
from workbench.config.schema import ModelConfig, MoEConfig, PrecisionConfig
from workbench.data.corpus import Doc
from workbench.data.synthetic import SyntheticDocs
from workbench.data.tokenizer import ByteTokenizer, load_tokenizer

DROP_REASONS = ("empty", "too_short", "repetitive")


@dataclass
class TeacherParams:
    """How a teacher samples, and which samples it keeps (`params` of a teacher source)."""

    temperature: float = bounded(1.0, ge=0)  # 0: greedy
    top_k: int | None = bounded(50, ge=0)  # 0 or None: the whole vocabulary
    max_new_tokens: int = bounded(256, ge=1)
    # sample i continues prompts[i % len(prompts)]; empty: every sample starts from EOS alone
    prompts: list[str] = field(default_factory=list)
    include_prompt: bool = True  # the document is prompt + continuation (the filters judge the continuation)
    batch_size: int = bounded(8, ge=1)
    min_chars: int = bounded(32, ge=0)
    # drop when more than this share of the character n-grams repeat an earlier one
    max_repeat: float = bounded(0.5, ge=0, le=1)
    repeat_ngram: int = bounded(10, ge=1)
    max_tries: int = bounded(4, ge=1)  # at most max_tries * n_docs samples are drawn


@dataclass
class Teacher:
    """A network ready for sampling, its tokenizer, and the context length it was trained with."""

    network: torch.nn.Module
    tokenizer: Any
    context: int
    config: dict[str, Any]


def _check_file(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"teacher checkpoint {checkpoint} does not exist")
    return path


def _typed(schema: type, tree: dict[str, Any]) -> Any:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), tree))


def load_teacher(checkpoint: str | Path) -> Teacher:
    """The network, tokenizer and context length of a checkpoint written by ``workbench.run``."""
    from workbench.models import build_model

    path = _check_file(checkpoint)
    # weights_only: a checkpoint named in a mixture YAML is an untrusted file and must not run code
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"teacher checkpoint {checkpoint} is not a loadable workbench checkpoint ({first})"
        ) from exc
    meta = ckpt.get("workbench") or {}
    tree = meta.get("config")
    if tree is None:
        raise ValueError(
            f"teacher checkpoint {checkpoint} has no workbench config (written by an older runner)"
        )
    network = build_model(
        _typed(ModelConfig, tree["model"]),
        _typed(MoEConfig, tree["moe"]),
        _typed(PrecisionConfig, tree["precision"]),
    )
    state = {}
    for key, value in ckpt["state_dict"].items():
        if key.startswith("network."):
            state[key.removeprefix("network.").replace("_orig_mod.", "", 1)] = value
    network.load_state_dict(state)
    network.eval()
    folders = [Path(meta["tokenizer_dir"])] if meta.get("tokenizer_dir") else []
    folders.append(path.parent.parent / "tokenizer")  # <output_dir>/checkpoints/x.ckpt, moved with its run
    for folder in folders:
        if folder.is_dir():
            tokenizer = load_tokenizer(folder)
            break
    else:
        if tree["data"]["tokenizer"] != "byte":
            raise ValueError(f"teacher checkpoint {checkpoint}: tokenizer folder {folders[0]} not found")
        tokenizer = ByteTokenizer()
    return Teacher(network, tokenizer, int(tree["data"]["seq_len"]), tree)


def resolve_teacher_params(params: Mapping[str, Any] | None, where: str = "teacher") -> dict[str, Any]:
    """TeacherParams' defaults updated by ``params`` (checked by `workbench.config.params.parse`), as a plain
    dict; an unknown key or a bad value is a one-line ConfigError naming ``<where>.<key>``."""
    p = dataclasses.asdict(parse(TeacherParams, params, where))
    p["top_k"] = p["top_k"] or 0
    return p


def repeated_fraction(text: str, n: int) -> float:
    """Share of the character ``n``-grams of ``text`` that repeat an earlier one (0 for fewer than 2)."""
    total = len(text) - n + 1
    if total < 2:
        return 0.0
    return 1.0 - len({text[i : i + n] for i in range(total)}) / total


def drop_reason(text: str, p: dict[str, Any]) -> str:
    """Why a generated continuation is not kept ("" keeps it)."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if len(stripped) < p["min_chars"]:
        return "too_short"
    if repeated_fraction(stripped, p["repeat_ngram"]) > p["max_repeat"]:
        return "repetitive"
    return ""


@torch.no_grad()
def sample_tokens(
    teacher: Teacher,
    prompt: list[int],
    n: int,
    p: dict[str, Any],
    generator: torch.Generator,
) -> list[list[int]]:
    """``n`` continuations of ``prompt`` (token ids, EOS first), each cut at its first EOS."""
    eos = teacher.tokenizer.eos_id
    vocab = teacher.tokenizer.vocab_size  # the model's vocabulary may be larger; those ids are never sampled
    idx_BT = torch.tensor([prompt] * n, dtype=torch.long)
    done_B = torch.zeros(n, dtype=torch.bool)
    new: list[torch.Tensor] = []
    for _ in range(p["max_new_tokens"]):
        logits_BV = teacher.network(idx_BT[:, -teacher.context :])[0][:, -1, :vocab].float()
        if p["temperature"] == 0:
            next_B = logits_BV.argmax(dim=-1)
        else:
            logits_BV = logits_BV / p["temperature"]
            if 0 < p["top_k"] < vocab:
                kth_B1 = torch.topk(logits_BV, p["top_k"], dim=-1).values[:, -1:]
                logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
            next_B = torch.multinomial(torch.softmax(logits_BV, dim=-1), 1, generator=generator).squeeze(1)
        next_B = torch.where(done_B, torch.full_like(next_B, eos), next_B)
        new.append(next_B)
        done_B |= next_B == eos
        idx_BT = torch.cat([idx_BT, next_B[:, None]], dim=1)
        if bool(done_B.all()):
            break
    out = []
    for row in torch.stack(new, dim=1).tolist():
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


def _generator(seed: int, generation: int) -> torch.Generator:
    digest = hashlib.blake2b(f"teacher:{seed}:{generation}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "big") >> 1)


def sample_documents(
    checkpoint: str,
    n_docs: int,
    seed: int,
    params: Mapping[str, Any] | None = None,
    generation: int = 1,
    source: str = "teacher",
    where: str = "teacher",
) -> SyntheticDocs:
    """Up to ``n_docs`` filtered samples of ``checkpoint``; ``counts`` has sampled, kept and each drop reason.

    Ids are f"{source}:gen{generation}:{i:06d}" (i counts kept documents), paths f"synthetic:teacher:gen{g}".
    """
    p = resolve_teacher_params(params, where)
    _check_file(checkpoint)
    teacher = load_teacher(checkpoint)
    tok = teacher.tokenizer
    prompts = [str(x) for x in p["prompts"]] or [""]
    prompt_ids = [[tok.eos_id, *tok.encode(text).tolist()] for text in prompts]
    generator = _generator(seed, generation)
    counts = {"sampled": 0, "kept": 0, **{reason: 0 for reason in DROP_REASONS}}
    docs: list[Doc] = []
    limit = p["max_tries"] * n_docs
    while len(docs) < n_docs and counts["sampled"] < limit:
        # the next sample indices, no more than still needed; grouped by prompt, in prompt order
        first = counts["sampled"]
        batch = range(first, first + min(p["batch_size"], n_docs - len(docs), limit - first))
        texts: dict[int, tuple[str, str]] = {}
        for k, prompt in enumerate(prompts):
            members = [j for j in batch if j % len(prompts) == k]
            if members:
                rows = sample_tokens(teacher, prompt_ids[k], len(members), p, generator)
                for j, row in zip(members, rows, strict=True):
                    texts[j] = (prompt, tok.decode(row))
        for j in batch:
            prompt, continuation = texts[j]
            counts["sampled"] += 1
            reason = drop_reason(continuation, p)
            if reason:
                counts[reason] += 1
                continue
            text = prompt + continuation if p["include_prompt"] else continuation
            i = len(docs)
            docs.append(
                Doc(f"{source}:gen{generation}:{i:06d}", source, f"synthetic:teacher:gen{generation}", text)
            )
    counts["kept"] = len(docs)
    return SyntheticDocs(docs, counts)


def teacher_generations(
    checkpoints: list[str],
    n_docs: int,
    seed: int,
    mode: str = "replace",
    params: Mapping[str, Any] | None = None,
    source: str = "teacher",
    where: str = "teacher",
) -> SyntheticDocs:
    """Samples of a chain of checkpoints, oldest first (checkpoint k is generation k + 1).

    replace: ``n_docs`` from the last checkpoint only (generation ``len(checkpoints)``); accumulate: ``n_docs``
    from every generation, all kept. ``counts`` keys are f"gen{g}/{key}" for each sampled generation.
    """
    if mode not in set(choices(TeacherMode)):
        raise not_allowed(key_of(where, "mode"), mode, choices(TeacherMode))
    if not checkpoints:
        raise ValueError("teacher: checkpoints is empty; give one checkpoint per generation")
    for checkpoint in checkpoints:
        _check_file(checkpoint)
    resolve_teacher_params(params, key_of(where, "params"))
    chosen = list(enumerate(checkpoints, start=1))
    if mode == "replace":
        chosen = chosen[-1:]
    out = SyntheticDocs()
    for generation, checkpoint in chosen:
        docs = sample_documents(
            checkpoint,
            n_docs,
            seed,
            params,
            generation=generation,
            source=source,
            where=key_of(where, "params"),
        )
        out.extend(docs)
        out.counts.update({f"gen{generation}/{k}": v for k, v in docs.counts.items()})
    return out
