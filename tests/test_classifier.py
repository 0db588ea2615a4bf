"""The quality_classifier filter: hashed n-gram logistic regression + GPT-3 Pareto sampling, all deterministic."""

from __future__ import annotations

import inspect
import math
import pickle

import numpy as np
import pytest

from workbench.config import ConfigError
from workbench.data.filters import REGISTRY, DecideContext, build_filter
from workbench.data.filters import classifier as qc
from workbench.data.filters.base import concat_columns

WORDS = (
    "the of and to in is was for on with as by at from that this it he she they we people city river house "
    "history music water light world school story country family morning evening garden season walked found "
    "wrote built opened carried remembered painted studied visited old small quiet bright long early many "
    "several every because while after before although through across under over"
).split()
SYMBOLS = list("{}()[];=+-*/<>!&|%#$@^~:,.\"'_0123456789abcdefxyz") + [" "] * 8


def prose(rng: np.random.Generator) -> str:
    """English-like sentences from a fixed word list."""
    sentences = []
    for _ in range(int(rng.integers(2, 6))):
        s = " ".join(rng.choice(WORDS, int(rng.integers(6, 14))))
        sentences.append(s[0].upper() + s[1:] + ".")
    return " ".join(sentences)


def noise(rng: np.random.Generator) -> str:
    """Character noise or code-like assignment lines."""
    if rng.random() < 0.5:
        return "".join(rng.choice(SYMBOLS, int(rng.integers(40, 200))))
    lines = []
    for _ in range(int(rng.integers(2, 8))):
        v = "".join(rng.choice(list("abcdefxyz_"), int(rng.integers(1, 6))))
        fn = rng.choice(["foo", "bar", "len", "map"])
        lines.append(f"{v} = {fn}({v}[{rng.integers(100)}]) + 0x{rng.integers(4096):x};")
    return "\n".join(lines)


