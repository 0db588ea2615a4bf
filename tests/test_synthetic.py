"""Synthetic sources: verified procedural problems, noisy copies of a base corpus, and a checkpoint teacher."""

from __future__ import annotations

import ast
import operator
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

import workbench
from workbench.data import synthetic
from workbench.data.corpus import Doc, Skips, embedded_documents
from workbench.data.synthetic import GENERATORS, VerificationError, apportion, generate, inject, junk_text
from workbench.data.teacher import drop_reason, repeated_fraction, sample_documents, teacher_generations

# ---------------------------------------------------------------------------------------------- independent checks

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _py_value(node: ast.AST) -> int:
    """Python's own parse of the expression, evaluated over its AST (a route independent of the module's)."""
    if isinstance(node, ast.Expression):
        return _py_value(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_py_value(node.left), _py_value(node.right))
    raise AssertionError(f"unexpected node {ast.dump(node)}")


def _check_arithmetic(text: str) -> list[str]:
    blocks = text.split("\n\n")
    for block in blocks:
        m = re.fullmatch(r"Q: ([0-9+\-*() ]+) = \?\nA: (-?\d+)", block)
        assert m is not None, block
        assert _py_value(ast.parse(m.group(1), mode="eval")) == int(m.group(2)), block
    return blocks


def _check_sorting(text: str) -> list[str]:
    lines = text.split("\n")
    for line in lines:
        m = re.fullmatch(r"sort: \[(.*)\] -> \[(.*)\]", line)
        assert m is not None, line
        given, answer = m.group(1).split(", "), m.group(2).split(", ")
        if all(x.isdigit() for x in given):
            given, answer = [int(x) for x in given], [int(x) for x in answer]
        assert answer == sorted(given), line
    return lines


def _check_string(text: str) -> list[str]:
    lines = text.split("\n")
    for line in lines:
        if m := re.fullmatch(r"count '(.)' in (.+) -> (\d+)", line):
            assert int(m.group(3)) == m.group(2).count(m.group(1)), line
            continue
        m = re.fullmatch(r"(\w+): (.+) -> (.+)", line)
        assert m is not None, line
        task, s, answer = m.groups()
        expected = {
            "reverse": s[::-1],
            "upper": s.upper(),
            "palindrome": "yes" if s == s[::-1] else "no",
            "length": str(len(s)),
        }[task]
        assert answer == expected, line
    return lines


CHECKS = {"arithmetic": _check_arithmetic, "sorting": _check_sorting, "string": _check_string}


# ---------------------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("generator", GENERATORS)
def test_every_answer_checks_out_and_documents_are_tagged(generator):
    docs = generate(generator, 12, seed=3, params={"problems_per_doc": 6}, source="syn")
    assert [d.id for d in docs] == [f"syn:{generator}:{i:06d}" for i in range(12)]
    assert {d.path for d in docs} == {f"synthetic:{generator}"}
    assert {d.source for d in docs} == {"syn"}
    for doc in docs:
        assert len(CHECKS[generator](doc.text)) == 6
    assert docs.counts == {"docs": 12, "problems": 72}


def test_known_example_and_evaluator():
    synthetic._verify_arithmetic("Q: 37 * (12 - 5) = ?\nA: 259")
    with pytest.raises(VerificationError, match="37"):
        synthetic._verify_arithmetic("Q: 37 * (12 - 5) = ?\nA: 258")
    assert synthetic.evaluate_expression("37 * (12 - 5)") == 259
    assert synthetic.evaluate_expression("2 - 3 - 4") == -5
    assert synthetic.evaluate_expression("2 - (3 - 4)") == 3
    assert synthetic.evaluate_expression("2 * 3 + 4 * 5") == 26
    with pytest.raises(ValueError, match="unexpected end"):
        synthetic.evaluate_expression("(1 + 2")
    with pytest.raises(ValueError, match="unbalanced"):
        synthetic.evaluate_expression("(1 + 2 3")


def test_rendering_keeps_the_tree_meaning():
    n = synthetic._Node
    minus = n(op="-", left=n(value=12), right=n(value=5))
    assert n(op="*", left=n(value=37), right=minus).render() == "37 * (12 - 5)"
    assert n(op="-", left=n(value=9), right=minus).render() == "9 - (12 - 5)"
    assert n(op="+", left=n(value=9), right=minus).render() == "9 + 12 - 5"
    assert n(op="-", left=minus, right=n(value=1)).render() == "12 - 5 - 1"


