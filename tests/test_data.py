"""Data pipeline: corpus content and caching, tokenizers' byte accounting, packing, loaders, file sources."""

from __future__ import annotations

import json
import os
import re

os.environ["HF_DATASETS_OFFLINE"] = "1"  # nothing here may touch the network
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from workbench.config.schema import DataConfig  # noqa: E402
from workbench.data import (  # noqa: E402
    BPETokenizer,
    ByteTokenizer,
    LMDataModule,
    build_corpus,
    build_tokenizer,
    corpus_key,
    load_tokenizer,
)
from workbench.data import corpus as corpus_mod  # noqa: E402
from workbench.data import tokenizer as tokenizer_mod  # noqa: E402

SMALL = 150  # documents: enough for both sources and a validation split, read in well under a second

TRICKY_TEXTS = [
    "",
    "plain ascii",
    "héllo wörld — ∑ x² ≠ ∞",
    "日本語のテキスト and 中文",
    "emoji 🎉👩‍💻🏳️‍🌈 and a combining é",
    "\x00 nul, \t tab, \r\n crlf, \u2028 line separator",
    "    def f(x):\n        return x  # <|endoftext|> is just text here\n",
]


def small_cfg(tmp_path, **overrides) -> DataConfig:
    return DataConfig(**{"cache_dir": str(tmp_path), "max_docs": SMALL, **overrides})


# --------------------------------------------------------------------------------------------- corpus


def test_embedded_corpus_has_code_and_prose_with_expected_columns(tmp_path):
    ds = build_corpus(small_cfg(tmp_path)).dataset
    assert set(ds.column_names) >= {"id", "source", "path", "text", "split"}
    assert len(ds) == SMALL
    ids = ds["id"][:]
    assert len(set(ids)) == len(ids)
    rows = ds.to_list()
    assert {r["source"] for r in rows} == {"code", "prose"}
    assert all(r["text"].strip() for r in rows)
    assert {r["split"] for r in rows} == {"train", "validation"}
    for r in rows:
        kind = r["id"].split(":")[0]
        assert kind == r["source"]
        if r["source"] == "code":
            assert r["id"] == f"code:{r['path']}" and r["path"].endswith(".py")
            assert "/test/" not in f"/{r['path']}" and not r["path"].split("/")[-1].startswith("test_")
    assert "code:pydoc_data/topics.py" not in ids  # generated data, duplicating the prose topics


def test_docstrings_are_docstrings_and_share_their_module_split(tmp_path):
    ds = build_corpus(DataConfig(cache_dir=str(tmp_path))).dataset  # the full corpus, ~4 s
    by_id = {r["id"]: r for r in ds.to_list()}
    assert "prose:doc:json/decoder.py" in by_id
    assert by_id["prose:doc:json/decoder.py"]["text"].startswith("Implementation of JSONDecoder")
    assert any(i.startswith("prose:topic:") for i in by_id)
    pairs = [(i, "code:" + i.removeprefix("prose:doc:")) for i in by_id if i.startswith("prose:doc:")]
    assert len(pairs) > 100
    for doc_id, code_id in pairs:
        if code_id in by_id:
            assert by_id[doc_id]["split"] == by_id[code_id]["split"]


def test_split_is_deterministic_and_follows_the_salt(tmp_path):
    first = build_corpus(small_cfg(tmp_path), use_cache=False).dataset
    second = build_corpus(small_cfg(tmp_path), use_cache=False).dataset
    split_of = dict(zip(first["id"][:], first["split"][:], strict=True))
    assert split_of == dict(zip(second["id"][:], second["split"][:], strict=True))
    # The rule is a salted BLAKE2b of the document id (of the module, for a docstring), never hash().
    for doc_id, split in split_of.items():
        group = "code:" + doc_id.removeprefix("prose:doc:") if doc_id.startswith("prose:doc:") else doc_id
        assert split == corpus_mod.assign_split(group, 0.05, "workbench")

    salted = build_corpus(small_cfg(tmp_path, split_salt="other", val_fraction=0.2), use_cache=False).dataset
    again = build_corpus(small_cfg(tmp_path, val_fraction=0.2), use_cache=False).dataset
    assert salted["id"][:] == again["id"][:]  # the salt changes the split, not which documents are kept
    assert salted["split"][:] != again["split"][:]


