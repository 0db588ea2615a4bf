"""Synthetic documents: procedural problems with verified answers, and noisy copies of a base corpus.

``generate("arithmetic" | "sorting" | "string", n_docs, seed)`` writes documents of ``problems_per_doc``
problems each. Every problem is rendered to text and then checked by an independent route (the arithmetic
answer comes from the expression tree and is re-derived by parsing the rendered text with a separate evaluator;
sorted lists are checked for order and multiset equality; string answers are recomputed without the builtins
that produced them); a failed check raises ``VerificationError``, so no wrong answer is ever emitted.

``inject(base, n_docs, seed, params)`` derives exact copies, near copies and junk from ``base`` documents, for
"corpus plus injected duplicates and junk" experiments on dedup and quality filters.

Both return ``SyntheticDocs``: a plain ``list[Doc]`` with a ``counts`` dict. Randomness is
``random.Random(<string seed>)`` per document (string seeds are hashed with SHA-512, never Python's ``hash()``),
so document ``i`` is the same whatever ``n_docs`` is.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from workbench.config.choices import SyntheticTask
from workbench.config.params import bounded, key_of, must, not_allowed, parse
from workbench.data.corpus import Doc

GENERATORS = tuple(SyntheticTask)
INJECT_KINDS = ("exact", "near", "junk")
JUNK_STYLES = ("noise", "mash", "repeat", "boilerplate", "control", "lorem")
STRING_TASKS = ("reverse", "upper", "count", "palindrome", "length")

WORDS = (
    "apple", "river", "stone", "cloud", "garden", "window", "silver", "market", "forest", "candle",
    "bridge", "letter", "orange", "planet", "rocket", "shadow", "summer", "winter", "violin", "yellow",
    "anchor", "butter", "castle", "dragon", "engine", "feather", "guitar", "harbor", "island", "jacket",
    "kitten", "lemon", "mirror", "needle", "oyster", "pepper", "quartz", "rabbit", "saddle", "tunnel",
    "umbrella", "valley", "walnut", "zipper", "beacon", "cactus", "desert", "falcon", "glacier", "hammer",
    "insect", "jungle", "kettle", "ladder", "meadow", "nectar", "orchid", "pencil", "quiver", "ribbon",
    "level", "radar", "civic", "kayak", "rotor", "noon", "refer", "madam", "stats", "tenet",
)  # fmt: skip
BOILERPLATE = (
    "Click here to subscribe to our newsletter!",
    "Accept all cookies to continue browsing.",
    "Share this on Facebook | Twitter | Email",
    "Copyright (c) All rights reserved.",
    "Sign up now for exclusive deals and offers.",
    "Terms of Service | Privacy Policy | Contact Us",
    "You may also like: Top 10 tips you won't believe",
    "Loading comments... Please enable JavaScript to view.",
)
LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi ut aliquip ex "
    "ea commodo consequat duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu "
    "fugiat nulla pariatur excepteur sint occaecat cupidatat non proident sunt in culpa qui officia deserunt "
    "mollit anim id est laborum"
).split()
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl;", "zxcvbnm,./", "1234567890")


class VerificationError(RuntimeError):
    """A generated problem failed its independent check (a bug in a generator, never emitted)."""


class SyntheticDocs(list[Doc]):
    """A ``list[Doc]`` that also carries ``counts``: documents per kind, or samples per drop reason."""

    def __init__(self, docs: Iterable[Doc] = (), counts: dict[str, int] | None = None) -> None:
        super().__init__(docs)
        self.counts: dict[str, int] = dict(counts or {})


# ---------------------------------------------------------------------------------------------- parameters


# Closed choices of the generators' params; members are named by their values (built with the functional API
# because `int` and `upper` would shadow names in a class body). Sorting "mixed" draws int or word per problem.
SortKind = StrEnum("SortKind", [(k, k) for k in ("int", "word", "mixed")], module=__name__)
StringTask = StrEnum("StringTask", [(t, t) for t in STRING_TASKS], module=__name__)
JunkStyle = StrEnum("JunkStyle", [(j, j) for j in JUNK_STYLES], module=__name__)


@dataclass
class ArithmeticParams:
    problems_per_doc: int = bounded(8, ge=1)
    digits: int = bounded(2, ge=1)  # digits of each operand
    min_operands: int = bounded(2, ge=2)
    max_operands: int = bounded(4, ge=2)
    ops: str = "+-*"  # the operators to draw from

    def check(self, where: str) -> None:
        if not self.ops or not set(self.ops) <= set("+-*"):
            raise must(key_of(where, "ops"), self.ops, "a non-empty subset of '+-*'")
        _check_range(where, "min_operands", self.min_operands, "max_operands", self.max_operands)


@dataclass
class SortingParams:
    problems_per_doc: int = bounded(8, ge=1)
    kind: SortKind = SortKind("mixed")
    min_len: int = bounded(3, ge=1)
    max_len: int = bounded(8, ge=1)
    max_value: int = bounded(99, ge=1)

    def check(self, where: str) -> None:
        _check_range(where, "min_len", self.min_len, "max_len", self.max_len)


@dataclass
class StringParams:
    problems_per_doc: int = bounded(8, ge=1)
    tasks: list[StringTask] = field(default_factory=lambda: [StringTask(t) for t in STRING_TASKS])
    min_len: int = bounded(3, ge=1)
    max_len: int = bounded(12, ge=1)

    def check(self, where: str) -> None:
        if not self.tasks:
            raise must(key_of(where, "tasks"), [], f"a non-empty list of: {', '.join(STRING_TASKS)}")
        _check_range(where, "min_len", self.min_len, "max_len", self.max_len)


@dataclass
class InjectParams:
    """Shares of exact copies, near copies and junk (normalised), and how copies and junk are made."""

    exact: float = bounded(0.4, ge=0, le=1)
    near: float = bounded(0.4, ge=0, le=1)
    junk: float = bounded(0.2, ge=0, le=1)
    edit_rate: float = bounded(0.05, gt=0, le=1)  # near copies: share of words edited
    edit_span: int = bounded(5, ge=1)  # near copies: words per edited run
    junk_styles: list[JunkStyle] = field(default_factory=lambda: [JunkStyle(j) for j in JUNK_STYLES])
    keep_group: bool = True  # copies join their base document's group (so they share its split)

    def check(self, where: str) -> None:
        if not self.junk_styles:
            raise must(key_of(where, "junk_styles"), [], f"a non-empty list of: {', '.join(JUNK_STYLES)}")
        if self.exact + self.near + self.junk <= 0:
            raise must(key_of(where, "exact"), self.exact, "> 0 when near and junk are 0")


PARAMS: dict[str, type] = {
    "arithmetic": ArithmeticParams,
    "sorting": SortingParams,
    "string": StringParams,
    "inject": InjectParams,
}


def _check_range(where: str, low: str, low_value: int, high: str, high_value: int) -> None:
    if low_value > high_value:
        raise must(key_of(where, low), low_value, f"<= {high}={high_value}")


def resolve_params(what: str, params: Mapping[str, Any] | None, where: str = "") -> dict[str, Any]:
    """Defaults updated by ``params`` (checked by `workbench.config.params.parse`), as a plain dict; an unknown
    key or a bad value is a one-line ConfigError naming ``<where>.<key>`` (default where: ``synthetic.<what>``)."""
    parsed = parse(PARAMS[what], params, where or f"synthetic.{what}")
    return {k: _plain(v) for k, v in dataclasses.asdict(parsed).items()}


def _plain(value: Any) -> Any:
    """Enum members as their values (the generators compare and format plain strings)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, StrEnum) else value