def test_a_wrong_answer_raises_instead_of_being_emitted(monkeypatch):
    monkeypatch.setattr(synthetic._Node, "evaluate", lambda self: 7)
    with pytest.raises(VerificationError, match="arithmetic problem failed its check"):
        generate("arithmetic", 1, seed=0)
    monkeypatch.setattr(synthetic, "_check_string_answer", lambda *args: False)
    with pytest.raises(VerificationError, match="string problem failed its check"):
        generate("string", 1, seed=0)


def test_params_shape_the_problems():
    docs = generate("arithmetic", 5, 0, {"digits": 1, "ops": "+", "min_operands": 3, "max_operands": 3})
    for block in _check_arithmetic("\n\n".join(d.text for d in docs)):
        expr = block.split(" = ")[0][3:]
        assert re.fullmatch(r"\d \+ \d \+ \d", expr), expr
    words = generate("sorting", 3, 0, {"kind": "word", "min_len": 4, "max_len": 4})
    for line in _check_sorting("\n".join(d.text for d in words)):
        assert len(line.split(" -> ")[0].split(", ")) == 4 and not re.search(r"\d", line)
    strings = generate("string", 3, 0, {"tasks": ["reverse"], "problems_per_doc": 2})
    assert all(line.startswith("reverse: ") for d in strings for line in _check_string(d.text))


