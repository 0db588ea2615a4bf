"""Data mixtures: bad input becomes named drops, accounting is exact, signals are cached and reused when only a
threshold changes, results do not depend on the number of worker processes, and token quotas are exact."""

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
from workbench.data.filters.base import DecideContext, Filter, register
from workbench.data.mixture import build_mixture, mixture_tokens, plan_mixture
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
    return [str(tmp_path / "bad.txt"), str(tmp_path / "docs.jsonl")]


def data_cfg(data_cache, sources, filters=(), **mixture):
    cfg = compose("dense_debug", [f"data.cache_dir={data_cache}", "data.max_docs=null"]).data
    m = MixtureConfig(sources=list(sources), filters=[dict(f) for f in filters], **mixture)
    return dataclasses.replace(cfg, source="mixture", mixture=m)


def test_bad_input_becomes_named_drops_with_exact_accounting(data_cache, bad_files):
    cfg = data_cfg(
        data_cache,
        [
            SourceConfig(name="prose", embedded_kinds=["prose"], max_docs=100),
            SourceConfig(name="local", kind="files", paths=bad_files),
        ],
        [{"type": "test_length", "min_chars": 100}],
        validation=["prose"],
    )
    report = build_mixture(cfg, progress=False).report
    local = report["sources"]["local"]
    assert local["docs_in"] == 6
    assert local["removed"] == {
        "input:binary": 1,
        "input:empty_text": 2,
        "input:too_large": 1,
        "input:undecodable": 1,
    }
    assert local["docs_kept"] == 1
    for s in report["sources"].values():
        assert s["docs_in"] == s["docs_kept"] + sum(s["removed"].values())
    assert report["rules"]["input:too_large"]["tokens_removed_first"] == 50 * 1024 * 1024 + 1


def test_missing_file_and_empty_source_are_one_line_errors(data_cache, bad_files, tmp_path):
    missing = data_cfg(
        data_cache, [SourceConfig(name="mine", kind="files", paths=[str(tmp_path / "nope.jsonl")])]
    )
    with pytest.raises(
        ConfigError, match=r"^data.mixture.sources\[0\] \(mine\): data.paths: no such file"
    ) as e:
        build_mixture(missing, progress=False)
    assert "\n" not in str(e.value)
    emptied = data_cfg(
        data_cache,
        [SourceConfig(name="prose", embedded_kinds=["prose"], max_docs=50)],
        [{"type": "test_length", "min_chars": 10**9}],
    )
    with pytest.raises(ConfigError, match="source 'prose' is empty after filtering") as e:
        build_mixture(emptied, progress=False)
    assert "\n" not in str(e.value)


def test_bad_mixture_config_is_one_line(data_cache):
    cases = [
        ([SourceConfig(name="a", kind="web")], "sources[0] (a).kind='web' is not allowed"),
        ([SourceConfig(name="a"), SourceConfig(name="a")], "name='a' is used twice"),
        ([SourceConfig(name="j", kind="inject", base="x")], "base='x' must name a source listed before it"),
    ]
    for sources, needle in cases:
        with pytest.raises(ConfigError, match=".*") as e:
            build_mixture(data_cfg(data_cache, sources), progress=False)
        assert needle in str(e.value)
    with pytest.raises(ConfigError, match=r"filters\[0\].test_length: unknown key 'min_char'"):
        build_mixture(
            data_cfg(data_cache, [SourceConfig(name="a")], [{"type": "test_length", "min_char": 1}]),
            progress=False,
        )


def test_threshold_change_reuses_signals_and_workers_do_not_change_results(data_cache):
    sources = [SourceConfig(name="prose", embedded_kinds=["prose"], max_docs=300)]
    LengthFilter.calls = 0
    first = build_mixture(
        data_cfg(data_cache, sources, [{"type": "test_length", "min_chars": 300, "scale": 3}], chunk_docs=32),
        progress=False,
    )
    computed = LengthFilter.calls
    assert computed > 1  # chunked
    # a new threshold: decided again from cached signal columns, nothing recomputed
    second = build_mixture(
        data_cfg(data_cache, sources, [{"type": "test_length", "min_chars": 900, "scale": 3}], chunk_docs=32),
        progress=False,
    )
    assert LengthFilter.calls == computed
    assert second.report["signal_tasks_cached"] == 1 and second.report["signal_tasks_computed"] == 0
    assert second.report["docs_kept"] < first.report["docs_kept"]
    # a signal parameter: recomputed, with two worker processes, same decisions as one process would make
    one = build_mixture(
        data_cfg(data_cache, sources, [{"type": "test_length", "min_chars": 300, "scale": 5}], chunk_docs=32),
        progress=False,
    )
    import shutil

    shutil.rmtree(Path(data_cache) / "signals")
    shutil.rmtree(one.corpus.path)
    two = build_mixture(
        data_cfg(
            data_cache,
            sources,
            [{"type": "test_length", "min_chars": 300, "scale": 5}],
            chunk_docs=32,
            workers=2,
        ),
        progress=False,
    )
    assert two.report["signal_tasks_computed"] == 1
    assert one.corpus.dataset["id"] == two.corpus.dataset["id"]
    assert one.report["sources"] == two.report["sources"]


def test_plan_mixture_is_exact_and_tempered():
    m = MixtureConfig(
        sources=[SourceConfig(name="a", weight=0.9), SourceConfig(name="b", weight=0.1)], tokens=100_001
    )
    plan = plan_mixture(m, {"a": 50_000, "b": 1_000})
    assert sum(p["tokens"] for p in plan.values()) == 100_001
    assert plan["a"]["tokens"] == 90_001 and plan["b"]["tokens"] == 10_000
    assert plan["b"]["epochs"] == pytest.approx(10.0)
    hot = plan_mixture(dataclasses.replace(m, temperature=1e9), {"a": 50_000, "b": 1_000})
    assert abs(hot["a"]["share"] - 0.5) < 1e-6  # T -> infinity: uniform over sources
    natural = plan_mixture(
        MixtureConfig(sources=[SourceConfig(name="a"), SourceConfig(name="b")]), {"a": 300, "b": 100}
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
            "data.mixture.sources=[{name: code, embedded_kinds: [code], max_docs: 200, weight: 0.5},"
            "{name: prose, embedded_kinds: [prose], max_docs: 200, weight: 0.5}]",
            "data.mixture.filters=[{type: test_length, min_chars: 50}]",
        ],
    )
    result = workbench.run(cfg, print_summary=False)
    m = result.metrics
    assert m["data/docs_in"] == m["data/docs_kept"] + m["data/docs_removed"]
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
    from workbench.data.filters.base import _load_builtin_filters

    _load_builtin_filters()
    assert set(report["filters"]) == {k for k in REGISTRY if not k.startswith("test_")}
    for s in report["sources"].values():
        assert s["docs_in"] == s["docs_kept"] + sum(s["removed"].values())
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
                "data.mixture.sources.0.max_docs=60",
                "data.mixture.sources.1.max_docs=200",
                "data.mixture.sources.4.docs=60",
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