def _rng(*parts: object) -> random.Random:
    # str seeds go through SHA-512 in random.Random: stable across processes and machines
    return random.Random(":".join(str(p) for p in ("workbench-synthetic", *parts)))


# ---------------------------------------------------------------------------------------------- arithmetic

_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


@dataclass(frozen=True)
class _Node:
    value: int = 0
    op: str = ""  # "" for a number
    left: _Node | None = None
    right: _Node | None = None

    def evaluate(self) -> int:
        if not self.op:
            return self.value
        a, b = self.left.evaluate(), self.right.evaluate()
        return a + b if self.op == "+" else a - b if self.op == "-" else a * b

    def render(self) -> str:
        if not self.op:
            return str(self.value)
        prec = _PRECEDENCE[self.op]
        left, right = self.left.render(), self.right.render()
        if self.left.op and _PRECEDENCE[self.left.op] < prec:
            left = f"({left})"
        # a - (b + c) and a * (b - c) keep their parentheses; a + (b - c) and a * (b * c) do not need them
        if self.right.op and (
            _PRECEDENCE[self.right.op] < prec or (self.op == "-" and _PRECEDENCE[self.right.op] == prec)
        ):
            right = f"({right})"
        return f"{left} {self.op} {right}"


def _random_tree(rng: random.Random, n_operands: int, digits: int, ops: str) -> _Node:
    if n_operands == 1:
        return _Node(value=rng.randint(1, 10**digits - 1))
    split = rng.randint(1, n_operands - 1)
    return _Node(
        op=rng.choice(ops),
        left=_random_tree(rng, split, digits, ops),
        right=_random_tree(rng, n_operands - split, digits, ops),
    )