def test_same_seed_same_docs_other_seed_other_docs():
    for generator in GENERATORS:
        assert generate(generator, 4, 11) == generate(generator, 4, 11)
        assert generate(generator, 6, 11)[:4] == generate(generator, 4, 11)  # doc i ignores n_docs
        assert [d.text for d in generate(generator, 4, 12)] != [d.text for d in generate(generator, 4, 11)]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: generate("algebra", 1, 0),
            "generator='algebra' is not allowed; choose one of: arithmetic, sorting, string",
        ),
        (
            lambda: generate("sorting", 1, 0, {"lenght": 3}),
            "synthetic.sorting.lenght: unknown key; keys allowed in synthetic.sorting:",
        ),
        (lambda: generate("arithmetic", 1, 0, {"ops": "/"}), "ops='/' must be a non-empty subset"),
        (lambda: generate("string", 1, 0, {"min_len": 5, "max_len": 2}), "min_len=5 must be <= max_len=2"),
        (lambda: inject([], 1, 0, {"dupes": 1}), "synthetic.inject.dupes: unknown key"),
        (lambda: inject([], 1, 0, {"near": 2}), "near=2.0 must be in [0, 1]"),
        (
            lambda: inject([], 1, 0, {"junk": 1.5}, where="data.mixture.sources.dirt.params"),
            "data.mixture.sources.dirt.params.junk=1.5 must be in [0, 1]",
        ),
    ],
)
def test_unknown_generator_or_param_is_a_one_line_error(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- noisy copies


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


@pytest.fixture(scope="module")
def word_base() -> list[Doc]:
    rng = random.Random(5)
    return [
        Doc(
            f"base:{k}",
            "base",
            f"b{k}.txt",
            " ".join(f"w{rng.randrange(10**6)}" for _ in range(800)),
            f"g{k}",
        )
        for k in range(6)
    ]


def test_apportion_is_exact():
    assert apportion(10, [0.4, 0.4, 0.2]) == [4, 4, 2]
    assert apportion(7, [1, 1, 1]) == [3, 2, 2]
    assert apportion(5, [0.0, 1.0, 0.0]) == [0, 5, 0]


def test_inject_counts_ids_and_kinds(word_base):
    docs = inject(word_base, 20, seed=1, source="noisy")
    by_id = {d.id: d for d in word_base}
    kinds = [d.id.split(":")[1] for d in docs]
    assert Counter(kinds) == {"exact": 8, "near": 8, "junk": 4}
    assert {k: docs.counts[k] for k in ("exact", "near", "junk")} == {"exact": 8, "near": 8, "junk": 4}
    assert sum(v for k, v in docs.counts.items() if k.startswith("junk:")) == 4
    assert [d.id for d in docs] == [f"noisy:{k}:{i:06d}" for i, k in enumerate(kinds)]
    for doc, kind in zip(docs, kinds, strict=True):
        prefix = f"synthetic:inject:{kind}:"
        assert doc.path.startswith(prefix) and doc.source == "noisy"
        original = by_id[doc.path.removeprefix(prefix)]
        if kind == "exact":
            assert doc.text == original.text and doc.group == original.group
        elif kind == "near":
            assert doc.text != original.text and doc.group == original.group
            assert 0.8 <= _jaccard(doc.text, original.text) <= 0.9  # edit_rate 0.05 in runs of 5 words
        else:
            assert doc.group == "" and _jaccard(doc.text, original.text) < 0.2


def test_inject_is_deterministic_and_follows_ids_not_input_order(word_base):
    first = inject(word_base, 12, seed=4)
    assert inject(list(reversed(word_base)), 12, seed=4) == first
    assert first.counts == inject(word_base, 12, seed=4).counts
    assert [d.text for d in inject(word_base, 12, seed=5)] != [d.text for d in first]


def test_near_copy_band_follows_the_edit_rate(word_base):
    text = word_base[0].text
    light = synthetic.near_copy(text, random.Random(0), 0.02, 5)
    heavy = synthetic.near_copy(text, random.Random(0), 0.2, 5)
    assert 0.9 < _jaccard(light, text) < 1.0
    assert _jaccard(heavy, text) < 0.7


def test_inject_over_the_embedded_corpus_only_junk_params():
    base, _, _ = embedded_documents(["code", "prose"], False, Skips(), limit=12)
    docs = inject(base, 6, seed=0, params={"exact": 0.5, "near": 0, "junk": 0.5, "junk_styles": ["repeat"]})
    assert docs.counts == {"exact": 3, "near": 0, "junk": 3, "junk:repeat": 3}
    originals = {d.id: d for d in base}
    for doc in docs:
        kind, base_id = doc.path.split(":", 3)[2:]
        if kind == "exact":
            assert doc.text == originals[base_id].text
        else:
            lines = doc.text.split("\n")
            assert len(lines) >= 20 and len(set(lines)) == 1 and lines[0] in originals[base_id].text


def test_junk_styles_are_junk():
    rng = random.Random(0)
    base = "a line\nanother line\n" * 50
    boiler = junk_text("boilerplate", base, rng).split("\n")
    assert set(boiler) <= set(synthetic.BOILERPLATE) and len(boiler) > 5
    lorem = junk_text("lorem", base, rng)
    assert set(lorem.lower().rstrip(".").split()) <= set(synthetic.LOREM)
    control = junk_text("control", base, rng)
    assert sum(ord(c) < 32 or ord(c) == 127 for c in control) / len(control) > 0.6 and "\x00" not in control
    noise = junk_text("noise", base, rng)
    assert len(noise) == len(base) and all(32 <= ord(c) < 127 for c in noise)
    mash = junk_text("mash", base, rng)
    assert set(mash) <= set("".join(synthetic.KEYBOARD_ROWS) + " ")
    with pytest.raises(ValueError, match="junk style 'spam' is unknown"):
        junk_text("spam", base, rng)


# ---------------------------------------------------------------------------------------------- teacher


def test_drop_reasons():
    p = {"min_chars": 10, "repeat_ngram": 4, "max_repeat": 0.5}
    assert drop_reason(" \n ", p) == "empty"
    assert drop_reason("short", p) == "too_short"
    assert drop_reason("abab" * 10, p) == "repetitive"
    assert drop_reason("the quick brown fox jumps", p) == ""
    assert repeated_fraction("abcabc", 3) == pytest.approx(1 - 3 / 4)  # abc bca cab abc: one repeat


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_cache) -> str:
    tmp = tmp_path_factory.mktemp("teacher")
    cfg = workbench.compose(
        "dense_debug",
        [
            f"output_dir={tmp / 'out'}",
            f"data.cache_dir={data_cache}",
            "trainer.progress_bar=false",
            "budget.steps=5",
            "tracking=none",
        ],
    )
    return workbench.run(cfg, print_summary=False).checkpoint


SAMPLING = {"max_new_tokens": 24, "min_chars": 1, "max_repeat": 1.0}


def test_checkpoint_carries_config_and_tokenizer(checkpoint):
    meta = torch.load(checkpoint, map_location="cpu", weights_only=True)["workbench"]
    assert meta["config"]["model"]["d_model"] == 64 and meta["config"]["model"]["vocab_size"] == 257
    assert meta["tokenizer_dir"] == str(Path(checkpoint).parent.parent / "tokenizer")
    assert (Path(meta["tokenizer_dir"]) / "workbench_tokenizer.json").is_file()


def test_teacher_samples_are_deterministic_and_tagged(checkpoint):
    first = sample_documents(checkpoint, 4, seed=0, params=SAMPLING, generation=2, source="t")
    again = sample_documents(checkpoint, 4, seed=0, params=SAMPLING, generation=2, source="t")
    assert first == again and len(first) == 4
    assert [d.id for d in first] == [f"t:gen2:{i:06d}" for i in range(4)]
    assert {d.path for d in first} == {"synthetic:teacher:gen2"} and {d.source for d in first} == {"t"}
    assert first.counts == {"sampled": 4, "kept": 4, "empty": 0, "too_short": 0, "repetitive": 0}
    other = sample_documents(checkpoint, 4, seed=1, params=SAMPLING, generation=2, source="t")
    assert [d.text for d in other] != [d.text for d in first]
    prompted = sample_documents(checkpoint, 3, seed=0, params={**SAMPLING, "prompts": ["def ", "class "]})
    assert [d.text[:4] for d in prompted] == ["def ", "clas", "def "]


