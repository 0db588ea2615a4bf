"""The Lightning DataModule: corpus -> tokenizer -> packed rows of ``seq_len + 1`` tokens -> batches.

Shape legend: B batch, T sequence length (``data.seq_len``), V vocabulary.

Each split's documents are tokenized in the corpus order, joined with EOS after every document, and cut into
non-overlapping rows of T + 1 tokens (the last partial row is dropped); a row gives ``x_T = row[:-1]`` and
``y_T = row[1:]``. Rows are cached as .npy under ``<cache_root>/packed/<key>/`` and memory-mapped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from workbench.config import ConfigError
from workbench.config.schema import DataConfig
from workbench.data.corpus import Corpus, atomic_dir, build_corpus, spec_key
from workbench.data.tokenizer import BPETokenizer, ByteTokenizer, build_tokenizer
from workbench.paths import resolve_path

log = logging.getLogger(__name__)

PACKED_FORMAT = 1  # bump when packing changes, so cached rows are rebuilt
SPLITS = {"train": "train", "validation": "val"}  # corpus split name -> stats suffix


class PackedRows(Dataset):
    """Rows of T + 1 tokens in a .npy file; item i is ``(x_T, y_T)`` as LongTensors.

    The array is opened lazily, memory-mapped, in each process, so DataLoader workers share the page cache
    instead of receiving a pickled copy.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._rows: np.ndarray | None = None
        self._len = int(np.load(self.path, mmap_mode="r").shape[0])

    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = np.load(self.path, mmap_mode="r")
        return self._rows

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = torch.from_numpy(self.rows()[i].astype(np.int64))
        return row[:-1], row[1:]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rows": None}


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from ``(seed, epoch)`` alone, so the order never depends on num_workers.

    (DataLoader's own ``generator`` also feeds worker seeds, and persistent workers draw from it differently.)
    ``set_epoch`` is called by Lightning each epoch; outside Lightning every new pass advances the epoch.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def skip_next(self, samples: int) -> None:
        """Start the next pass `samples` into its permutation (a run resumed mid-epoch)."""
        self._skip = samples

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]))
        self.epoch += 1
        skip, self._skip = self._skip, 0
        yield from torch.randperm(self.n, generator=g)[skip:].tolist()