def evaluate_expression(text: str) -> int:
    """Integer value of ``text`` (+, -, *, parentheses, non-negative literals) by recursive descent."""
    tokens = re.findall(r"\d+|[-+*()]|\S", text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"unexpected end of expression {text!r}")
        pos += 1
        return tokens[pos - 1]

    def atom() -> int:
        tok = take()
        if tok == "(":
            value = expr()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {text!r}")
            return value
        if not tok.isdigit():
            raise ValueError(f"unexpected {tok!r} in {text!r}")
        return int(tok)

    def term() -> int:
        value = atom()
        while peek() == "*":
            take()
            value *= atom()
        return value

    def expr() -> int:
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    result = expr()
    if pos != len(tokens):
        raise ValueError(f"trailing {tokens[pos]!r} in {text!r}")
    return result


def _verify_arithmetic(problem: str) -> None:
    m = re.fullmatch(r"Q: ([0-9+\-*() ]+) = \?\nA: (-?\d+)", problem)
    if m is None or evaluate_expression(m.group(1)) != int(m.group(2)):
        raise VerificationError(f"arithmetic problem failed its check: {problem!r}")


def _arithmetic_problem(rng: random.Random, p: dict[str, Any]) -> str:
    tree = _random_tree(
        rng, rng.randint(p["min_operands"], p["max_operands"]), p["digits"], "".join(p["ops"])
    )
    problem = f"Q: {tree.render()} = ?\nA: {tree.evaluate()}"
    _verify_arithmetic(problem)
    return problem


# ---------------------------------------------------------------------------------------------- sorting


def _parse_list(text: str, as_int: bool) -> list[Any]:
    items = [x.strip() for x in text.split(",")] if text.strip() else []
    return [int(x) for x in items] if as_int else items


def _verify_sorting(problem: str) -> None:
    m = re.fullmatch(r"sort: \[(.*)\] -> \[(.*)\]", problem)
    if m is None:
        raise VerificationError(f"sorting problem is malformed: {problem!r}")
    as_int = bool(re.fullmatch(r"[-\d, ]*", m.group(1)))
    given, answer = _parse_list(m.group(1), as_int), _parse_list(m.group(2), as_int)
    in_order = all(answer[i] <= answer[i + 1] for i in range(len(answer) - 1))
    if not in_order or Counter(given) != Counter(answer):
        raise VerificationError(f"sorting problem failed its check: {problem!r}")


def _sorting_problem(rng: random.Random, p: dict[str, Any]) -> str:
    n = rng.randint(p["min_len"], p["max_len"])
    kind = rng.choice(("int", "word")) if p["kind"] == "mixed" else p["kind"]
    items: list[Any] = (
        [rng.randint(0, p["max_value"]) for _ in range(n)]
        if kind == "int"
        else [rng.choice(WORDS) for _ in range(n)]
    )
    problem = f"sort: [{', '.join(map(str, items))}] -> [{', '.join(map(str, sorted(items)))}]"
    _verify_sorting(problem)
    return problem


# ---------------------------------------------------------------------------------------------- strings


def _check_string_answer(task: str, arg: str, subject: str, answer: str) -> bool:
    """Recompute a string task by hand (index loops, character codes), not with the builtins that made it."""
    n = 0
    for _ in subject:
        n += 1
    if task == "reverse":
        return len(answer) == n and all(answer[i] == subject[n - 1 - i] for i in range(n))
    if task == "upper":
        expected = "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in subject)
        return answer == expected
    if task == "count":
        hits = 0
        for c in subject:
            hits += c == arg
        return answer == str(hits)
    if task == "palindrome":
        ok = all(subject[i] == subject[n - 1 - i] for i in range(n // 2))
        return answer == ("yes" if ok else "no")
    if task == "length":
        return answer == str(n)
    return False


_STRING_LINE = re.compile(
    r"(reverse|upper|palindrome|length): ([a-z ]+) -> (.*)|count '([a-z])' in ([a-z ]+) -> (\d+)"
)


def _verify_string(problem: str) -> None:
    m = _STRING_LINE.fullmatch(problem)
    if m is None:
        raise VerificationError(f"string problem is malformed: {problem!r}")
    if m.group(1):
        ok = _check_string_answer(m.group(1), "", m.group(2), m.group(3))
    else:
        ok = _check_string_answer("count", m.group(4), m.group(5), m.group(6))
    if not ok:
        raise VerificationError(f"string problem failed its check: {problem!r}")


def _random_string(rng: random.Random, p: dict[str, Any]) -> str:
    n = rng.randint(p["min_len"], p["max_len"])
    if rng.random() < 0.5:  # words from the list, cut to n characters; else random letters
        text = rng.choice(WORDS)
        while len(text) < n:
            text += " " + rng.choice(WORDS)
        text = text[:n].strip()
        if len(text) >= p["min_len"]:
            return text
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))