def test_second_build_hits_the_cache_and_spec_changes_move_the_key(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path)
    built = build_corpus(cfg)
    assert not built.from_cache and built.path.is_dir()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the corpus was rebuilt despite a cache")

    monkeypatch.setattr(corpus_mod, "_collect_documents", no_rebuild)
    cached = build_corpus(cfg)
    assert cached.from_cache and cached.key == built.key
    assert cached.dataset["id"][:] == built.dataset["id"][:]
    assert cached.stats == built.stats

    changes = dict(
        max_docs=SMALL + 1,
        val_fraction=0.1,
        split_salt="x",
        include_tests=True,
        embedded_kinds=["code"],
        source="files",
    )
    keys = {built.key}
    for name, value in changes.items():
        if name == "source":
            (tmp_path / "a.txt").write_text("hello")
            key = corpus_key(small_cfg(tmp_path, source="files", paths=[str(tmp_path / "a.txt")]))
        else:
            key = corpus_key(small_cfg(tmp_path, **{name: value}))
        assert key not in keys, name
        keys.add(key)
    assert corpus_key(small_cfg(tmp_path, tokenizer="bpe", seq_len=7)) == built.key  # not corpus fields


def test_an_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, max_docs=20)

    def crash(self, path, **kwargs):
        (os.makedirs(path), open(os.path.join(path, "half.arrow"), "w").close())
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_mod.datasets.Dataset, "save_to_disk", crash)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(cfg)
    assert list((tmp_path / "corpus").iterdir()) == []
    monkeypatch.undo()
    assert not build_corpus(cfg).from_cache


# --------------------------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trips_and_counts_bytes():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eos_id) == (257, 256)
    tb = tok.token_bytes()
    assert tb.shape == (257,) and tb.dtype == torch.long
    for text in TRICKY_TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tb[ids].sum()) == len(text.encode("utf-8"))
    stream = tok.encode_stream(TRICKY_TEXTS, dtype=np.uint16)
    assert (stream == tok.eos_id).sum() == len(TRICKY_TEXTS)
    assert int(tb[stream.astype(np.int64)].sum()) == sum(len(t.encode()) + 1 for t in TRICKY_TEXTS)
    assert tok.decode(stream) == "".join(t + "<|endoftext|>" for t in TRICKY_TEXTS)


def test_bpe_trains_round_trips_and_counts_bytes(tmp_path, monkeypatch):
    corpus = build_corpus(small_cfg(tmp_path))
    train = [
        t for t, s in zip(corpus.dataset["text"][:], corpus.dataset["split"][:], strict=True) if s == "train"
    ]
    cfg = small_cfg(tmp_path, tokenizer="bpe", bpe_vocab_size=600)
    tok = build_tokenizer(cfg, train, tmp_path, corpus.key)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 600
    tb = tok.token_bytes()
    assert tb[tok.eos_id] == 1 and tb.min() >= 1
    assert tok.encode("    return self").size < len("    return self")  # merges learned
    for text in [*TRICKY_TEXTS, train[0], "unseen bytes: \x7f\x01 ÿ 🦜"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tb[ids].sum()) == len(text.encode("utf-8"))
    stream = tok.encode_stream(train, dtype=np.uint16)
    assert int(tb[stream.astype(np.int64)].sum()) == corpus.stats["bytes_train"] + corpus.stats["docs_train"]

    def no_training(*args, **kwargs):
        raise AssertionError("retrained despite a cached tokenizer")

    monkeypatch.setattr(tokenizer_mod.BPETokenizer, "train", no_training)
    cached = build_tokenizer(cfg, lambda: pytest.fail("read texts on a cache hit"), tmp_path, corpus.key)
    assert cached.spec() == tok.spec()
    loaded = load_tokenizer(tok.save(tmp_path / "saved"))
    assert loaded.spec() == tok.spec() and list(loaded.encode(train[1])) == list(tok.encode(train[1]))


# --------------------------------------------------------------------------------------------- packing & loaders


