"""A document-quality classifier trained in the workbench: hashed n-gram logistic regression (GPT-3 style).

Brown et al. 2020 ("Language Models are Few-Shot Learners", App. A) trained a logistic-regression classifier on
Spark's tokenizer + HashingTF features to separate a curated "positive" set (WebText, Wikipedia, books) from raw
Common Crawl, then kept a Common Crawl document iff `np.random.pareto(alpha) > 1 - score` with alpha = 9. This
module does the same in NumPy only:

- features: lower-cased word/punctuation tokens, word n-grams up to `ngram_max`, hashed into `num_features`
  buckets with a stable 64-bit hash (xxh3; the "hashing trick", optionally signed, Weinberger et al. 2009),
  term frequencies (or binary presence), L2-normalised per document;
- training: minibatch gradient descent on the (optionally class-balanced) logistic loss with an L2 penalty,
  a seeded shuffle and a linearly decaying step size; bit-for-bit deterministic for a given seed and data;
- evaluation: a held-out 10% of the training documents, chosen by a stable hash of the text, reported as
  accuracy and ROC AUC in `describe()`;
- decision: `threshold` (keep iff score >= threshold) or GPT-3's `pareto` sampling made deterministic per
  document id (the uniform draw comes from BLAKE2b(seed, id) and is pushed through the Pareto inverse CDF).

Notebook use: `model = train_classifier(pos_texts, neg_texts, ngram_max=2)` then `model.predict_proba(texts)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import xxhash

from workbench.config.params import bounded, key_of, must
from workbench.data.filters.base import DecideContext, Filter, register

HOLDOUT_BUCKETS = 10  # 1 in 10 training documents is held out (by a stable hash of its text)
REASON = "low_quality"

_TOKEN = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks (code-like text is punctuation-rich)
_EMPTY_I = np.zeros(0, dtype=np.int64)
_EMPTY_F = np.zeros(0, dtype=np.float64)


# -- features -----------------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (no token contains a space, so n-grams join unambiguously)."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class HashedFeatures:
    """Hashed word n-gram features (Weinberger et al. 2009 "Feature Hashing for Large Scale Multitask Learning")."""

    ngram_max: int = 2
    num_features: int = 2**18
    binary: bool = False
    sign_hash: bool = True

    def doc(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted bucket indices int64, L2-normalised values float64) of one document."""
        toks = tokenize(text)
        grams = list(toks)
        for n in range(2, self.ngram_max + 1):
            grams.extend(" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1))
        if not grams:
            return _EMPTY_I, _EMPTY_F
        # stable 64-bit hash (never Python's salted hash()): same buckets in every process and run
        h = np.fromiter((xxhash.xxh3_64_intdigest(g.encode("utf-8")) for g in grams), np.uint64, len(grams))
        if self.binary:
            h = np.unique(h)  # presence, not counts
        idx = (h % np.uint64(self.num_features)).astype(np.int64)
        # Weinberger et al. 2009: a second (here: the top) hash bit gives each n-gram a sign, so collisions
        # cancel in expectation and inner products stay unbiased
        sign = np.where(h >> np.uint64(63), -1.0, 1.0) if self.sign_hash else np.ones(len(h))
        cols, inverse = np.unique(idx, return_inverse=True)
        vals = np.bincount(inverse, weights=sign, minlength=len(cols))
        nz = vals != 0
        cols, vals = cols[nz], vals[nz]
        norm = math.sqrt(math.fsum((vals * vals).tolist()))  # fsum: exactly rounded, order-free
        if norm == 0.0:
            return _EMPTY_I, _EMPTY_F
        return cols, vals / norm

    def matrix(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR rows of many documents: (indptr int64 [n+1], cols int64, vals float64)."""
        docs = [self.doc(t) for t in texts]
        indptr = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum([len(c) for c, _ in docs], out=indptr[1:])
        cols = np.concatenate([c for c, _ in docs]) if docs else _EMPTY_I
        vals = np.concatenate([v for _, v in docs]) if docs else _EMPTY_F
        return indptr, cols, vals


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _sigmoid_scalar(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# -- the model ----------------------------------------------------------------------------------------------


@dataclass
class HashedLogReg:
    """A trained logistic regression over hashed n-grams (its weights are one NumPy array)."""

    features: HashedFeatures
    weights: np.ndarray  # float64 [num_features]
    bias: float

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        """Logits (float64), one per text; each depends only on its own text (exactly rounded sums)."""
        out = np.empty(len(texts), dtype=np.float64)
        for i, text in enumerate(texts):
            cols, vals = self.features.doc(text)
            out[i] = math.fsum((vals * self.weights[cols]).tolist()) + self.bias
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(positive | text) (float64), per document: identical on any batching of the texts."""
        return np.array([_sigmoid_scalar(float(z)) for z in self.decision_function(texts)], dtype=np.float64)

    def digest(self) -> str:
        """BLAKE2b of the weights, bias and feature settings (what the scores depend on)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(self.features).encode())
        h.update(np.float64(self.bias).tobytes())
        h.update(np.ascontiguousarray(self.weights, dtype=np.float64).tobytes())
        return h.hexdigest()


def _gather_rows(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the CSR arrays of `rows` (concatenated), and the batch-local row of each position."""
    starts, lens = indptr[rows], indptr[rows + 1] - indptr[rows]
    total = int(lens.sum())
    local = np.repeat(np.arange(len(rows)), lens)
    within = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(starts, lens) + within, local


def train_classifier(
    pos_texts: Sequence[str],
    neg_texts: Sequence[str],
    *,
    ngram_max: int = 2,
    num_features: int = 2**18,
    binary: bool = False,
    sign_hash: bool = True,
    l2: float = 1e-6,
    epochs: int = 10,
    lr: float = 10.0,
    batch_size: int = 32,
    seed: int = 0,
    class_balance: bool = True,
) -> HashedLogReg:
    """Fit a hashed n-gram logistic regression separating `pos_texts` (label 1) from `neg_texts` (label 0).

    Minibatch gradient descent on the mean logistic loss + l2/2 * ||w||^2 (bias not penalised); the step size
    decays linearly from `lr` to 0 (as in fastText); `batch_size=0` is full-batch. The documents are visited in
    an order drawn from `seed`, so equal inputs and seed give identical weights. `class_balance` weights each
    class to half of the loss, so a score of 0.5 means "as likely positive as negative" whatever the class sizes.
    """
    if not pos_texts or not neg_texts:
        raise ValueError(
            f"train_classifier needs texts of both classes (positive {len(pos_texts)}, negative {len(neg_texts)})"
        )
    feats = HashedFeatures(ngram_max=ngram_max, num_features=num_features, binary=binary, sign_hash=sign_hash)
    texts = list(pos_texts) + list(neg_texts)
    y = np.concatenate([np.ones(len(pos_texts)), np.zeros(len(neg_texts))])
    n = len(texts)
    if class_balance:
        sw = np.where(y == 1, n / (2 * len(pos_texts)), n / (2 * len(neg_texts)))
    else:
        sw = np.ones(n)
    indptr, cols, vals = feats.matrix(texts)
    w = np.zeros(num_features, dtype=np.float64)
    b = 0.0
    rng = np.random.default_rng(seed)
    bs = n if batch_size <= 0 else min(batch_size, n)
    steps_per_epoch = -(-n // bs)
    total, t = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, bs):
            rows = order[start : start + bs]
            pos, local = _gather_rows(indptr, rows)
            c, v = cols[pos], vals[pos]
            z = np.bincount(local, weights=v * w[c], minlength=len(rows)) + b
            g = (_sigmoid(z) - y[rows]) * sw[rows] / len(rows)  # d(mean loss)/d(logit)
            eta = lr * (1.0 - t / total)
            if l2:
                w *= 1.0 - eta * l2
            np.add.at(w, c, -eta * v * g[local])  # sequential, so deterministic
            b -= eta * float(g.sum())
            t += 1
    return HashedLogReg(feats, w, b)


# -- evaluation ---------------------------------------------------------------------------------------------


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank statistic (ties get average ranks); nan without both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_s = scores[order]
    bounds = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(scores)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # average of 1-based ranks s+1 .. e
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def evaluate(model: HashedLogReg, pos_texts: Sequence[str], neg_texts: Sequence[str]) -> dict[str, float]:
    """Accuracy (at score 0.5) and ROC AUC of `model` on labelled texts."""
    p = model.predict_proba(list(pos_texts) + list(neg_texts))
    y = np.concatenate([np.ones(len(pos_texts), bool), np.zeros(len(neg_texts), bool)])
    acc = float(np.mean((p >= 0.5) == y)) if len(y) else float("nan")
    return {"accuracy": acc, "auc": roc_auc(p, y), "n_pos": len(pos_texts), "n_neg": len(neg_texts)}


def text_digest(text: str) -> bytes:
    """16-byte BLAKE2b of a text (held-out split, subsampling and the training-data key all use it)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def is_heldout(digest: bytes) -> bool:
    """The deterministic held-out 10%: a stable hash of the text, never the document's position."""
    return int.from_bytes(digest[:8], "little") % HOLDOUT_BUCKETS == 0


# -- deterministic Pareto sampling (GPT-3) ------------------------------------------------------------------


def pareto_draws(ids: Sequence[str], seed: int, alpha: float) -> np.ndarray:
    """One Pareto(alpha) draw per document id, in NumPy's `np.random.pareto` (Lomax) convention.

    P(X > x) = (1 + x)^-alpha, so X = (1 - U)^(-1/alpha) - 1 for U uniform on (0, 1) (inverse CDF); U comes
    from BLAKE2b(seed, id), so a document gets the same draw in any order, batch or process.
    """
    out = np.empty(len(ids), dtype=np.float64)
    inv = -1.0 / alpha
    for i, doc_id in enumerate(ids):
        d = hashlib.blake2b(f"{seed}\x1f{doc_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
        # 52 random bits: u = (k + 0.5) / 2^52 and 1 - u are exact floats strictly inside (0, 1)
        u = ((int.from_bytes(d, "little") >> 12) + 0.5) / 2.0**52
        out[i] = math.pow(1.0 - u, inv) - 1.0
    return out


def pareto_keep_probability(score: float | np.ndarray, alpha: float) -> np.ndarray:
    """P(keep) under GPT-3's rule X > 1 - score with P(X > x) = (1 + x)^-alpha: (2 - score)^-alpha."""
    return np.power(2.0 - np.asarray(score, dtype=np.float64), -alpha)


# -- the filter ---------------------------------------------------------------------------------------------


class ClassifierMode(StrEnum):
    """How a score becomes a decision."""

    pareto = "pareto"  # GPT-3: keep iff np.random.pareto(alpha) > 1 - score, drawn per document id
    threshold = "threshold"  # keep iff score >= threshold


_HYPER = (
    "ngram_max",
    "num_features",
    "binary",
    "sign_hash",
    "l2",
    "epochs",
    "lr",
    "batch_size",
    "seed",
    "class_balance",
)


@dataclass
class QualityClassifierParams:
    # curated sources (GPT-3: WebText, Wikipedia, books) and raw ones (GPT-3: unfiltered Common Crawl)
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    # word uni+bigrams (GPT-3 used Spark's unigram HashingTF; bigrams are a cheap gain)
    ngram_max: int = bounded(2, ge=1)
    num_features: int = bounded(2**18, ge=2)  # Spark HashingTF's default numFeatures (the tool GPT-3 used)
    binary: bool = False  # False: term frequencies (HashingTF's default); True: presence
    sign_hash: bool = True  # signed hashing, Weinberger et al. 2009 (unbiased under collisions)
    # L2 penalty on the weights (workbench default; GPT-3 does not report one)
    l2: float = bounded(1e-6, ge=0)
    # passes and initial step (decayed linearly to 0, fastText-style): workbench defaults, chosen on
    # synthetic overlapping-vocabulary data (rows are unit-norm and the gradient is a batch mean)
    epochs: int = bounded(10, ge=1)
    lr: float = bounded(10.0, gt=0)
    batch_size: int = bounded(32, ge=0)  # documents per gradient step; 0 = full batch (workbench default)
    seed: int = bounded(0, ge=0)  # training shuffle and Pareto draws
    # cap per class (lowest text hashes first; null: all): bounds training time and the sparse matrix's
    # memory (~16 bytes per distinct n-gram per document); workbench default
    max_train_docs_per_class: int | None = bounded(20_000, ge=2)
    class_balance: bool = True  # each class is half of the loss, so 0.5 is the neutral score
    # GPT-3: pareto sampling; threshold: keep iff score >= threshold
    mode: ClassifierMode = ClassifierMode.pareto
    threshold: float = bounded(0.5, ge=0, le=1)  # mode=threshold: keep iff score >= threshold
    pareto_alpha: float = bounded(9.0, gt=0)  # GPT-3 App. A: keep iff np.random.pareto(9) > 1 - score

    def check(self, where: str) -> None:
        for key in ("positive", "negative"):
            names = getattr(self, key)
            if not names or not all(names):
                raise must(key_of(where, key), names, "a non-empty list of source names")
            if len(set(names)) != len(names):
                raise must(key_of(where, key), names, "a list that names each source once")
        shared = sorted(set(self.positive) & set(self.negative))
        if shared:
            raise must(
                key_of(where, "negative"),
                self.negative,
                f"disjoint from positive (shares {', '.join(shared)})",
            )
        for key in ("l2", "lr", "pareto_alpha"):
            if not math.isfinite(getattr(self, key)):
                raise must(key_of(where, key), getattr(self, key), "a finite number")


@register
class QualityClassifier(Filter):
    """Keep documents that look like the `positive` sources rather than the `negative` ones (GPT-3 App. A)."""

    name = "quality_classifier"
    Params = QualityClassifierParams
    source_params = ("positive", "negative")

    # everything that changes the trained weights, hence the scores (mode/threshold/pareto_alpha only decide;
    # seed also seeds the Pareto draws, but it retrains, so it is a signal key)
    signal_keys = ("positive", "negative", "max_train_docs_per_class", *_HYPER)  # what training depends on

    def __init__(self, params: Any = None, label: str | None = None) -> None:
        super().__init__(params, label)
        self.model: HashedLogReg | None = None
        self.training_digest: str | None = None
        self.stats: dict[str, Any] = {}

    def prepare(self, source_texts: Callable[[str], list[str]]) -> None:
        """Train on the named sources' training-split texts; a named source without texts is a ValueError."""
        p = self.params
        classes: dict[str, list[tuple[bytes, str]]] = {}
        h = hashlib.blake2b(digest_size=16)
        for label in ("positive", "negative"):
            docs: list[tuple[bytes, str]] = []
            for name in getattr(p, label):
                texts = source_texts(name)
                if not texts:
                    raise ValueError(
                        f"{label} source {name!r} has no training texts; the classifier needs some"
                    )
                docs.extend((text_digest(t), t) for t in texts)
            # order-free: the model depends on the set of texts, not on their order
            docs.sort(key=lambda d: d[0])
            h.update(label.encode() + b"\x00" + len(docs).to_bytes(8, "little"))
            for d, _ in docs:
                h.update(d)
            if p.max_train_docs_per_class is not None:
                docs = docs[: p.max_train_docs_per_class]  # the lowest text hashes: a deterministic sample
            classes[label] = docs
        train = {k: [t for d, t in v if not is_heldout(d)] for k, v in classes.items()}
        held = {k: [t for d, t in v if is_heldout(d)] for k, v in classes.items()}
        for label, texts in train.items():
            if not texts:
                raise ValueError(
                    f"{label}={getattr(p, label)!r}: every document fell in the 10% held out; add documents"
                )
        self.model = train_classifier(
            train["positive"],
            train["negative"],
            **{k: getattr(p, k) for k in _HYPER},
        )
        self.training_digest = h.hexdigest()
        self.stats = {
            "train": {k: len(v) for k, v in train.items()},
            "heldout": evaluate(self.model, held["positive"], held["negative"]),
            "train_metrics": evaluate(self.model, train["positive"], train["negative"]),
        }

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The trained weights (an array), and the bias, feature settings, data digest and statistics (JSON)."""
        if self.model is None:
            raise RuntimeError("quality_classifier: nothing to store before prepare()")
        meta = {
            "bias": self.model.bias,  # a JSON float round-trips exactly (shortest repr)
            "features": dataclasses.asdict(self.model.features),
            "training_digest": self.training_digest,
            "stats": self.stats,
        }
        return {"weights": self.model.weights}, meta

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        features = HashedFeatures(**meta["features"])
        weights = np.asarray(arrays["weights"], dtype=np.float64)
        if weights.shape != (features.num_features,):
            raise ValueError(f"stored weights have shape {weights.shape}, not ({features.num_features},)")
        self.model = HashedLogReg(features, weights, float(meta["bias"]))
        self.training_digest = meta["training_digest"]
        self.stats = dict(meta["stats"])

    def extra_signal_spec(self) -> dict[str, Any]:
        """The training data's digest and the trained weights' digest (None before `prepare`: a key computed
        then, like the mixture's, must cover the sources' contents itself)."""
        return {
            "training_data": self.training_digest,
            "weights": self.model.digest() if self.model is not None else None,
        }

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Column "score": P(positive | text), float32."""
        if self.model is None:
            raise RuntimeError("quality_classifier: call prepare(source_texts) before signals() (it trains)")
        return {"score": self.model.predict_proba(texts).astype(np.float32)}

    def decide(self, columns: Mapping[str, np.ndarray], ctx: DecideContext) -> np.ndarray:
        """ "low_quality" for a dropped document: score < threshold, or GPT-3's Pareto rule not met."""
        p = self.params
        if p.mode == "threshold":
            # in the column's float32, so a threshold written as 0.7 keeps a score stored as float32(0.7)
            keep = np.asarray(columns["score"], dtype=np.float32) >= np.float32(p.threshold)
            return np.where(keep, "", REASON).astype(object)
        score = np.asarray(columns["score"], dtype=np.float64)
        if len(ctx.ids) != len(score):
            raise ValueError(f"quality_classifier: {len(ctx.ids)} ids for {len(score)} scores")
        # Brown et al. 2020 App. A: keep iff np.random.pareto(alpha) > 1 - document_score
        keep = pareto_draws(ctx.ids, p.seed, p.pareto_alpha) > 1.0 - score
        return np.where(keep, "", REASON).astype(object)

    def reasons(self) -> list[str]:
        return [REASON]

    def describe(self) -> list[str]:
        p = self.params
        lines = []
        if self.model is not None:
            tr, ho = self.stats["train"], self.stats["heldout"]
            lines.append(
                f"trained on {tr['positive']} positive ({', '.join(p.positive)}) vs {tr['negative']} negative "
                f"({', '.join(p.negative)}) documents; hashed 1..{p.ngram_max}-grams into {p.num_features} features"
            )
            lines.append(
                f"held-out ({ho['n_pos']} + {ho['n_neg']} docs, 1 in {HOLDOUT_BUCKETS} by text hash): "
                f"accuracy {_fmt(ho['accuracy'])}, AUC {_fmt(ho['auc'])}; "
                f"train accuracy {_fmt(self.stats['train_metrics']['accuracy'])}"
            )
        if p.mode == "threshold":
            lines.append(f"keep iff score >= {p.threshold}")
        else:
            k = [float(pareto_keep_probability(s, p.pareto_alpha)) for s in (1.0, 0.9, 0.5, 0.0)]
            lines.append(
                f"Pareto sampling (GPT-3, alpha={p.pareto_alpha}): P(keep | score s) = (2 - s)^-{p.pareto_alpha}; "
                f"s=1: {k[0]:.3f}, s=0.9: {k[1]:.3f}, s=0.5: {k[2]:.3f}, s=0: {k[3]:.4f}"
            )
        return lines


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"