def _string_problem(rng: random.Random, p: dict[str, Any]) -> str:
    task = rng.choice(list(p["tasks"]))
    subject = _random_string(rng, p)
    if task == "reverse":
        problem = f"reverse: {subject} -> {subject[::-1]}"
    elif task == "upper":
        problem = f"upper: {subject} -> {subject.upper()}"
    elif task == "count":
        char = rng.choice(subject.replace(" ", "") or "a") if rng.random() < 0.8 else rng.choice("aeiou")
        problem = f"count '{char}' in {subject} -> {subject.count(char)}"
    elif task == "palindrome":
        if rng.random() < 0.5:  # half are built as palindromes, so "yes" is as common as "no"
            letters = subject.replace(" ", "")
            half = letters[: max(1, len(letters) // 2)]
            middle = rng.choice(letters) if 2 * len(half) < len(letters) else ""
            subject = half + middle + half[::-1]
        answer = "yes" if subject == subject[::-1] else "no"
        problem = f"palindrome: {subject} -> {answer}"
    else:
        problem = f"length: {subject} -> {len(subject)}"
    _verify_string(problem)
    return problem


_PROBLEMS: dict[str, tuple[Callable[[random.Random, dict[str, Any]], str], str]] = {
    "arithmetic": (_arithmetic_problem, "\n\n"),  # Q/A blocks separated by a blank line
    "sorting": (_sorting_problem, "\n"),
    "string": (_string_problem, "\n"),
}
VERIFIERS: dict[str, Callable[[str], None]] = {
    "arithmetic": _verify_arithmetic,
    "sorting": _verify_sorting,
    "string": _verify_string,
}


def generate(
    generator: str,
    n_docs: int,
    seed: int,
    params: Mapping[str, Any] | None = None,
    source: str = "synthetic",
    where: str = "",
) -> SyntheticDocs:
    """``n_docs`` documents of verified problems; ``counts`` is {"docs": n, "problems": n * problems_per_doc}.
    ``where`` names the params in error messages (a mixture passes ``data.mixture.sources.<name>.params``)."""
    if generator not in _PROBLEMS:
        raise not_allowed("generator", generator, GENERATORS)
    if n_docs < 0:
        raise must("docs", n_docs, ">= 0")
    p = resolve_params(generator, params, where)
    make, sep = _PROBLEMS[generator]
    docs = []
    for i in range(n_docs):
        rng = _rng(generator, seed, i)
        text = sep.join(make(rng, p) for _ in range(p["problems_per_doc"]))
        docs.append(Doc(f"{source}:{generator}:{i:06d}", source, f"synthetic:{generator}", text))
    return SyntheticDocs(docs, {"docs": n_docs, "problems": n_docs * p["problems_per_doc"]})


# ---------------------------------------------------------------------------------------------- noisy copies


def apportion(n: int, weights: Sequence[float]) -> list[int]:
    """Split ``n`` into integer parts proportional to ``weights`` (largest remainder; ties to the earlier one)."""
    total = sum(weights)
    quotas = [n * w / total for w in weights]
    parts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda k: (-(quotas[k] - parts[k]), k))
    for k in by_remainder[: n - sum(parts)]:
        parts[k] += 1
    return parts


def near_copy(text: str, rng: random.Random, rate: float, span: int) -> str:
    """``text`` with about ``rate`` of its words edited in runs of ``span`` words (replace, delete or insert).

    Runs, not scattered words, as real near-duplicates differ in places: each run touches ``span + 4`` word
    5-grams, so the expected word-5-gram Jaccard is about (1 - f) / (1 + f) with f = rate * (span + 4) / span
    (0.83 at the defaults 0.05 and 5). Whitespace between untouched words is kept.
    """
    pieces = re.split(r"(\s+)", text)
    word_at = [k for k, piece in enumerate(pieces) if piece and not piece.isspace()]
    if not word_at:
        return text
    vocabulary = sorted({pieces[k] for k in word_at})
    n_runs = max(1, round(rate * len(word_at) / span))
    n_slots = max(1, len(word_at) // span)
    for slot in sorted(rng.sample(range(n_slots), min(n_runs, n_slots))):
        run = word_at[slot * span : slot * span + span]
        action = rng.choice(("replace", "delete", "insert"))
        fresh = [rng.choice(vocabulary) if rng.random() < 0.5 else rng.choice(WORDS) for _ in run]
        if action == "insert":  # the new words go in one block after the run
            pieces[run[-1]] = " ".join([pieces[run[-1]], *fresh])
        for k, word in zip(run, fresh, strict=True):
            if action != "insert":
                pieces[k] = word if action == "replace" else ""
    return "".join(pieces)


def junk_text(style: str, base_text: str, rng: random.Random) -> str:
    """Low-quality text of one ``style`` (see ``JUNK_STYLES``), about as long as ``base_text`` (200..4000 chars)."""
    length = min(max(len(base_text), 200), 4000)
    if style == "noise":  # random printable characters
        chars = "".join(chr(c) for c in range(33, 127))
        return "".join(rng.choice(chars + " ") for _ in range(length))
    if style == "mash":  # keyboard mashing along a row
        words = []
        while sum(len(w) + 1 for w in words) < length:
            row = rng.choice(KEYBOARD_ROWS)
            start = rng.randrange(len(row) - 3)
            words.append("".join(rng.choice(row[start : start + 4]) for _ in range(rng.randint(3, 12))))
        return " ".join(words)
    if style == "repeat":  # one line of the base document, many times
        lines = [line for line in base_text.splitlines() if line.strip()] or ["buy now"]
        line = rng.choice(lines)
        if len(line) > 80:  # a short piece: one long line repeated would be a near copy, not junk
            line = line[:80].rsplit(" ", 1)[0]
        return "\n".join([line] * max(20, length // (len(line) + 1)))
    if style == "boilerplate":
        lines = []
        while sum(len(x) + 1 for x in lines) < length:
            lines.append(rng.choice(BOILERPLATE))
        return "\n".join(lines)
    if style == "control":  # binary-ish: control characters (no NUL) among a few letters
        chars = [chr(c) for c in (*range(1, 9), *range(14, 32), 127)] + list("\ufffd\x0bAZaz09")
        return "".join(rng.choice(chars) for _ in range(length))
    if style == "lorem":
        words = []
        while sum(len(w) + 1 for w in words) < length:
            words.append(rng.choice(LOREM))
        return " ".join(words).capitalize() + "."
    raise ValueError(f"junk style {style!r} is unknown; allowed: {', '.join(JUNK_STYLES)}")


def inject(
    base: Sequence[Doc],
    n_docs: int,
    seed: int,
    params: Mapping[str, Any] | None = None,
    source: str = "noisy_copies",
    where: str = "",
) -> SyntheticDocs:
    """``n_docs`` exact copies, near copies and junk derived from ``base`` documents, interleaved.

    Kinds are split by the fractions ``exact``/``near``/``junk`` (normalised; largest remainder), so
    ``counts`` is exact: {"exact": .., "near": .., "junk": .., "junk:<style>": ..}. Ids are
    f"{source}:{kind}:{i:06d}", paths f"synthetic:inject:{kind}:{base_id}". With ``keep_group`` (default) copies
    join their base document's group, so a duplicate lands in the same split as its original.
    """
    p = resolve_params("inject", params, where)
    weights = [float(p[k]) for k in INJECT_KINDS]
    if n_docs > 0 and not base:
        raise ValueError("synthetic inject: base has no documents to copy")
    kinds = [
        k for k, count in zip(INJECT_KINDS, apportion(n_docs, weights), strict=True) for _ in range(count)
    ]
    _rng("inject-order", seed).shuffle(kinds)
    order = sorted(range(len(base)), key=lambda k: base[k].id)  # the choice follows ids, not input order
    counts: Counter = Counter({k: 0 for k in INJECT_KINDS})
    docs = []
    for i, kind in enumerate(kinds):
        rng = _rng("inject", seed, i)
        original = base[order[rng.randrange(len(order))]]
        group = (original.group or original.id) if p["keep_group"] and kind != "junk" else ""
        if kind == "exact":
            text = original.text
        elif kind == "near":
            text = near_copy(original.text, rng, float(p["edit_rate"]), p["edit_span"])
        else:
            style = rng.choice(list(p["junk_styles"]))
            counts[f"junk:{style}"] += 1
            text = junk_text(style, original.text, rng)
        counts[kind] += 1
        docs.append(
            Doc(f"{source}:{kind}:{i:06d}", source, f"synthetic:inject:{kind}:{original.id}", text, group)
        )
    return SyntheticDocs(docs, dict(counts))