def test_packing_rows_shift_and_token_count(tmp_path):
    seq_len = 64
    dm = LMDataModule(small_cfg(tmp_path, seq_len=seq_len, batch_size=4))
    dm.setup()
    s = dm.stats
    tok, ds = dm.tokenizer, dm.corpus
    for split, suffix in (("train", "train"), ("validation", "val")):
        texts = [t for t, sp in zip(ds["text"][:], ds["split"][:], strict=True) if sp == split]
        expected = np.concatenate([np.append(tok.encode(t), tok.eos_id) for t in texts])
        assert s[f"tokens_{suffix}"] == len(expected)
        assert s[f"docs_{suffix}"] == len(texts)
        assert s[f"bytes_{suffix}"] == sum(len(t.encode()) for t in texts)
        assert s[f"sequences_{suffix}"] == len(expected) // (seq_len + 1)
        rows = (dm._train if split == "train" else dm._val).rows()
        assert rows.shape == (s[f"sequences_{suffix}"], seq_len + 1)
        np.testing.assert_array_equal(rows.reshape(-1), expected[: rows.size])

    x, y = next(iter(dm.val_dataloader()))  # validation: in order, the first rows
    assert x.shape == y.shape == (4, seq_len) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    first = torch.from_numpy(dm._val.rows()[:4].astype(np.int64))
    assert torch.equal(x, first[:, :-1]) and torch.equal(y, first[:, 1:])
    assert sum(len(b[0]) for b in dm.val_dataloader()) == s["sequences_val"]  # drop_last=False
    assert dm.vocab_size == 257 and dm.token_bytes.shape == (257,)
    for key in ("docs_skipped", "docs_skipped_reasons", "corpus_key"):
        assert key in s
    json.dumps(s)  # loggable as is


def _batches(dm: LMDataModule, n: int, loader=None) -> list[torch.Tensor]:
    loader = loader or dm.train_dataloader()
    out = []
    for i, (x, y) in enumerate(loader):
        assert torch.equal(x[:, 1:], y[:, :-1])
        out.append(x)
        if i + 1 == n:
            break
    return out


def test_train_loader_depends_on_seed_only_not_on_workers(tmp_path):
    cfg = small_cfg(tmp_path, seq_len=32, batch_size=8)
    reference = LMDataModule(cfg, seed=1)
    loader = reference.train_dataloader()
    assert len(loader) == reference.stats["sequences_train"] // 8  # drop_last=True
    epoch0, epoch1 = _batches(reference, 3, loader), _batches(reference, 3, loader)

    again = LMDataModule(cfg, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(epoch0, _batches(again, 3), strict=True))
    other_seed = _batches(LMDataModule(cfg, seed=2), 3)
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, other_seed, strict=True))
    assert not torch.equal(epoch0[0], epoch1[0])  # a new permutation each epoch

    workers = LMDataModule(small_cfg(tmp_path, seq_len=32, batch_size=8, num_workers=2), seed=1)
    wloader = workers.train_dataloader()
    assert wloader.num_workers == 2
    w0, w1 = _batches(workers, 3, wloader), _batches(workers, 3, wloader)
    assert all(torch.equal(a, b) for a, b in zip(epoch0 + epoch1, w0 + w1, strict=True))


def test_bpe_datamodule_end_to_end(tmp_path):
    dm = LMDataModule(small_cfg(tmp_path, tokenizer="bpe", bpe_vocab_size=512, seq_len=32, batch_size=4))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 32) and int(x.max()) < dm.vocab_size == 512
    s = dm.stats
    assert s["tokens_train"] < s["bytes_train"]  # BPE compresses
    assert dm.token_bytes.shape == (512,)


def test_too_little_data_names_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"^data\.val_fraction=0\.001: the validation split is empty"):
        LMDataModule(small_cfg(tmp_path, max_docs=5, val_fraction=0.001)).setup()
    with pytest.raises(ValueError, match=r"data\.batch_size=100000"):
        LMDataModule(small_cfg(tmp_path, max_docs=20, batch_size=100_000)).setup()
    with pytest.raises(ValueError, match=r"data\.seq_len=1000000"):
        LMDataModule(small_cfg(tmp_path, max_docs=20, seq_len=1_000_000, batch_size=1)).setup()
    with pytest.raises(ValueError, match=r"data\.tokenizer='word'"):
        LMDataModule(small_cfg(tmp_path, tokenizer="word"))


# --------------------------------------------------------------------------------------------- local files


