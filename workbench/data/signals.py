"""Filter signals, computed once: the signal-column cache, the prepared-state cache and the worker pool.

A filter's signal columns for one source are cached under `<cache>/signals/` keyed by (the source's content,
the filter's `signal_spec()`), so a threshold change re-decides from the cache. They are computed in chunks of
documents, in `workers` forked processes when asked; chunks come back in order, so any worker count gives the
same columns. A filter that learns (`training_sources()`) keeps what `prepare` learned under `<cache>/prepared/`
as arrays and JSON in one `.npz` (never pickle: a cache file is data, not code), keyed by the contents of the
sources it learns from, so a threshold sweep never trains twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from workbench.data.corpus import spec_key
from workbench.data.filters.base import Filter, concat_columns

PREPARED_FORMAT = 2  # 2: arrays + JSON in an .npz (1 was a pickle)
META = "__meta__"  # the .npz entry holding a prepared state's JSON, as UTF-8 bytes


def _score_chunk(args: tuple[Filter, list[str]]) -> dict[str, np.ndarray]:
    filt, texts = args
    return filt.signals(texts)


def signal_columns(
    filt: Filter,
    texts: Sequence[str],
    content_key: str,
    cache_root: Path,
    workers: int,
    chunk: int,
    bar=None,
) -> tuple[dict[str, np.ndarray], bool]:
    """A filter's signal columns for every text of a source (whose content key is given): from the cache, or
    computed and cached. Returns (columns, whether they came from the cache)."""
    key = spec_key({"source": content_key, **filt.signal_spec()})
    path = cache_root / "signals" / key[:2] / f"{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if bar is not None:
                bar.update(len(texts))
            return {k: z[k] for k in z.files}, True
    chunks = [list(texts[i : i + chunk]) for i in range(0, len(texts), chunk)]
    parts: list[dict[str, np.ndarray]] = []
    if workers > 1 and len(chunks) > 1:
        # fork: workers inherit the trained filter state; chunks come back in order, so any worker count
        # gives the same columns
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
            for part, batch in zip(pool.map(_score_chunk, [(filt, c) for c in chunks]), chunks, strict=True):
                parts.append(part)
                if bar is not None:
                    bar.update(len(batch))
    else:
        for batch in chunks:
            parts.append(filt.signals(batch))
            if bar is not None:
                bar.update(len(batch))
    columns = concat_columns(parts) if parts else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{time.monotonic_ns()}.npz")
    np.savez(tmp, **columns)
    tmp.replace(path)
    return columns, False


def take(columns: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `idx` of signal columns (ragged `.flat`/`.offsets` pairs included)."""
    out: dict[str, np.ndarray] = {}
    for key, arr in columns.items():
        if key.endswith(".flat"):
            continue
        if key.endswith(".offsets"):
            base = key[: -len(".offsets")]
            flat = columns[f"{base}.flat"]
            starts, ends = arr[idx], arr[idx + 1]
            lengths = ends - starts
            offsets = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            gather = (
                np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
                if len(idx)
                else []
            )
            out[f"{base}.flat"] = flat[np.asarray(gather, dtype=np.int64)]
            out[key] = offsets
        else:
            out[key] = arr[idx]
    return out


def prepare(
    filt: Filter, source_texts: Callable[[str], list[str]], content: Mapping[str, str], root: Path
) -> bool:
    """Run `filt.prepare`, or restore its state from `<cache>/prepared/` when the sources it learns from and its
    signal settings are unchanged (a threshold sweep never retrains the quality classifier). Returns whether
    the state came from the cache."""
    names = filt.training_sources()
    if not names:
        filt.prepare(source_texts)
        return False
    for name in names:
        if name not in content:
            raise ValueError(
                f"it learns from source {name!r}, which is not in the mixture ({', '.join(content)})"
            )
    key = spec_key(
        {
            "format": PREPARED_FORMAT,
            "filter": filt.name,
            "version": filt.version,
            **{k: getattr(filt.params, k) for k in filt.signal_keys},
            "sources": {n: content[n] for n in names},
        }
    )
    path = root / "prepared" / f"{key}.npz"
    if path.is_file() and _restore(filt, path):
        return True
    filt.prepare(source_texts)
    arrays, meta = filt.state()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{time.monotonic_ns()}.npz")
    np.savez(tmp, **arrays, **{META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)})
    tmp.replace(path)
    return False


def _restore(filt: Filter, path: Path) -> bool:
    """Load a prepared state without pickle; an unreadable or foreign file is ignored (the filter prepares
    again and the file is rewritten)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != META}
            meta = json.loads(z[META].tobytes().decode())
        filt.load_state(arrays, meta)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True