def test_teacher_drops_are_counted(checkpoint):
    docs = sample_documents(
        checkpoint, 3, seed=0, params={"max_new_tokens": 8, "min_chars": 1000, "max_tries": 2}
    )
    assert list(docs) == []  # every sample dropped: 2 tries x 3 docs, at most 8 tokens each
    assert (docs.counts["sampled"], docs.counts["kept"], docs.counts["repetitive"]) == (6, 0, 0)
    assert docs.counts["empty"] + docs.counts["too_short"] == 6


def test_replace_and_accumulate_generations(checkpoint, tmp_path):
    second = tmp_path / "gen2.ckpt"
    shutil.copy(checkpoint, second)
    chain = [checkpoint, str(second)]
    replaced = teacher_generations(chain, 3, seed=0, mode="replace", params=SAMPLING)
    assert [d.id for d in replaced] == [f"teacher:gen2:{i:06d}" for i in range(3)]
    assert replaced.counts["gen2/kept"] == 3 and "gen1/kept" not in replaced.counts
    accumulated = teacher_generations(chain, 3, seed=0, mode="accumulate", params=SAMPLING)
    assert [d.path for d in accumulated] == ["synthetic:teacher:gen1"] * 3 + ["synthetic:teacher:gen2"] * 3
    assert accumulated[3:] == replaced  # generation 2 samples the same way in both modes


def test_teacher_errors_name_what_is_wrong(checkpoint, tmp_path):
    missing = str(tmp_path / "nope.ckpt")
    with pytest.raises(ValueError, match=re.escape(f"teacher checkpoint {missing} does not exist")):
        teacher_generations([checkpoint, missing], 2, seed=0, mode="accumulate")
    with pytest.raises(ValueError, match=re.escape(missing)):
        sample_documents(missing, 2, seed=0)
    with pytest.raises(
        ValueError, match="teacher.mode='mix' is not allowed; choose one of: replace, accumulate"
    ):
        teacher_generations([checkpoint], 2, seed=0, mode="mix")
    with pytest.raises(ValueError, match="teacher.temp: unknown key; keys allowed in teacher:"):
        sample_documents(checkpoint, 2, seed=0, params={"temp": 0.5})
    with pytest.raises(ValueError, match="teacher.top_k=-1 must be >= 0"):
        sample_documents(checkpoint, 2, seed=0, params={"top_k": -1})
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "workbench": {"mlflow_run_id": None}}, old)
    with pytest.raises(ValueError, match="has no workbench config"):
        sample_documents(str(old), 2, seed=0)


def test_teacher_source_in_a_mixture_accumulates_generations(checkpoint, data_cache, tmp_path):
    """A teacher source through the whole pipeline: samples of two generations, tagged, filtered, counted."""
    import dataclasses

    from workbench.config.schema import MixtureConfig, SourceConfig
    from workbench.data.mixture import build_mixture

    data = workbench.compose("dense_debug", [f"data.cache_dir={tmp_path}", "data.max_docs=null"]).data
    params = {"max_new_tokens": 64, "min_chars": 1, "max_repeat": 1.0}
    sources = {
        "prose": SourceConfig(embedded_kinds=["prose"], max_docs=100),
        "teacher": SourceConfig(
            kind="teacher",
            checkpoints=[checkpoint, checkpoint],
            mode="accumulate",
            docs=3,
            params=params,
        ),
    }
    mix = dataclasses.replace(
        data,
        source="mixture",
        mixture=MixtureConfig(sources=sources, filters={"exact_dedup": {}}, validation=["prose"]),
    )
    report = build_mixture(mix, progress=False).report
    teacher = report["sources"]["teacher"]
    assert teacher["docs_in"] == 6  # 3 samples from each of the two generations
    assert (
        teacher["docs_in"] == teacher["docs_kept"] + sum(teacher["removed"].values()) + teacher["sampled_out"]
    )
    ds = build_mixture(mix, progress=False).corpus.dataset
    paths = sorted({p for p, s in zip(ds["path"], ds["source"], strict=True) if s == "teacher"})
    assert set(paths) <= {"synthetic:teacher:gen1", "synthetic:teacher:gen2"}