def test_files_source_reads_jsonl_and_txt(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_ROOT", str(tmp_path))  # relative paths resolve from the project root
    (tmp_path / "data").mkdir()
    rows = [{"text": f"document number {i} " * 20, "meta": i} for i in range(40)] + [{"text": ""}]
    (tmp_path / "data" / "part.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "data" / "note.txt").write_text("a whole file is one document\n" * 50)
    cfg = DataConfig(
        source="files",
        paths=["data/*.jsonl", "data/note.txt", str(tmp_path / "data" / "part.jsonl")],
        cache_dir="cache",
        val_fraction=0.2,
        seq_len=16,
        batch_size=2,
    )
    corpus = build_corpus(cfg)
    assert corpus.path.is_relative_to(tmp_path / "cache")
    ids = corpus.dataset["id"][:]
    assert (
        len(ids) == 41 and len(set(ids)) == 41
    )  # the twice-listed file counts once; the empty row is skipped
    assert "data/note.txt" in ids and "data/part.jsonl:0" in ids
    assert corpus.stats["docs_skipped_reasons"] == {"data/part.jsonl:empty_text": 1}
    assert set(corpus.dataset["source"][:]) == {"data/part.jsonl", "data/note.txt"}
    x, y = next(iter(LMDataModule(cfg).train_dataloader()))
    assert x.shape == (2, 16)

    (tmp_path / "data" / "note.txt").write_text("changed")  # a changed file is a new corpus
    assert corpus_key(cfg) != corpus.key

    with pytest.raises(ValueError, match=r"data\.text_field='body': no such column in data/part\.jsonl"):
        build_corpus(
            DataConfig(source="files", paths=["data/part.jsonl"], text_field="body", cache_dir="cache")
        )


@pytest.mark.parametrize("missing", ["nowhere/*.jsonl", "nowhere/corpus.txt"])
def test_a_missing_path_is_named(tmp_path, monkeypatch, missing):
    monkeypatch.setenv("WORKBENCH_ROOT", str(tmp_path))
    with pytest.raises(ValueError, match=rf"^data\.paths: .*{re.escape(repr(missing))}") as err:
        LMDataModule(DataConfig(source="files", paths=[missing], cache_dir="cache")).setup()
    assert "\n" not in str(err.value)


def test_a_folder_of_jsonl_gz_zst_json_and_malformed_lines_keeps_every_good_row(tmp_path, monkeypatch):
    import gzip

    import zstandard

    monkeypatch.setenv("WORKBENCH_ROOT", str(tmp_path))  # relative paths resolve from the project root
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    good = [json.dumps({"text": f"plain document {i} " * 10}) for i in range(3)]
    lines = [
        good[0],
        '{"text": "bad \\udcff\\udcfe bytes"}',  # valid JSON whose text holds lone surrogates
        "{not json",
        "",  # a blank line is no document
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        json.dumps(["an", "array"]),
        json.dumps({"text": "   "}),
        good[1],
    ]
    (folder / "a.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(("\n".join(good) + "\n").encode()))
    (folder / "sub" / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(good[2].encode()))
    (folder / "sub" / "d.json").write_text(json.dumps([{"text": "an array file " * 10}, 7]))
    (folder / "sub" / "e.txt").write_text("a text file " * 10)
    (folder / "ignored.csv").write_text("not a supported suffix")
    cfg = DataConfig(source="files", paths=["corpus"], cache_dir="cache", val_fraction=0.2)
    corpus = build_corpus(cfg, require_splits=False)
    ids = sorted(corpus.dataset["id"][:])
    assert ids == sorted(
        [
            "corpus/a.jsonl:0",
            "corpus/a.jsonl:5",  # rows count JSON objects: 0 good, 1 surrogate, 2 body, 3 int, 4 blank, 5 good
            *(f"corpus/b.jsonl.gz:{i}" for i in range(3)),
            "corpus/sub/c.jsonl.zst:0",
            "corpus/sub/d.json:0",
            "corpus/sub/e.txt",
        ]
    )
    assert corpus.stats["docs_skipped_reasons"] == {
        "corpus/a.jsonl:bad_json": 1,
        "corpus/a.jsonl:empty_text": 1,
        "corpus/a.jsonl:lone_surrogate": 1,
        "corpus/a.jsonl:missing_text": 1,
        "corpus/a.jsonl:not_object": 1,
        "corpus/a.jsonl:not_text": 1,
        "corpus/sub/d.json:not_object": 1,
    }
    examples = corpus.stats["docs_skipped_examples"]
    assert examples["corpus/a.jsonl:lone_surrogate"] == ["corpus/a.jsonl:2"]  # file:line
    assert examples["corpus/a.jsonl:bad_json"] == ["corpus/a.jsonl:3"]
    assert examples["corpus/sub/d.json:not_object"] == ["corpus/sub/d.json:item 1"]


def test_a_folder_without_documents_and_a_text_field_no_row_has_are_refused_in_one_line(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("WORKBENCH_ROOT", str(tmp_path))  # relative paths resolve from the project root
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("a,b")
    with pytest.raises(ValueError, match=r"data\.paths: the folder 'empty' .* holds no \.jsonl"):
        build_corpus(DataConfig(source="files", paths=["empty"], cache_dir="cache"))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(
        ValueError,
        match=r"text_field='text': no such column in rows\.jsonl .*rows\.jsonl:1 has keys: content",
    ):
        build_corpus(DataConfig(source="files", paths=["rows.jsonl"], cache_dir="cache"))
