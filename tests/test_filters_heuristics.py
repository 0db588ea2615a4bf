"""Rule-based filters (gopher, web, code, toxicity, charset in workbench/data/filters/): one hand-built document per
rule, chunking, config."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from workbench.config import ConfigError
from workbench.data.filters import REGISTRY, DecideContext, Filter, build_filter
from workbench.data.filters.base import concat_columns
from workbench.data.filters.code import _alnum_count
from workbench.data.filters.gopher import GopherQuality, ngram_char_shares

FIXTURE_WORDS = Path(__file__).parent / "fixtures" / "toxic_words.txt"
NAMES = ("gopher_quality", "gopher_repetition", "c4", "fineweb", "code", "toxicity", "charset")

# Six lines of plain prose: passes every filter with its default parameters.
PROSE = (
    "The committee met on a cold morning to review the annual budget of the small town.\n"
    "Several members argued that the library needed new windows before the winter storms arrived.\n"
    "Others believed the money would be better spent on repairing the old bridge near the mill.\n"
    "After a long discussion, the chair proposed a compromise that would fund both projects in stages.\n"
    "The vote was close, but the proposal passed with a narrow majority and everyone went home.\n"
    "Work on the windows will begin next month, and the bridge repairs are planned for the spring.\n"
)
PROSE_LINES = PROSE.splitlines()

CODE = 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n'


def make(name: str, **params) -> Filter:
    return REGISTRY[name](REGISTRY[name].Params(**params))


def ctx(n: int) -> DecideContext:
    return DecideContext(ids=[str(i) for i in range(n)], sources=["test"] * n, texts=lambda idx: [])


def reason(f: Filter, text: str) -> str:
    return str(f.decide(f.signals([text]), ctx(1))[0])


def fired(f: Filter, text: str) -> list[str]:
    """Every rule of `f` that fires on `text` (not just the reported first one)."""
    return [r for r, mask in f.rules(f.signals([text])) if mask[0]]


def assert_only(f: Filter, text: str, expected: str) -> None:
    assert fired(f, text) == [expected]
    assert reason(f, text) == expected


def filler(count: int, start: int = 0) -> list[str]:
    """Distinct 6-character words."""
    return [f"w{i:05d}" for i in range(start, start + count)]


# ---------------------------------------------------------------------------------------------- every filter


@pytest.mark.parametrize("name", NAMES)
def test_clean_prose_passes_every_filter(name):
    f = make(name, words=["badword1"]) if name == "toxicity" else make(name)
    assert fired(f, PROSE) == []
    assert reason(f, PROSE) == ""


@pytest.mark.parametrize("name", NAMES)
def test_reasons_name_every_rule_and_describe(name):
    f = make(name)
    assert [r for r, _ in f.rules(f.signals([PROSE]))] == f.reasons()
    assert all(re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", r) for r in f.reasons())
    assert f.describe() and all(isinstance(line, str) and "\n" not in line for line in f.describe())


MIXED = [
    PROSE,
    CODE,
    "",
    "   \n",
    "Привет, мир. Это тест.",
    "a,b\n1,2\n3,4\n",
    "x\x00y",
    "caf\ufffd au lait",
    PROSE + PROSE,
    "lorem ipsum dolor sit amet { }",
    "badword1 and slurword",
    "\n\n- one\n- two\n...\n",
]


@pytest.mark.parametrize("name", NAMES)
def test_signals_are_the_same_on_chunks(name):
    f = make(name, words_file=str(FIXTURE_WORDS)) if name == "toxicity" else make(name)
    whole = f.signals(MIXED)
    parts = concat_columns([f.signals(MIXED[:5]), f.signals(MIXED[5:])])
    assert sorted(whole) == sorted(parts)
    for key, col in whole.items():
        assert len(col) == len(MIXED)
        assert col.dtype in (np.float32, np.int32, np.int64, np.bool_), key
        assert parts[key].dtype == col.dtype
        np.testing.assert_array_equal(parts[key], col)
    empty = f.signals([])
    assert sorted(empty) == sorted(whole) and all(len(c) == 0 for c in empty.values())
    assert f.decide(empty, ctx(0)).shape == (0,)


def test_build_filter_rejects_unknown_key_and_bad_values():
    with pytest.raises(ConfigError) as e:
        build_filter({"type": "gopher_quality", "min_wordz": 30})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(
        "data.mixture.filters.gopher_quality.min_wordz: unknown key; keys allowed in "
        "data.mixture.filters.gopher_quality: type, enabled, min_words, "
    )
    with pytest.raises(ConfigError) as e:
        build_filter({"type": "gopher_quality", "min_words": -1})
    assert str(e.value) == "data.mixture.filters.gopher_quality.min_words=-1 must be >= 0"
    with pytest.raises(ConfigError) as e:
        build_filter({"type": "fineweb", "max_short_line_fraction": "half"})
    assert str(e.value) == "data.mixture.filters.fineweb.max_short_line_fraction='half' must be a number"
    with pytest.raises(ConfigError) as e:
        build_filter({"type": "charset", "scripts": ["klingon"]})
    assert str(e.value).startswith(
        "data.mixture.filters.charset.scripts[0]='klingon' is not allowed; choose one of: arabic, "
    )
    f = build_filter({"type": "gopher_quality", "min_words": 30})
    assert isinstance(f, GopherQuality) and f.params.min_words == 30


# ---------------------------------------------------------------------------------------------- gopher_quality


def test_gopher_quality_one_rule_each():
    f = make("gopher_quality")
    cols = f.signals([PROSE])
    assert int(cols["words"][0]) == 95 and int(cols["stop_words"][0]) == 7
    words = PROSE.split()
    assert_only(f, " ".join(words[:20]), "too_few_words")
    assert_only(f, PROSE * 1053, "too_many_words")  # 100,035 words
    assert_only(f, "it is a to be of an as at by " * 6, "short_words")
    assert_only(f, "the internationalization of characteristically " * 20, "long_words")
    assert_only(f, PROSE + " #news" * 15, "symbol_ratio")  # 15 '#' / 110 words
    assert_only(f, PROSE + " wait…" * 12, "symbol_ratio")  # 12 ellipses / 107 words
    assert_only(f, "".join(f"• {line}\n" for line in PROSE_LINES), "bullet_lines")
    assert_only(f, "".join(f"{line[:-1]}...\n" for line in PROSE_LINES), "ellipsis_lines")
    assert_only(f, PROSE + " 123" * 40, "non_alpha_words")  # 95 / 135 words with a letter
    no_stop = re.sub(r"\b(the|be|to|of|and|that|have|with)\b", "", PROSE, flags=re.IGNORECASE)
    assert_only(f, no_stop, "stop_words")
    assert int(f.signals([no_stop])["stop_words"][0]) == 0
    assert reason(make("gopher_quality", min_stop_words=0), no_stop) == ""


def test_gopher_quality_thresholds_are_inclusive():
    # 5 '#' in 50 words is exactly the 0.1 ratio: kept; one more word's '#' drops.
    f = make("gopher_quality")
    base = PROSE.split()[:45]
    at_limit = " ".join(base + ["#tag"] * 5)
    assert float(f.signals([at_limit])["hash_ratio"][0]) == pytest.approx(0.1)
    assert reason(f, at_limit) == ""
    assert reason(f, " ".join(base[:-1] + ["#tag"] * 6)) == "symbol_ratio"


# ------------------------------------------------------------------------------------------- gopher_repetition


def repeated_ngram(n: int, copies: int, gap: int) -> str:
    """`copies` of one n-gram of 5-letter words, each followed by `gap` distinct filler words, on one line."""
    gram = ["alpha", "bravo", "delta", "gamma", "omega", "sigma", "kappa", "theta", "tango", "pizza"][:n]
    words: list[str] = []
    for c in range(copies):
        words += gram + filler(gap, start=c * gap)
    return " ".join(words)


def twice(n: int, fillers: int) -> str:
    """One n-gram of 5-letter words twice, with `fillers` distinct 6-letter words around and between them."""
    gram = ["alpha", "bravo", "delta", "gamma", "omega", "sigma", "kappa", "theta", "tango", "pizza"][:n]
    fill = filler(fillers)
    half = fillers // 2
    return " ".join(fill[:half] + gram + fill[half : half + 1] + gram + fill[half + 1 :])


def test_gopher_repetition_lines_and_paragraphs():
    f = make("gopher_repetition")
    # 4 repeats of "ok" among 11 lines: 0.36 of the lines, 0.015 of the characters.
    lines = [PROSE_LINES[0], "ok", PROSE_LINES[1], "ok", PROSE_LINES[2], "ok", PROSE_LINES[3], "ok", "ok"]
    lines += PROSE_LINES[4:]
    doc = "\n".join(lines)
    assert float(f.signals([doc])["dup_line_fraction"][0]) == pytest.approx(4 / 11)
    assert_only(f, doc, "dup_lines")
    # One repeated 100-character line among 5: 0.2 of the lines (kept), 0.23 of the characters.
    url = "https://example.org/" + "x" * 80
    assert_only(f, "\n".join([url, *PROSE_LINES[:3], url]), "dup_line_chars")
    # Paragraphs [8 lines, "ok", "ok"]: 1 of 3 paragraphs repeats, 1 of 10 lines.
    extra = ["Nobody expected the meeting to end so early that evening.", "The next session is in May."]
    doc = "\n".join(PROSE_LINES + extra) + "\n\nok\n\nok\n"
    assert_only(f, doc, "dup_paragraphs")
    # An indented two-word paragraph twice: its indentation counts toward the paragraph's characters only.
    para = "alpha\n" + " " * 150 + "bravo"
    doc = "\n".join(PROSE_LINES[:3]) + f"\n\n{para}\n\n{para}\n\nfinal words\n\nthe end"
    assert_only(f, doc, "dup_paragraph_chars")


def test_gopher_repetition_ngrams():
    f = make("gopher_repetition")
    # "new york" between distinct words: 7 of 13 characters per period.
    assert_only(f, " ".join(w for i in range(20) for w in ("new", "york", f"w{i:05d}")), "top_2gram")
    assert_only(f, repeated_ngram(3, copies=10, gap=8), "top_3gram")  # 15/63 = 0.24; its 2-grams 0.16
    assert_only(f, repeated_ngram(4, copies=10, gap=13), "top_4gram")  # 20/98 = 0.20; its 3-grams 0.15
    # One n-gram twice, covering just above dup_<n>gram's threshold and at most the (n-1)-gram's.
    fillers = {5: 45, 6: 59, 7: 75, 8: 93, 9: 115, 10: 142}
    for n, count in fillers.items():
        doc = twice(n, count)
        share = float(f.signals([doc])[f"dup_{n}gram_char_fraction"][0])
        assert share == pytest.approx(10 * n / (10 * n + 6 * count), rel=1e-6)
        assert_only(f, doc, f"dup_{n}gram")


def test_ngram_shares_exact():
    # "aa b aa b aa": the 2-grams "aa b" and "b aa" both occur twice (the earliest wins the tie) and cover
    # "aa b aa b"; the 3-gram "aa b aa" occurs twice, overlapping itself, and covers every word; no 4-gram repeats.
    top, dup = ngram_char_shares("aa b aa b aa".split())
    assert top == [6 / 8, 1.0, 0.0]
    assert dup == [0.0] * 6
    # A 5-word sequence twice, overlapping ("x x x x x x"): every word is covered.
    top, dup = ngram_char_shares(["x"] * 6)
    assert top == [1.0, 1.0, 1.0] and dup == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert ngram_char_shares([]) == ([0.0] * 3, [0.0] * 6)


# ---------------------------------------------------------------------------------------------------------- c4


def test_c4_one_rule_each():
    f = make("c4")
    assert_only(f, PROSE + "Lorem ipsum dolor sit amet.\n", "lorem_ipsum")
    braces = PROSE + "Curly braces {like these} belong to code.\n"
    assert reason(f, braces) == ""  # drop_curly_brace is false by default
    assert_only(make("c4", drop_curly_brace=True), braces, "curly_brace")
    assert_only(f, "\n".join(PROSE_LINES[:2]), "too_few_sentences")
    assert reason(make("c4", drop_lorem_ipsum=False), PROSE + "lorem ipsum.\n") == ""


def test_c4_line_rules_decide_which_sentences_count():
    f = make("c4")
    doc = "\n".join(
        [
            *PROSE_LINES[:3],
            "Please enable JavaScript to view this page.",
            "Read our privacy policy before you continue.",
            "Too short.",
            "This line has no final punctuation",
            "Two sentences here. And one more!",
            "",
        ]
    )
    cols = f.signals([doc])
    got = {k: cols[k][0].item() for k in cols}
    assert got == {
        "lines": 8,
        "terminal_lines": 7,
        "javascript_lines": 1,
        "policy_lines": 1,
        "kept_lines": 4,
        "kept_sentences": 5,
        "lorem_ipsum": False,
        "curly_brace": False,
    }
    assert reason(f, doc) == ""
    assert reason(make("c4", min_sentences=6), doc) == "too_few_sentences"
    assert reason(make("c4", min_words_per_line=2), doc) == ""
    assert int(make("c4", min_words_per_line=2).signals([doc])["kept_sentences"][0]) == 6
    assert make("c4").reasons() == ["lorem_ipsum", "too_few_sentences"]


# ----------------------------------------------------------------------------------------------------- fineweb


def test_fineweb_one_rule_each():
    f = make("fineweb")
    assert_only(f, "\n".join(line.rstrip(".") for line in PROSE_LINES), "line_punct_ratio")
    short = [
        "The cat sat on the mat.",
        "A dog barked at night.",
        "Rain fell on the roof.",
        "We ate soup for lunch.",
        "She read a long book.",
        "He fixed the old car.",
        "They sang a sad song.",
        "Birds flew to the south.",
    ]
    assert_only(f, "\n".join(short), "short_line_ratio")
    assert_only(f, PROSE + PROSE_LINES[0], "char_dup_ratio")  # 83 of 633 characters repeat
    lists = [
        "Photosynthesis accelerates dramatically.",
        "Internationalization requires patience.",
        "Thermodynamics governs everything.",
        "Extraordinary circumstances arise.",
        "Unprecedented changes happened.",
        "Comprehensive documentation helps.",
        "Sophisticated instruments measure.",
        "Philosophical questions remain.",
    ]
    assert_only(f, "\n".join(lists) + "\n", "list_ratio")  # 8 newlines / 24 words
    assert float(f.signals(["\n".join(lists) + "\n"])["newline_word_ratio"][0]) == pytest.approx(1 / 3)


def test_fineweb_duplicate_threshold_is_the_one_fineweb_ran():
    # 0.01 (datatrove's FineWebQualityFilter, which built FineWeb), not the report text's 0.1: a 4% repeat drops.
    doc = PROSE + "Some closing words here.\nSome closing words here.\n"
    f = make("fineweb")
    assert float(f.signals([doc])["dup_line_char_fraction"][0]) == pytest.approx(
        24 / 592
    )  # 544 + 2 * 24 line characters
    assert reason(f, doc) == "char_dup_ratio"
    assert reason(make("fineweb", max_dup_line_char_fraction=0.1), doc) == ""


def test_c4_defaults_are_the_t5_papers_five_words_per_line_and_three_sentences():
    # Raffel et al. 2020 sec. 2.2 and TFDS c4_utils: lines of >= 5 words are kept; pages need >= 3 sentences.
    five = [
        "One two three four five.",
        "Six seven eight nine ten.",
        "Eleven twelve thirteen fourteen fifteen.",
    ]
    four = ["One two three four.", "Five six seven eight.", "Nine ten eleven twelve."]
    f = make("c4")
    assert int(f.signals(["\n".join(five)])["kept_sentences"][0]) == 3
    assert reason(f, "\n".join(five)) == ""  # 3 sentences of 5 words: kept
    assert int(f.signals(["\n".join(four)])["kept_lines"][0]) == 0  # 4-word lines do not count
    assert reason(f, "\n".join(four)) == "too_few_sentences"
    assert reason(f, "\n".join(five[:2])) == "too_few_sentences"


# -------------------------------------------------------------------------------------------------------- code


def test_code_one_rule_each():
    f = make("code")
    assert fired(f, CODE) == []
    assert_only(f, "# Code generated by protoc-gen-go. DO NOT EDIT.\n" + CODE, "auto_generated")
    assert reason(f, CODE * 3 + "# generated by hand, after the first five lines\n") == ""
    long_line = 'BLOB = "' + "a" * 1100 + '"\n'
    assert_only(f, long_line + "value = compute(name)\n" * 20, "max_line_length")
    wide = "result = " + " + ".join(f"component_{c}" for c in "abcdefghijklmn") + "\n"  # 185 characters
    assert_only(f, wide * 3, "mean_line_length")
    assert_only(f, "x = [\n" + "    (),\n" * 20 + "]\n", "alnum_fraction")
    assert_only(f, "".join(f"{i},{i * 2},{i * 3}\n" for i in range(10)), "data_lines")
    table = "TABLE = [\n" + "".join(f"    ({i}, {i + 1}, {i + 2}),\n" for i in range(101)) + "]\n"
    assert_only(f, table + "value = compute(name)\n" * 120, "data_run")
    cols = f.signals([table + "value = compute(name)\n" * 120])
    assert int(cols["data_line_run"][0]) == 101
    assert float(cols["data_line_fraction"][0]) == pytest.approx(101 / 223)


def test_code_line_counts():
    f = make("code")
    cols = f.signals(["ab\ncd\n", "ab\ncd", "", "\n"])
    np.testing.assert_array_equal(cols["max_line_length"], [2, 2, 0, 0])
    np.testing.assert_array_equal(cols["mean_line_length"], np.array([2, 2, 0, 0], dtype=np.float32))
    np.testing.assert_array_equal(cols["alnum_fraction"], np.array([4 / 6, 4 / 5, 0, 0], dtype=np.float32))
    assert _alnum_count("ab_c 12!é") == 6


# ---------------------------------------------------------------------------------------------------- toxicity


def test_toxicity_inline_list():
    f = make("toxicity", words=["badword1", "Rude Phrase"])
    docs = [
        "This has BadWord1 inside.",
        "badword12 and xbadword1 are other words.",
        "what a rude  phrase",
        "A rude phrase, then another RUDE PHRASE.",
        PROSE,
    ]
    cols = f.signals(docs)
    np.testing.assert_array_equal(cols["toxic_count"], [1, 0, 0, 2, 0])
    assert f.decide(cols, ctx(5)).tolist() == ["toxic_words", "", "", "toxic_words", ""]
    g = make("toxicity", words=["slurword"], max_count=100, max_fraction=0.5)
    assert_only(g, "slurword slurword hello", "toxic_fraction")  # 2 of 3 words
    assert reason(g, "slurword hello") == ""  # exactly 0.5


def test_toxicity_word_file(monkeypatch):
    monkeypatch.setenv("WORKBENCH_ROOT", str(Path(__file__).resolve().parents[1]))
    f = build_filter({"type": "toxicity", "words_file": "tests/fixtures/toxic_words.txt"})
    assert f.word_list == ["badword1", "rude phrase", "slurword"]
    docs = ["nothing to see", "a SLURWORD here", "# comments are not words", "rude phrase"]
    assert f.decide(f.signals(docs), ctx(4)).tolist() == ["", "toxic_words", "", "toxic_words"]
    assert f.reasons() == ["toxic_words", "toxic_fraction"]
    with pytest.raises(ConfigError) as e:
        build_filter({"type": "toxicity", "words_file": "tests/fixtures/missing.txt"})
    assert str(e.value).startswith(
        "data.mixture.filters.toxicity.words_file='tests/fixtures/missing.txt' must be "
    )
    assert "\n" not in str(e.value)


def test_toxicity_default_list_is_empty_and_cache_key_follows_the_file(tmp_path):
    f = make("toxicity")
    assert f.params.words == [] and reason(f, "badword1 slurword") == ""
    path = tmp_path / "words.txt"
    path.write_text("alpha\n", encoding="utf-8")
    before = make("toxicity", words_file=str(path)).signal_spec()
    path.write_text("alpha\nbeta\n", encoding="utf-8")
    after = make("toxicity", words_file=str(path)).signal_spec()
    assert before["words_file"] == after["words_file"] and before != after


# ----------------------------------------------------------------------------------------------------- charset


def test_charset_one_rule_each():
    f = make("charset")
    assert_only(f, "", "empty")
    assert_only(f, " \n\t ", "empty")
    assert_only(f, PROSE + "\x00", "binary")
    assert_only(f, PROSE + "\x01" * 6, "binary")  # 6 of 556 characters
    assert reason(f, PROSE + "\x01" * 5) == ""  # 5 of 555: under 1%
    assert reason(f, PROSE + "\t\f\r\n") == ""
    assert_only(f, (PROSE + "caf\xe9.").encode("latin-1").decode("utf-8", errors="replace"), "invalid_utf8")
    assert_only(f, "Привет, мир. Это короткий тест по-русски.", "script")
    assert reason(make("charset", scripts=["cyrillic"]), "Привет, мир. Это тест.") == ""
    assert reason(make("charset", scripts=["cyrillic"]), PROSE) == "script"
    assert_only(make("charset", max_bytes=10), "ééééééé", "too_large")  # 7 characters, 14 bytes
    assert reason(make("charset", max_bytes=14), "ééééééé") == ""


def test_charset_script_fractions():
    f = make("charset", scripts=["latin", "greek"])
    cols = f.signals(["abc αβγ где 123", "ab 漢字かな", "1234 !!", "Ελληνικά"])
    np.testing.assert_array_equal(
        cols["script_fraction"], np.array([6 / 9, 2 / 6, 1.0, 1.0], dtype=np.float32)
    )
    cjk = make("charset", scripts=["cjk"]).signals(["漢字かなカナ한국어 ab"])
    assert float(cjk["script_fraction"][0]) == pytest.approx(9 / 11)
    assert make("charset", scripts=["greek"]).signals(["plain ascii"])["script_fraction"][0] == 0.0


def test_charset_50mb_document_is_too_large():
    f = make("charset")
    doc = "a" * 50_000_000
    cols = f.signals([PROSE, doc])
    assert cols["bytes"].tolist() == [len(PROSE), 50_000_000]
    assert f.decide(cols, ctx(2)).tolist() == ["", "too_large"]


# -------------------------------------------------------------------------------------------------------- smoke


def test_all_filters_on_the_embedded_stdlib_code():
    from workbench.data.corpus import Skips, embedded_documents

    docs, _, _ = embedded_documents(["code"], False, Skips(), limit=200)
    texts = [d.text for d in docs]
    assert len(texts) == 200
    for name in NAMES:
        f = make(name, words_file=str(FIXTURE_WORDS)) if name == "toxicity" else make(name)
        reasons = f.decide(f.signals(texts), ctx(len(texts)))
        assert reasons.shape == (200,)
        assert set(reasons.tolist()) <= {"", *f.reasons()}, name