class ResumableLoader(DataLoader):
    """A training DataLoader whose position travels in Lightning checkpoints.

    Lightning stores `state_dict()` with the fit loop and calls `load_state_dict()` before iterating again,
    so a run resumed mid-epoch continues the same permutation instead of replaying its first batches.
    The position is the trainer's count of batches processed this epoch: counting batches handed out here
    would include the one Lightning prefetches but has not trained on.
    """

    def __init__(self, *args, datamodule: pl.LightningDataModule, **kwargs):
        super().__init__(*args, **kwargs)
        self._datamodule = datamodule

    def state_dict(self) -> dict[str, int]:
        trainer = self._datamodule.trainer
        # `processed`, not `completed`: a checkpoint written in on_train_batch_end (ModelCheckpoint) sees the
        # current batch processed but not yet completed.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0
        return {"batches_done": int(done), "batch_size": int(self.batch_size)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.skip_next(int(state["batches_done"]) * int(state["batch_size"]))


def pack_rows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping rows of ``seq_len + 1`` tokens; the tail that does not fill a row is dropped."""
    n_rows = len(tokens) // (seq_len + 1)
    return tokens[: n_rows * (seq_len + 1)].reshape(n_rows, seq_len + 1)


class LMDataModule(pl.LightningDataModule):
    """Corpus, tokenizer and packed batches for one ``DataConfig``; every stage is cached under ``cfg.cache_dir``.

    Usable without Hydra or a Trainer: ``dm = LMDataModule(DataConfig(max_docs=200)); dm.setup()``.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0):
        super().__init__()
        from workbench.data import validate_data

        validate_data(cfg)
        self.cfg = cfg
        self.seed = seed
        self._corpus: Corpus | None = None
        self._tokenizer: ByteTokenizer | BPETokenizer | None = None
        self._train: PackedRows | None = None
        self._val: PackedRows | None = None
        self._stats: dict[str, Any] = {}
        self._token_bytes: torch.Tensor | None = None
        self._mixture_report: dict[str, Any] | None = None

    # -------------------------------------------------------------------------------------------- building

    def prepare_data(self) -> None:
        self._ensure_built()

    def setup(self, stage: str | None = None) -> None:
        self._ensure_built()

    def _ensure_built(self) -> None:
        if self._train is not None:
            return
        cfg = self.cfg
        cache_root = resolve_path(cfg.cache_dir)
        self._mixture_report = None
        if cfg.source == "mixture":
            from workbench.data.mixture import build_mixture

            mix = build_mixture(cfg, cache_root)
            corpus, self._mixture_report = mix.corpus, mix.report
        else:
            corpus = build_corpus(cfg, cache_root)
        columns: dict[str, list[str]] = {}

        def texts_of(split: str) -> list[str]:
            if not columns:
                columns["text"] = corpus.dataset["text"][:]
                columns["split"] = corpus.dataset["split"][:]
            return [t for t, s in zip(columns["text"], columns["split"], strict=True) if s == split]

        tokenizer = build_tokenizer(cfg, lambda: texts_of("train"), cache_root, corpus.key)
        self._corpus_for_mixing = corpus.dataset
        packed_key = spec_key(
            {
                "format": PACKED_FORMAT,
                "corpus": corpus.key,
                "tokenizer": tokenizer.spec(),
                "seq_len": cfg.seq_len,
                **(self._mixing_spec() if self._mixture_report is not None else {}),
            }
        )
        folder = cache_root / "packed" / packed_key
        if not (folder / "meta.json").is_file():
            with atomic_dir(folder) as tmp:
                meta = self._pack(tokenizer, texts_of, tmp)
                (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        meta = json.loads((folder / "meta.json").read_text())

        self._corpus, self._tokenizer = corpus, tokenizer
        self._stats = {
            **{
                k: v
                for k, v in corpus.stats.items()
                if k.startswith(("docs", "bytes", "by_source", "excluded"))
            },
            **meta,
            "corpus_key": corpus.key,
            "packed_key": packed_key,
            "tokenizer": tokenizer.spec()["type"],
            "vocab_size": tokenizer.vocab_size,
        }
        self._check_sizes()
        self._train = PackedRows(folder / "train.npy")
        self._val = PackedRows(folder / "validation.npy")

    def _pack(self, tokenizer, texts_of, folder: Path) -> dict[str, Any]:
        """Tokenize and pack both splits into ``folder``; returns token and row counts."""
        seq_len = self.cfg.seq_len
        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
        meta: dict[str, Any] = {}
        start = time.perf_counter()
        for split, suffix in SPLITS.items():
            texts = texts_of(split)
            if split == "train" and self._mixture_report is not None:
                tokens = self._mix_train_tokens(tokenizer, dtype, meta)
            else:
                with tqdm(
                    total=len(texts), desc=f"tokenize {split}", unit="doc", disable=None, leave=False
                ) as bar:
                    tokens = tokenizer.encode_stream(texts, dtype=dtype, progress=bar.update)
            rows = pack_rows(tokens, seq_len)
            np.save(folder / f"{split}.npy", rows)
            meta[f"tokens_{suffix}"] = len(tokens)
            meta[f"sequences_{suffix}"] = len(rows)
            meta[f"tokens_dropped_{suffix}"] = len(tokens) - rows.size
        meta["pack_seconds"] = round(time.perf_counter() - start, 3)
        log.info(
            "packed %d train / %d validation rows of %d tokens in %.1fs",
            meta["sequences_train"],
            meta["sequences_val"],
            seq_len + 1,
            meta["pack_seconds"],
        )
        return meta

    def _mixing_spec(self) -> dict[str, Any]:
        m = self.cfg.mixture
        return {
            "mixture_tokens": m.tokens,
            "temperature": m.temperature,
            "weights": {name: s.weight for name, s in m.sources.items()},
            "seed": self.seed,
        }

    def _mix_train_tokens(self, tokenizer, dtype, meta: dict[str, Any]) -> np.ndarray:
        """The training stream of a mixture: each source's quota of tokens (README "Data mixtures")."""
        from workbench.data.mixing import mixture_tokens, plan_mixture

        ds = self._corpus_for_mixing
        by_source: dict[str, list[str]] = {}
        for text, source, split in zip(ds["text"], ds["source"], ds["split"], strict=True):
            if split == "train":
                by_source.setdefault(source, []).append(text)
        encoded = {name: tokenizer.encode_batch(texts) for name, texts in by_source.items()}
        plan = plan_mixture(self.cfg.mixture, {n: sum(len(t) + 1 for t in e) for n, e in encoded.items()})
        tokens, used = mixture_tokens(encoded, plan, self.seed, tokenizer.eos_id, dtype)
        meta["mixture"] = {
            name: {**used[name], "share": plan[name]["share"], "available": plan[name]["available"]}
            for name in plan
        }
        return tokens

    def _check_sizes(self) -> None:
        cfg, s = self.cfg, self._stats
        if s["sequences_train"] < cfg.batch_size:
            raise ConfigError(
                f"data.batch_size={cfg.batch_size}, data.seq_len={cfg.seq_len}: the training split packs into "
                f"{s['sequences_train']} rows of {cfg.seq_len + 1} tokens, fewer than one batch; "
                "lower data.batch_size or data.seq_len, or add documents (data.max_docs)"
            )
        if s["sequences_val"] < 1:
            raise ConfigError(
                f"data.seq_len={cfg.seq_len}: the validation split has {s['tokens_val']} tokens, fewer than one row "
                f"of {cfg.seq_len + 1}; lower data.seq_len, raise data.val_fraction, or add documents"
            )

    # -------------------------------------------------------------------------------------------- loaders

    def _loader(self, rows: PackedRows, sampler: Sampler | None, drop_last: bool) -> DataLoader:
        workers = self.cfg.num_workers
        loader_cls, extra = (
            (ResumableLoader, {"datamodule": self}) if sampler is not None else (DataLoader, {})
        )
        return loader_cls(
            rows,
            **extra,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches ``(x_BT, y_BT)``; the order depends only on ``seed`` and the epoch."""
        self._ensure_built()
        return self._loader(self._train, EpochShuffleSampler(len(self._train), self.seed), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        """Batches ``(x_BT, y_BT)`` in corpus order, so the first N batches are always the same."""
        self._ensure_built()
        return self._loader(self._val, None, drop_last=False)

    # -------------------------------------------------------------------------------------------- properties

    @property
    def tokenizer(self) -> ByteTokenizer | BPETokenizer:
        self._ensure_built()
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def token_bytes(self) -> torch.Tensor:
        """UTF-8 bytes per token id, (V,) LongTensor; EOS counts 1. Turns nats per token into bits per byte."""
        if self._token_bytes is None:
            self._token_bytes = self.tokenizer.token_bytes()
        return self._token_bytes

    @property
    def stats(self) -> dict[str, Any]:
        self._ensure_built()
        return self._stats

    def metrics(self) -> dict[str, float]:
        """`data/*` metrics (README, "Metrics"): documents in = kept + the sum of `data/removed/<reason>` +
        `data/docs_sampled_out` (left out by the max_docs cap, not removed)."""
        st = self.stats
        if self._mixture_report is not None:
            from workbench.data.report import report_metrics

            out = report_metrics(self._mixture_report, st.get("mixture"))
            out["data/tokens_kept"] = float(st["tokens_train"] + st["tokens_val"])
            return out
        removed: dict[str, float] = {}
        for reason, count in st.get("docs_skipped_reasons", {}).items():
            key = f"data/removed/{reason.split(':')[-1]}"  # "code:empty_text" -> data/removed/empty_text
            removed[key] = removed.get(key, 0.0) + count
        sampled_out = float(st.get("docs_capped", 0))
        return {
            "data/docs_in": float(st["docs"] + sum(removed.values()) + sampled_out),
            "data/docs_sampled_out": sampled_out,
            "data/docs_kept": float(st["docs"]),
            "data/tokens_kept": float(st["tokens_train"] + st["tokens_val"]),
            **removed,
        }

    @property
    def mixture_report(self) -> dict[str, Any] | None:
        """The data report of a mixture (`data.source=mixture`), else None."""
        self._ensure_built()
        return self._mixture_report

    @property
    def corpus(self):
        """The corpus ``datasets.Dataset`` (columns id, source, path, text, split)."""
        self._ensure_built()
        return self._corpus.dataset
