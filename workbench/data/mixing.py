"""Mixing by tokens: each source's quota of the training tokens, and the token stream that fills them exactly.

`plan_mixture` turns source weights and a temperature into per-source token quotas that sum to the budget;
`mixture_tokens` fills each quota with whole documents in a seeded order per epoch (the last cut at the quota)
and interleaves the sources, recording how many epochs of each source that is.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from workbench.config.schema import MixtureConfig


def plan_mixture(m: MixtureConfig, available: dict[str, int]) -> dict[str, dict[str, float]]:
    """Training tokens per source: p_s ~ w_s^(1/T) (w_s = weight, or the source's share of kept tokens when
    null; temperature sampling as in XLM, Conneau & Lample 2019), scaled to `m.tokens` (default: every kept
    token once) with largest-remainder rounding so the quotas sum to the budget exactly."""
    total = sum(available.values())
    weights = {}
    for name, s in m.sources.items():
        if name not in available or available[name] == 0:
            continue
        w = s.weight if s.weight is not None else available[name] / max(total, 1)
        if w > 0:
            weights[name] = w ** (1.0 / m.temperature)
    z = sum(weights.values())
    budget = m.tokens if m.tokens is not None else total
    raw = {name: budget * w / z for name, w in weights.items()}
    quota = {name: math.floor(v) for name, v in raw.items()}
    for name in sorted(raw, key=lambda k: (-(raw[k] - quota[k]), k))[: budget - sum(quota.values())]:
        quota[name] += 1
    return {
        name: {
            "share": weights[name] / z,
            "tokens": quota[name],
            "available": available[name],
            "epochs": quota[name] / available[name],
        }
        for name in weights
    }


def _permutation(n: int, name: str, epoch: int, seed: int) -> np.ndarray:
    digest = hashlib.blake2b(f"{seed}:{name}:{epoch}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little")).permutation(n)


def mixture_tokens(
    encoded_by_source: dict[str, list[np.ndarray]], plan: dict, seed: int, eos: int, dtype
) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Exactly `plan[s]["tokens"]` tokens of each source (documents + end-of-text, in a seeded order per epoch;
    the last document of a source is cut at its quota), sources interleaved; returns the tokens and what was
    used (tokens, epochs, documents) per source."""
    pieces: dict[str, list[np.ndarray]] = {}
    used: dict[str, dict[str, float]] = {}
    for name, p in plan.items():
        encoded = [np.append(t.astype(dtype), np.array([eos], dtype=dtype)) for t in encoded_by_source[name]]
        available = sum(len(e) for e in encoded)
        need, out, epoch, ndocs = int(p["tokens"]), [], 0, 0
        while need > 0:
            for k in _permutation(len(encoded), name, epoch, seed):
                e = encoded[k] if len(encoded[k]) <= need else encoded[k][:need]
                out.append(e)
                need -= len(e)
                ndocs += 1
                if need == 0:
                    break
            epoch += 1
        pieces[name] = out
        used[name] = {
            "tokens": int(p["tokens"]),
            "epochs": p["tokens"] / max(available, 1),
            "documents": ndocs,
        }
    # interleave sources document by document in proportion, so every stretch of the stream is a mixture
    stream: list[np.ndarray] = []
    cursors = {name: 0 for name in pieces}
    progress = {name: 0.0 for name in pieces}
    while cursors:
        name = min(cursors, key=lambda k: (progress[k], k))
        seq = pieces[name]
        stream.append(seq[cursors[name]])
        cursors[name] += 1
        progress[name] = cursors[name] / len(seq)
        if cursors[name] == len(seq):
            del cursors[name]
    tokens = np.concatenate(stream) if stream else np.zeros(0, dtype=dtype)
    return tokens, used
