"""Data mixtures: bad input becomes named drops, accounting is exact, signals are cached and reused when only a
threshold changes, results do not depend on the number of worker processes, and token quotas are exact. Sources
and filters are addressed by name, every bad value is one line naming its key, and a run builds each filter once."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench.config import ConfigError
from workbench.config.schema import MixtureConfig, SourceConfig
from workbench.data.filters import DecideContext, Filter, register
from workbench.data.mixing import mixture_tokens, plan_mixture
from workbench.data.mixture import build_mixture
from workbench.preflight import compose

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class LengthParams:
    min_chars: int = 200  # threshold only: not in signal_keys
    scale: int = 1  # changes the signal


@register
class LengthFilter(Filter):
    """A test filter: drops documents shorter than min_chars; counts how often it computed signals."""

    name = "test_length"
    Params = LengthParams
    signal_keys = ("scale",)
    calls = 0

    def signals(self, texts):
        type(self).calls += 1
        return {"chars": np.array([len(t) * self.params.scale for t in texts], dtype=np.int64)}

    def decide(self, columns, ctx: DecideContext):
        return np.where(columns["chars"] < self.params.min_chars, "too_short", "")

    def reasons(self):
        return ["too_short"]


@pytest.fixture
def bad_files(tmp_path) -> list[str]:
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 is not utf-8 \xff")
    rows = [
        {"text": ""},
        {"text": "   \n"},
        {"text": "binary \x00\x01 content"},
        {"text": "x" * (50 * 1024 * 1024)},  # a 50 MB document
        {"text": "a normal document " * 30},
    ]
    with open(tmp_path / "docs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write('{"text": "truncated\n')  # line 6: not JSON
        f.write('{"text": "lone \\udcff surrogate"}\n')  # line 7: valid JSON, not encodable as UTF-8
    return [str(tmp_path / "bad.txt"), str(tmp_path / "docs.jsonl")]


def data_cfg(data_cache, sources, filters=None, **mixture):
    """A mixture of `sources` ({name: SourceConfig}) through `filters` ({name: params})."""
    cfg = compose("dense_debug", [f"data.cache_dir={data_cache}", "data.max_docs=null"]).data
    m = MixtureConfig(
        sources=dict(sources), filters={k: dict(v) for k, v in (filters or {}).items()}, **mixture
    )
    return dataclasses.replace(cfg, source="mixture", mixture=m)


def test_bad_input_becomes_named_drops_with_exact_accounting(data_cache, bad_files):
    cfg = data_cfg(
        data_cache,
        {
            "prose": SourceConfig(embedded_kinds=["prose"], max_docs=100),
            "local": SourceConfig(kind="files", paths=bad_files),
        },
        {"test_length": {"min_chars": 100}},
        validation=["prose"],
    )
    report = build_mixture(cfg, progress=False).report
    local = report["sources"]["local"]
    assert local["docs_in"] == 8
    assert local["removed"] == {
        "input:bad_json": 1,
        "input:binary": 1,
        "input:empty_text": 2,
        "input:lone_surrogate": 1,
        "input:too_large": 1,
        "input:undecodable": 1,
    }
    name = Path(bad_files[1]).as_posix()
    samples = {
        r: [x["id"] for x in report["rules"][r]["samples"]]
        for r in ("input:bad_json", "input:lone_surrogate")
    }
    assert samples == {"input:bad_json": [f"{name}:6"], "input:lone_surrogate": [f"{name}:7"]}  # file:line
    assert local["docs_kept"] == 1
    prose = report["sources"]["prose"]
    assert prose["docs_kept"] + sum(prose["removed"].values()) == 100  # max_docs=100 of the prose
    assert prose["sampled_out"] == prose["docs_in"] - 100 > 0 and "input:max_docs" not in prose["removed"]
    assert report["docs_sampled_out"] == prose["sampled_out"] and local["sampled_out"] == 0
    for s in report["sources"].values():
        assert s["docs_in"] == s["docs_kept"] + sum(s["removed"].values()) + s["sampled_out"]
    assert report["rules"]["input:too_large"]["tokens_removed_first"] == 50 * 1024 * 1024 + 1


def test_missing_file_and_empty_source_are_one_line_errors(data_cache, bad_files, tmp_path):
    missing = data_cfg(data_cache, {"mine": SourceConfig(kind="files", paths=[str(tmp_path / "nope.jsonl")])})
    with pytest.raises(ConfigError, match=r"^data\.mixture\.sources\.mine: data\.paths: no such file") as e:
        build_mixture(missing, progress=False)
    assert "\n" not in str(e.value)
    emptied = data_cfg(
        data_cache,
        {"prose": SourceConfig(embedded_kinds=["prose"], max_docs=50)},
        {"test_length": {"min_chars": 10**9}},
    )
    with pytest.raises(ConfigError, match="source 'prose' is empty after filtering") as e:
        build_mixture(emptied, progress=False)
    assert "\n" not in str(e.value)


def test_bad_mixture_config_is_one_line(data_cache):
    cases = [
        ({"a": SourceConfig(kind="web")}, "data.mixture.sources.a.kind='web' is not allowed"),
        ({"0": SourceConfig()}, "data.mixture.sources.0: unknown key"),  # sources are not a list
        (
            {"j": SourceConfig(kind="inject", base="x")},
            "data.mixture.sources.j.base='x' must be a source listed before it",
        ),
    ]
    for sources, needle in cases:
        with pytest.raises(ConfigError, match=".*") as e:
            build_mixture(data_cfg(data_cache, sources), progress=False)
        assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^data\.mixture\.filters\.test_length\.min_char: unknown key"):
        build_mixture(
            data_cfg(data_cache, {"a": SourceConfig()}, {"test_length": {"min_char": 1}}), progress=False
        )


def test_threshold_change_reuses_signals_and_workers_do_not_change_results(data_cache):
    sources = {"prose": SourceConfig(embedded_kinds=["prose"], max_docs=300)}
    LengthFilter.calls = 0
    first = build_mixture(
        data_cfg(data_cache, sources, {"test_length": {"min_chars": 300, "scale": 3}}, chunk_docs=32),
        progress=False,
    )
    computed = LengthFilter.calls
    assert computed > 1  # chunked
    # a new threshold: decided again from cached signal columns, nothing recomputed
    second = build_mixture(
        data_cfg(data_cache, sources, {"test_length": {"min_chars": 900, "scale": 3}}, chunk_docs=32),
        progress=False,
    )
    assert LengthFilter.calls == computed
    assert second.report["signal_tasks_cached"] == 1 and second.report["signal_tasks_computed"] == 0
    assert second.report["docs_kept"] < first.report["docs_kept"]
    # a signal parameter: recomputed, with two worker processes, same decisions as one process would make
    one = build_mixture(
        data_cfg(data_cache, sources, {"test_length": {"min_chars": 300, "scale": 5}}, chunk_docs=32),
        progress=False,
    )
    import shutil

    shutil.rmtree(Path(data_cache) / "signals")
    shutil.rmtree(one.corpus.path)
    two = build_mixture(
        data_cfg(
            data_cache,
            sources,
            {"test_length": {"min_chars": 300, "scale": 5}},
            chunk_docs=32,
            workers=2,
        ),
        progress=False,
    )
    assert two.report["signal_tasks_computed"] == 1
    assert one.corpus.dataset["id"] == two.corpus.dataset["id"]
    assert one.report["sources"] == two.report["sources"]


def test_plan_mixture_is_exact_and_tempered():
    m = MixtureConfig(sources={"a": SourceConfig(weight=0.9), "b": SourceConfig(weight=0.1)}, tokens=100_001)
    plan = plan_mixture(m, {"a": 50_000, "b": 1_000})
    assert sum(p["tokens"] for p in plan.values()) == 100_001
    assert plan["a"]["tokens"] == 90_001 and plan["b"]["tokens"] == 10_000
    assert plan["b"]["epochs"] == pytest.approx(10.0)
    hot = plan_mixture(dataclasses.replace(m, temperature=1e9), {"a": 50_000, "b": 1_000})
    assert abs(hot["a"]["share"] - 0.5) < 1e-6  # T -> infinity: uniform over sources
    natural = plan_mixture(
        MixtureConfig(sources={"a": SourceConfig(), "b": SourceConfig()}), {"a": 300, "b": 100}
    )
    assert {k: v["tokens"] for k, v in natural.items()} == {"a": 300, "b": 100}


def test_mixture_tokens_fill_each_quota_exactly_and_count_epochs():
    enc = {
        "a": [np.arange(5, dtype=np.int64) for _ in range(4)],  # 4 docs x (5 + EOS) = 24 tokens
        "b": [np.arange(3, dtype=np.int64) for _ in range(2)],  # 2 docs x 4 = 8 tokens
    }
    plan = {"a": {"tokens": 30}, "b": {"tokens": 20}}
    tokens, used = mixture_tokens(enc, plan, seed=0, eos=99, dtype=np.int64)
    assert len(tokens) == 50
    assert used["a"]["epochs"] == pytest.approx(30 / 24) and used["b"]["epochs"] == pytest.approx(20 / 8)
    again, _ = mixture_tokens(enc, plan, seed=0, eos=99, dtype=np.int64)
    assert np.array_equal(tokens, again)


def test_training_on_a_mixture_records_data_metrics_and_report(data_cache, debug_overrides, tracking_uri):
    import mlflow

    import workbench

    cfg = workbench.compose(
        "dense_debug",
        [
            *debug_overrides,
            "budget.steps=5",
            "data.source=mixture",
            "data.max_docs=null",
            "data.mixture.tokens=60000",
            "data.mixture.validation=[prose]",
            # `++` adds sources to the (empty) mapping from the command line (README "Data mixtures")
            "++data.mixture.sources={code: {embedded_kinds: [code], max_docs: 200, weight: 0.5},"
            "prose: {embedded_kinds: [prose], max_docs: 200, weight: 0.5}}",
            "+data.mixture.filters.test_length.min_chars=50",
        ],
    )
    result = workbench.run(cfg, print_summary=False)
    m = result.metrics
    assert m["data/docs_in"] == m["data/docs_kept"] + m["data/docs_removed"] + m["data/docs_sampled_out"]
    assert m["data/source/code/train_tokens"] + m["data/source/prose/train_tokens"] == 60000
    assert m["data/removed/test_length/too_short"] >= 1
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    arts = {a.path for a in client.list_artifacts(result.run_id, "data")}
    assert arts == {"data/report.json", "data/report.txt"}


def test_every_filter_kind_composes_reports_and_trains_from_the_cli(data_cache, tmp_path, tracking_uri):
    """conf/data/mixture_all_filters.yaml: the report CLI (exact accounting), then train.py on it into MLflow."""
    import mlflow

    common = ["+experiment=dense_debug", f"data.cache_dir={data_cache}", "data=mixture_all_filters"]
    report_json = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.data",
            *common,
            "report",
            "--no-progress",
            "--json",
            str(report_json),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data mixture: sources" in proc.stdout and "minhash: detection probability" in proc.stdout
    report = json.loads(report_json.read_text())
    from workbench.data.filters import REGISTRY

    assert set(report["filters"]) == {k for k in REGISTRY if not k.startswith("test_")}
    for s in report["sources"].values():
        assert s["docs_in"] == s["docs_kept"] + sum(s["removed"].values()) + s["sampled_out"]
    assert report["sources"]["dirt"]["docs_kept"] == 0
    train = subprocess.run(
        [sys.executable, "train.py", *common, "budget.steps=5", f"output_dir={tmp_path / 'out'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    m = run.data.metrics
    assert m["data/docs_in"] == report["docs_in"] and m["data/docs_kept"] == report["docs_kept"]
    assert (
        sum(m[f"data/source/{n}/train_tokens"] for n in ("code", "prose", "arithmetic", "sorting")) == 400000
    )
    assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} == {
        "data/report.json",
        "data/report.txt",
    }


def test_every_filter_kind_gives_identical_output_for_one_and_two_workers(data_cache, tmp_path):
    runs = []
    for workers, cache in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        data = compose(
            "dense_debug",
            [
                "data=mixture_all_filters",
                f"data.cache_dir={cache}",
                f"data.mixture.workers={workers}",
                "data.mixture.chunk_docs=16",
                "data.mixture.sources.code.max_docs=60",
                "data.mixture.sources.prose.max_docs=200",
                "data.mixture.sources.dirt.docs=60",
            ],
        ).data
        runs.append(build_mixture(data, progress=False))
    one, two = runs
    n_filtered = 2  # prose and dirt go through the filters; code and the synthetic tasks bypass them
    assert one.report["signal_tasks_computed"] == two.report["signal_tasks_computed"] == 11 * n_filtered
    assert one.corpus.dataset["id"] == two.corpus.dataset["id"]
    assert {k: v["docs_removed_first"] for k, v in one.report["rules"].items()} == {
        k: v["docs_removed_first"] for k, v in two.report["rules"].items()
    }
    dirt = one.report["sources"]["dirt"]
    assert dirt["docs_in"] == 60 and dirt["docs_kept"] == 0 and sum(dirt["removed"].values()) == 60


# -- sources and filters by name -------------------------------------------------------------------------

ALL = ["data=mixture_all_filters"]


def one_line(call) -> str:
    with pytest.raises(ConfigError) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_an_override_names_its_filter_whatever_the_yaml_order():
    from omegaconf import OmegaConf

    from workbench.data.mixture import validate_mixture

    data = compose("dense_debug", [*ALL, "data.mixture.filters.gopher_quality.min_words=30"]).data
    specs = validate_mixture(data)
    assert [s.name for s in specs] == data.mixture.order  # applied in `order`
    assert {s.name: s for s in specs}["gopher_quality"].params.min_words == 30
    # The same mixture written in two orders: the override `filters.gopher_quality.min_words=30` reaches the same
    # filter in both; with `order` empty the mapping's order is the application order.
    yaml = {
        "forward": "filters: {charset: {}, gopher_quality: {min_words: 20}, code: {}}",
        "reversed": "filters: {code: {}, gopher_quality: {min_words: 20}, charset: {}}",
    }
    applied = {}
    for name, text in yaml.items():
        node = OmegaConf.merge(OmegaConf.structured(MixtureConfig), OmegaConf.create(text))
        OmegaConf.update(node, "filters.gopher_quality.min_words", 30)
        m = OmegaConf.to_object(node)
        from workbench.data.filters import parse_pipeline

        specs = parse_pipeline(m.filters, m.order)
        assert {s.name: s for s in specs}["gopher_quality"].params.min_words == 30
        assert {s.name: s for s in specs}["charset"].params.min_script_fraction == 0.5  # untouched
        applied[name] = [s.name for s in specs]
    assert applied == {
        "forward": ["charset", "gopher_quality", "code"],
        "reversed": ["code", "gopher_quality", "charset"],
    }


def test_order_must_name_every_filter_once():
    from workbench.data.filters import parse_pipeline

    filters = {"a": {"type": "code"}, "b": {"type": "charset", "enabled": False}}
    assert [s.name for s in parse_pipeline(filters, ["a", "b"])] == ["a"]  # a disabled filter stays in order
    assert one_line(lambda: parse_pipeline(filters, ["a"])) == (
        "data.mixture.order=['a'] must be each name of data.mixture.filters once, or empty (missing: b)"
    )
    assert "(not a filter: c)" in one_line(lambda: parse_pipeline(filters, ["a", "b", "c"]))
    assert "(repeated: a)" in one_line(lambda: parse_pipeline(filters, ["a", "a", "b"]))
    msg = one_line(lambda: compose("data_filtered", ["data.mixture.order=[charset,code,minhash]"]))
    assert msg.endswith("must be each name of data.mixture.filters once, or empty (missing: exact_dedup)")


def test_enabled_false_turns_one_filter_off():
    from workbench.data.mixture import validate_mixture

    data = compose("dense_debug", [*ALL, "+data.mixture.filters.toxicity.enabled=false"]).data
    names = [s.name for s in validate_mixture(data)]
    assert "toxicity" not in names and len(names) == len(data.mixture.order) - 1
    msg = one_line(lambda: compose("dense_debug", [*ALL, "+data.mixture.filters.toxicity.enabled=maybe"]))
    assert msg == "data.mixture.filters.toxicity.enabled='maybe' must be true or false"


def test_one_filter_type_twice_under_two_names(tmp_path):
    from workbench.data.report import report_metrics

    cfg = data_cfg(
        tmp_path,
        {
            "prose": SourceConfig(embedded_kinds=["prose"], max_docs=150),
            "copies": SourceConfig(
                kind="inject", base="prose", docs=60, params={"exact": 0, "near": 1, "junk": 0}
            ),
        },
        {
            "minhash": {},
            "minhash_strict": {"type": "minhash", "verify": True, "threshold": 0.9},
            "exact_dedup": {"enabled": False},
        },
        validation=["prose"],
    )
    report = build_mixture(cfg, progress=False).report
    assert report["filters"] == ["minhash", "minhash_strict"]  # the names label the report
    assert set(report["describe"]) == {"minhash", "minhash_strict"}
    assert "minhash:near_duplicate" in report["rules"]
    # one signal type: the second name reads the columns the first computed
    assert (report["signal_tasks_computed"], report["signal_tasks_cached"]) == (2, 2)
    assert "data/removed/minhash/near_duplicate" in report_metrics(report)


def test_positional_overrides_fail_with_one_line_naming_the_new_form():
    new_form = "data.mixture.filters.<name>.<param>=<value>"
    for override in ("data.mixture.filters.2.min_words=3", "+data.mixture.filters.2.min_words=3"):
        msg = one_line(lambda o=override: compose("data_filtered", [o]))
        assert msg.startswith("data.mixture.filters.2: unknown key") and new_form in msg, msg
    msg = one_line(lambda: compose("data_filtered", ["data.mixture.sources.0.max_docs=3"]))
    assert msg.startswith("data.mixture.sources.0: unknown key")
    assert "data.mixture.sources.<name>.<key>=<value>" in msg
    from workbench.data.filters import parse_pipeline

    assert new_form in one_line(lambda: parse_pipeline([{"type": "code"}]))  # an old list in Python
    assert new_form in one_line(lambda: parse_pipeline({"0": {"type": "code"}}))  # a digit name in YAML


@pytest.mark.parametrize(
    "overrides,message",
    [
        # a wrong type
        (
            ["data.mixture.filters.c4.min_sentences=many"],
            "data.mixture.filters.c4.min_sentences='many' must be an integer",
        ),
        # a bound
        (
            ["data.mixture.filters.gopher_quality.min_words=-1"],
            "data.mixture.filters.gopher_quality.min_words=-1 must be >= 0",
        ),
        (
            ["data.mixture.sources.dirt.params.junk=2.0"],
            "data.mixture.sources.dirt.params.junk=2.0 must be in [0, 1]",
        ),
        (
            ["data.mixture.sources.prose.weight=-1"],
            "data.mixture.sources.prose.weight=-1.0 must be >= 0 (or null: its natural size)",
        ),
        # a closed choice
        (
            ["data.mixture.filters.line_dedup.unit=sentence"],
            "data.mixture.filters.line_dedup.unit='sentence' is not allowed; choose one of: line, paragraph",
        ),
        # an unknown key
        (
            ["+data.mixture.filters.minhash.kep=first"],
            "data.mixture.filters.minhash.kep: unknown key; keys allowed in data.mixture.filters.minhash: type, "
            "enabled, ngram, num_perm, bands, rows, seed, threshold, fp_weight, fn_weight, verify, keep, quality_column",
        ),
        (
            ["+data.mixture.sources.arithmetic.params.digitz=3"],
            "data.mixture.sources.arithmetic.params.digitz: unknown key; keys allowed in "
            "data.mixture.sources.arithmetic.params: problems_per_doc, digits, min_operands, max_operands, ops",
        ),
        # a rule between fields
        (
            ["+data.mixture.filters.minhash.rows=9"],
            "data.mixture.filters.minhash.bands=14 must be <= num_perm / rows = 12 (bands * rows = 14 * 9 = 126 "
            "exceeds num_perm = 112)",
        ),
        (
            ["data.mixture.filters.quality_classifier.negative=[nope]"],
            "data.mixture.filters.quality_classifier.negative=['nope'] must be names of sources of the mixture "
            "(code, prose, arithmetic, sorting, dirt)",
        ),
        # an unknown filter type lists the registered ones
        (
            ["data.mixture.order=[]", "+data.mixture.filters.fancy={}"],
            "data.mixture.filters.fancy.type='fancy' is not allowed; choose one of: c4, charset, code, exact_dedup, "
            "fineweb, gopher_quality, gopher_repetition, line_dedup, minhash, quality_classifier, test_length, "
            "toxicity (type defaults to the filter's name)",
        ),
    ],
)
def test_every_bad_value_is_one_line_in_one_format(overrides, message):
    assert one_line(lambda: compose("dense_debug", [*ALL, *overrides])) == message


def test_a_run_builds_each_filter_once(monkeypatch, tmp_path):
    """Composing, validating (twice more on the way) and setting up the datamodule construct every filter of
    the pipeline exactly once: validation parses parameters, `build_mixture` builds."""
    from collections import Counter

    from workbench.data import LMDataModule

    built: Counter = Counter()
    init = Filter.__init__

    def counting_init(self, params=None, label=None):
        built[label or self.name] += 1
        init(self, params, label)

    monkeypatch.setattr(Filter, "__init__", counting_init)
    cfg = compose(
        "data_filtered",
        [
            f"data.cache_dir={tmp_path}",
            "data.mixture.sources.code.max_docs=40",
            "data.mixture.sources.prose.max_docs=120",
            "data.mixture.sources.injected.docs=40",
            "data.mixture.tokens=20000",
            "data.seq_len=64",
            "data.batch_size=4",
        ],
    )
    dm = LMDataModule(cfg.data)
    assert built == {}  # validation built nothing
    dm.setup()
    assert built == {name: 1 for name in cfg.data.mixture.order}


def test_prepared_state_is_cached_without_pickle(tmp_path, monkeypatch):
    """A threshold rerun restores the trained classifier from an .npz (no retraining) and decides exactly as a
    classifier trained from scratch does."""
    from workbench.data.filters import classifier as qc

    def mixture(cache, threshold):
        return data_cfg(
            cache,
            {
                "prose": SourceConfig(embedded_kinds=["prose"], max_docs=120),
                "dirt": SourceConfig(kind="inject", base="prose", docs=60, weight=0, params={"junk": 1.0}),
            },
            {
                "quality_classifier": {
                    "positive": ["prose"],
                    "negative": ["dirt"],
                    "mode": "threshold",
                    "threshold": threshold,
                    "num_features": 4096,
                }
            },
            validation=["prose"],
        )

    build_mixture(mixture(tmp_path / "a", 0.5), progress=False)
    (state,) = (tmp_path / "a" / "prepared").iterdir()
    assert state.suffix == ".npz"
    with np.load(state, allow_pickle=False) as z:  # arrays and JSON bytes only
        assert z["weights"].shape == (4096,) and z["weights"].dtype == np.float64

    def no_training(self, source_texts):
        raise AssertionError("the classifier was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(qc.QualityClassifier, "prepare", no_training)
        restored = build_mixture(mixture(tmp_path / "a", 0.6), progress=False)
    fresh = build_mixture(mixture(tmp_path / "b", 0.6), progress=False)
    assert restored.corpus.dataset["id"] == fresh.corpus.dataset["id"]
    assert restored.report["rules"] == fresh.report["rules"]
    assert restored.report["describe"] == fresh.report["describe"]  # held-out metrics restored too