def corpus(seed: int, n: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    return [prose(rng) for _ in range(n)], [noise(rng) for _ in range(n)]


SOURCES = dict(zip(("good", "raw"), corpus(1, 300), strict=True))


def make(**kw) -> qc.QualityClassifier:
    params = qc.QualityClassifier.Params(**{"positive": ["good"], "negative": ["raw"], **kw})
    return qc.QualityClassifier(params)  # checks its params


def ctx_for(ids: list[str]) -> DecideContext:
    return DecideContext(ids=ids, sources=["s"] * len(ids), texts=lambda idx: [])


@pytest.fixture(scope="module")
def trained() -> qc.QualityClassifier:
    filt = make(mode="threshold")
    filt.prepare(SOURCES.__getitem__)
    return filt


def test_trains_separable_sources_and_orders_fresh_samples(trained):
    st = trained.stats
    # the held-out tenth is chosen by text hash: about 30 documents per class here
    assert 15 <= st["heldout"]["n_pos"] <= 45 and 15 <= st["heldout"]["n_neg"] <= 45
    assert st["train"]["positive"] + st["heldout"]["n_pos"] == 300
    assert st["heldout"]["accuracy"] > 0.95
    assert st["heldout"]["auc"] > 0.95
    fresh_pos, fresh_neg = corpus(2, 100)  # never seen in training
    sp, sn = trained.signals(fresh_pos)["score"], trained.signals(fresh_neg)["score"]
    assert sp.dtype == np.float32 and sp.shape == (100,)
    # clearly separable sources: every fresh prose document outscores every fresh noise document
    assert sp.min() > sn.max()
    assert np.mean(sp >= 0.5) == 1.0 and np.mean(sn < 0.5) == 1.0
    lines = trained.describe()
    assert any("held-out" in line and "accuracy 1.000" in line for line in lines), lines


def test_signals_identical_on_chunks_and_after_pickling(trained):
    texts = [t for pair in zip(*corpus(3, 40), strict=True) for t in pair] + ["", "   ", "!"]
    whole = trained.signals(texts)
    parts = [trained.signals(texts[a:b]) for a, b in ((0, 1), (1, 8), (8, 31), (31, len(texts)))]
    joined = concat_columns(parts)
    assert set(joined) == {"score"}
    assert whole["score"].tobytes() == joined["score"].tobytes()
    # workers receive a pickled filter: same weights, same scores, bit for bit
    clone = pickle.loads(pickle.dumps(trained))
    assert clone.signals(texts)["score"].tobytes() == whole["score"].tobytes()
    assert clone.signal_spec() == trained.signal_spec()
    # a text without tokens scores sigmoid(bias)
    assert whole["score"][-3] == np.float32(1 / (1 + math.exp(-trained.model.bias)))


def test_training_is_deterministic_and_order_free(trained):
    again = make(mode="threshold")
    reversed_sources = {k: v[::-1] for k, v in SOURCES.items()}
    again.prepare(reversed_sources.__getitem__)  # same texts, other order
    assert again.model.weights.tobytes() == trained.model.weights.tobytes()
    assert again.model.bias == trained.model.bias
    assert again.extra_signal_spec() == trained.extra_signal_spec()
    other = make(mode="threshold", seed=1)
    other.prepare(SOURCES.__getitem__)
    assert other.model.weights.tobytes() != trained.model.weights.tobytes()
    # notebook API: the same data and hyperparameters give the same weights
    m1 = qc.train_classifier(SOURCES["good"][:50], SOURCES["raw"][:50], num_features=2**12, seed=3)
    m2 = qc.train_classifier(SOURCES["good"][:50], SOURCES["raw"][:50], num_features=2**12, seed=3)
    assert m1.weights.tobytes() == m2.weights.tobytes() and m1.bias == m2.bias
    assert m1.predict_proba(SOURCES["good"][:3]).tolist() == m2.predict_proba(SOURCES["good"][:3]).tolist()


def test_signal_spec_tracks_training_data_and_hyperparameters(trained):
    spec = trained.signal_spec()
    assert spec["training_data"] and spec["weights"] and spec["positive"] == ["good"]
    changed = dict(SOURCES, raw=SOURCES["raw"][:-1] + ["x = y;"])  # one negative text differs
    filt = make(mode="threshold")
    filt.prepare(changed.__getitem__)
    assert filt.extra_signal_spec()["training_data"] != spec["training_data"]
    assert make(mode="threshold", l2=1e-3).signal_spec()["l2"] == 1e-3
    # the per-class cap takes a fixed sample (lowest text hashes) but the data digest covers every text
    capped = make(mode="threshold", max_train_docs_per_class=50)
    capped.prepare(SOURCES.__getitem__)
    assert capped.stats["train"]["positive"] + capped.stats["heldout"]["n_pos"] == 50
    assert capped.stats["train"]["negative"] + capped.stats["heldout"]["n_neg"] == 50
    assert capped.extra_signal_spec()["training_data"] == spec["training_data"]
    assert capped.extra_signal_spec()["weights"] != spec["weights"]
    # thresholds only decide: they leave the cache key alone
    assert (
        make(mode="pareto", threshold=0.9, pareto_alpha=2.0).signal_spec()
        == make(mode="threshold").signal_spec()
    )
    # before prepare (the mixture key is computed then) the spec exists, with no training digest
    assert make().extra_signal_spec() == {"training_data": None, "weights": None}
    with pytest.raises(RuntimeError, match="prepare"):
        make().signals(["text"])


def test_threshold_mode_drops_exactly_the_low_scores():
    filt = make(mode="threshold", threshold=0.5)
    scores = np.array([0.0, 0.25, 0.4999, 0.5, 0.5001, 0.75, 1.0], dtype=np.float32)
    reasons = filt.decide({"score": scores}, ctx_for([f"d{i}" for i in range(len(scores))]))
    assert reasons.tolist() == ["low_quality"] * 3 + [""] * 4
    # the comparison is in the column's float32: a score stored as float32(0.7) passes threshold 0.7
    at = make(mode="threshold", threshold=0.7).decide(
        {"score": np.float32([0.7, 0.6999])}, ctx_for(["a", "b"])
    )
    assert at.tolist() == ["", "low_quality"]
    rng = np.random.default_rng(0)
    many = rng.random(1000).astype(np.float32)
    for t in (0.0, 0.3, 0.8, 1.0):
        r = make(mode="threshold", threshold=t).decide(
            {"score": many}, ctx_for([str(i) for i in range(1000)])
        )
        assert np.array_equal(r == "low_quality", many < np.float32(t))
    assert filt.reasons() == ["low_quality"]


def test_pareto_mode_is_deterministic_per_document_id():
    rng = np.random.default_rng(5)
    n = 3000
    ids = [f"src/{i:05d}" for i in range(n)]
    scores = rng.random(n).astype(np.float32)
    filt = make(mode="pareto", pareto_alpha=2.0)
    reasons = filt.decide({"score": scores}, ctx_for(ids))
    assert set(reasons.tolist()) == {"", "low_quality"}
    assert filt.decide({"score": scores}, ctx_for(ids)).tolist() == reasons.tolist()
    perm = rng.permutation(n)
    shuffled = filt.decide({"score": scores[perm]}, ctx_for([ids[i] for i in perm]))
    assert shuffled.tolist() == reasons[perm].tolist()
    chunked = np.concatenate(
        [filt.decide({"score": scores[a : a + 700]}, ctx_for(ids[a : a + 700])) for a in range(0, n, 700)]
    )
    assert chunked.tolist() == reasons.tolist()
    # another seed draws other uniforms
    assert (
        make(mode="pareto", pareto_alpha=2.0, seed=1).decide({"score": scores}, ctx_for(ids)).tolist()
        != reasons.tolist()
    )
    # higher scores are kept more often
    kept = reasons == ""
    assert kept[scores > 0.8].mean() > 2 * kept[scores < 0.2].mean()


@pytest.mark.parametrize("alpha", [9.0, 2.0])
def test_pareto_keep_rate_matches_the_lomax_tail(alpha):
    # numpy's pareto is the Lomax: P(X > x) = (1 + x)^-alpha, so P(X > 1 - s) = (2 - s)^-alpha
    levels = np.array([0.0, 0.5, 0.9, 1.0])
    n = 20_000  # per level; tolerance 5 binomial standard deviations (false failure ~ 1e-6)
    ids = [f"doc-{i}" for i in range(n * len(levels))]
    scores = np.repeat(levels, n).astype(np.float32)
    kept = make(mode="pareto", pareto_alpha=alpha).decide({"score": scores}, ctx_for(ids)) == ""
    ref = np.random.default_rng(123).pareto(alpha, n)  # the draw GPT-3 used
    for k, s in enumerate(levels):
        p = (2.0 - s) ** -alpha
        tol = 5 * math.sqrt(p * (1 - p) / n) + 1e-12
        assert abs(kept[k * n : (k + 1) * n].mean() - p) <= tol, (s, kept[k * n : (k + 1) * n].mean(), p)
        assert abs(np.mean(ref > 1 - s) - p) <= tol  # the formula is numpy's convention
        assert float(qc.pareto_keep_probability(s, alpha)) == pytest.approx(p, rel=1e-12)
    # score 1 is always kept (every draw is > 0)
    assert kept[3 * n :].all()
    # the draws themselves follow the Lomax tail at a few points
    draws = qc.pareto_draws(ids[:n], seed=0, alpha=alpha)
    for x in (0.05, 0.2, 1.0):
        p = (1 + x) ** -alpha
        assert abs(np.mean(draws > x) - p) <= 5 * math.sqrt(p * (1 - p) / n)


def test_empty_source_is_an_error_naming_it():
    filt = qc.QualityClassifier(qc.QualityClassifier.Params(positive=["good"], negative=["raw", "void"]))
    texts = dict(SOURCES, void=[])
    with pytest.raises(ValueError, match="negative source 'void' has no training texts") as err:
        filt.prepare(texts.__getitem__)
    assert "\n" not in str(err.value)


def test_build_filter_config_errors():
    assert REGISTRY["quality_classifier"] is qc.QualityClassifier
    spec = {"type": "quality_classifier", "positive": ["good"], "negative": ["raw"]}
    filt = build_filter(spec)
    assert isinstance(filt, qc.QualityClassifier) and filt.params.mode == "pareto"
    assert filt.params.pareto_alpha == 9.0 and filt.params.num_features == 2**18
    with pytest.raises(
        ConfigError, match=r"^data\.mixture\.filters\.quality_classifier\.bogus: unknown key;"
    ) as err:
        build_filter({**spec, "bogus": 1})
    assert "\n" not in str(err.value)
    bad = {
        "positive": [],
        "negative": "raw",
        "threshold": 1.5,
        "pareto_alpha": 0.0,
        "ngram_max": 0,
        "num_features": 1,
        "l2": -1.0,
        "lr": 0.0,
        "epochs": 0,
        "max_train_docs_per_class": 0,
    }
    for key, value in bad.items():
        with pytest.raises(ConfigError) as err:
            build_filter({**spec, key: value})
        msg = str(err.value)
        assert f"data.mixture.filters.quality_classifier.{key}={value!r} must" in msg and "\n" not in msg, msg
    with pytest.raises(ConfigError) as err:
        build_filter({**spec, "mode": "sample"})
    assert str(err.value) == (
        "data.mixture.filters.quality_classifier.mode='sample' is not allowed; choose one of: pareto, threshold"
    )
    with pytest.raises(ConfigError, match="must be disjoint from positive"):
        build_filter({**spec, "negative": ["raw", "good"]})
    # a Hydra-style tuple becomes a list
    assert build_filter({**spec, "positive": ("good",)}).params.positive == ["good"]


def test_features_and_auc_exact_values():
    # pinned buckets: xxh3 of each n-gram, so a hash change (which would silently change cached scores) fails
    cols, vals = qc.HashedFeatures(num_features=1024, sign_hash=False, ngram_max=1).doc("b a b")
    assert cols.tolist() == [63, 543]
    assert vals.tolist() == [2 / math.sqrt(5), 1 / math.sqrt(5)]
    cols, vals = qc.HashedFeatures().doc("The cat sat.")  # 4 unigrams + 3 bigrams, signed
    assert cols.tolist() == [21240, 21742, 99883, 148611, 211699, 212349, 219859]
    assert np.allclose(np.abs(vals), 1 / math.sqrt(7), rtol=0, atol=1e-15)
    assert qc.HashedFeatures().doc(" \n")[0].size == 0
    assert qc.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert qc.roc_auc(np.array([0.5, 0.5, 0.9]), np.array([1, 0, 1])) == 0.75  # a tie counts one half
    assert math.isnan(qc.roc_auc(np.array([0.5]), np.array([1])))


def test_notebook_defaults_match_params():
    sig = inspect.signature(qc.train_classifier).parameters
    defaults = qc.QualityClassifier.Params()
    for key in qc._HYPER:
        assert sig[key].default == getattr(defaults, key), key
