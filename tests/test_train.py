"""End to end: the recipe trains, stops on its budget, records cost and quality in MLflow, and resumes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import mlflow
import pytest
import torch

import workbench
from workbench.cost.flops import flops_per_token
from workbench.models.moe.balancing import AGGREGATE_KEYS

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED_METRICS = [
    "train/loss",
    "val/loss",
    "val/bpb",
    "cost/flops_per_token",
    "cost/train_flops",
    "cost/tokens",
    "cost/tokens_per_s",
    "cost/mfu",
    "cost/device_hours",
    "cost/usd",
    "cost/peak_mem_gb",
]
MOE_METRICS = [f"moe/{k}" for k in AGGREGATE_KEYS]


def _run(tracking_uri: str, run_id: str):
    return mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id)


@pytest.fixture(scope="module")
def moe_result(tmp_path_factory, data_cache):
    """One moe_debug run of 12 steps shared by the tests that only read what it recorded."""
    tmp = tmp_path_factory.mktemp("moe")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = workbench.compose(
        "moe_debug",
        [
            f"output_dir={tmp / 'out'}",
            f"data.cache_dir={data_cache}",
            "trainer.progress_bar=false",
            "budget.steps=12",
            f"tracking.tracking_uri={uri}",
            "trainer.val_every_n_steps=6",
            "tracking.log_model=true",
            "tracking.system_metrics_interval=0.5",
        ],
    )
    return workbench.run(cfg, print_summary=False)


def test_mlflow_run_holds_documented_params_metrics_tags_and_config(moe_result):
    run = _run(moe_result.tracking_uri, moe_result.run_id)
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    for key in (
        "model.total_params",
        "model.active_params",
        "moe.top_k",
        "moe.capacity_factor",
        "model.d_model",
        "data.seq_len",
        "budget.steps",
        "precision.policy",
        "cost.hardware",
        "seed",
    ):
        assert key in params, key
    assert int(params["model.active_params"]) < int(params["model.total_params"])
    assert params["moe.expert_hidden"] == str(256 // 2)  # resolved: d_ff // top_k
    for key in DOCUMENTED_METRICS + MOE_METRICS:
        assert key in metrics, key
    assert tags["workbench.experiment"] == "moe_debug"
    assert "mlflow.source.git.commit" in tags or not (ROOT / ".git").exists()
    client = mlflow.MlflowClient(tracking_uri=moe_result.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(moe_result.run_id)}
    assert {"config.yaml", "summary.json", "data_stats.json"} <= artifacts


def test_the_run_lists_its_corpus_system_metrics_and_model_for_the_mlflow_ui(moe_result):
    client = mlflow.MlflowClient(tracking_uri=moe_result.tracking_uri)
    run = client.get_run(moe_result.run_id)
    assert run.info.run_name == "moe_debug val_every_n_steps=6 steps=12"  # what differs from the preset
    (entry,) = run.inputs.dataset_inputs  # the Datasets column: the corpus by its content key
    stats = moe_result.data_stats
    assert entry.dataset.name == "embedded:code+prose"
    assert entry.dataset.digest == stats["corpus_key"][:16]
    assert [(t.key, t.value) for t in entry.tags] == [("mlflow.data.context", "training")]
    profile = json.loads(entry.dataset.profile)
    assert (profile["documents"], profile["tokens_train"]) == (stats["docs"], stats["tokens_train"])
    # system metrics sampled every 0.5 s while it trained (the UI's System metrics tab)
    cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 2 and all(0 <= m.value <= 100 * os.cpu_count() for m in cpu)
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    # the network as an MLflow model of the run; grouped-mm experts do not trace with torch.export yet
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert (model.source_run_id, model.status) == (run.info.run_id, "READY")
    assert run.data.tags["workbench.model_format"].startswith("pickle (torch.export:")


def test_data_metrics_account_for_every_document(moe_result):
    metrics = _run(moe_result.tracking_uri, moe_result.run_id).data.metrics
    removed = {k: v for k, v in metrics.items() if k.startswith("data/removed/")}
    assert metrics["data/docs_kept"] == 400  # moe_debug: data.max_docs=400
    assert metrics["data/docs_sampled_out"] > 0  # the cap samples out; it removes nothing
    assert "data/removed/max_docs" not in removed
    assert (
        metrics["data/docs_in"]
        == metrics["data/docs_kept"] + sum(removed.values()) + metrics["data/docs_sampled_out"]
    )
    stats = moe_result.data_stats
    assert metrics["data/tokens_kept"] == stats["tokens_train"] + stats["tokens_val"]


def test_cost_metrics_are_consistent(moe_result):
    m, cfg = moe_result.metrics, moe_result.config
    tokens = 12 * cfg.data.batch_size * cfg.data.seq_len
    assert m["cost/tokens"] == tokens
    fpt = flops_per_token(cfg.model, cfg.moe, cfg.data.seq_len)["total"]
    assert m["cost/flops_per_token"] == pytest.approx(fpt)
    assert m["cost/train_flops"] == pytest.approx(fpt * tokens)
    assert m["cost/tokens_per_s"] > 0 and 0 < m["cost/mfu"] < 1
    assert m["cost/usd"] == pytest.approx(m["cost/device_hours"] * 0.10)  # the cpu table price
    assert 0 <= m["moe/drop_frac"] < 1 and m["moe/load_cv"] >= 0 and m["moe/max_load_ratio"] >= 1


def test_val_bpb_matches_val_loss_for_bytes(moe_result):
    # Byte tokenizer: every token is one byte, so bits per byte = nats per token / ln 2.
    m = moe_result.metrics
    assert m["val/bpb"] == pytest.approx(m["val/loss"] / math.log(2), rel=1e-6)


@pytest.mark.parametrize("preset", ["dense_debug", "moe_debug"])
def test_debug_models_learn(preset, debug_overrides):
    cfg = workbench.compose(
        preset,
        [*debug_overrides, "budget.steps=30", "trainer.val_every_n_steps=30", "trainer.log_every_n_steps=1"],
    )
    result = workbench.run(cfg, print_summary=False)
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "train/loss")
    first, last = history[0].value, min(h.value for h in history[-5:])
    assert first == pytest.approx(math.log(257), abs=0.3)  # uniform over the byte vocabulary at init
    assert last < first - 1.0, (first, last)
    assert result.metrics["val/loss"] < first - 1.0


def test_token_and_flop_budgets_set_the_step_count(debug_overrides):
    cfg = workbench.compose("dense_debug", [*debug_overrides, "budget.steps=null", "budget.tokens=3000"])
    per_step = cfg.data.batch_size * cfg.data.seq_len
    result = workbench.run(cfg, print_summary=False)
    assert result.metrics["cost/tokens"] == math.ceil(3000 / per_step) * per_step
    fpt = result.metrics["cost/flops_per_token"]
    cfg = workbench.compose(
        "dense_debug", [*debug_overrides, "budget.steps=null", f"budget.flops={fpt * per_step * 3.5}"]
    )
    result = workbench.run(cfg, print_summary=False)
    assert result.metrics["cost/tokens"] == 4 * per_step  # ceil(3.5) steps


def test_money_budget_stops_the_run(debug_overrides):
    # At $3600/h every second costs a dollar: a $2 budget ends within a few steps, whatever the speed.
    cfg = workbench.compose(
        "dense_debug", [*debug_overrides, "budget.steps=100000", "budget.usd=2", "cost.usd_per_hour=3600"]
    )
    result = workbench.run(cfg, print_summary=False)
    assert result.stop_reason == "budget.usd"
    assert 2.0 <= result.metrics["cost/usd"] < 2.0 + 3.0


def test_resume_continues_step_count_and_run(debug_overrides, tmp_path):
    first = workbench.run(
        workbench.compose("moe_debug", [*debug_overrides, "budget.steps=8", "trainer.log_every_n_steps=1"]),
        print_summary=False,
    )
    resumed = workbench.run(
        workbench.compose(
            "moe_debug",
            [
                *debug_overrides,
                "budget.steps=14",
                "trainer.log_every_n_steps=1",
                f"ckpt_path={first.checkpoint}",
                f"output_dir={tmp_path / 'out2'}",
            ],
        ),
        print_summary=False,
    )
    assert resumed.run_id == first.run_id
    client = mlflow.MlflowClient()
    steps = [h.step for h in client.get_metric_history(first.run_id, "train/loss")]
    assert max(steps) == 13 and min(steps) == 0
    assert resumed.metrics["cost/tokens"] == 14 * 8 * 64  # counters continued from the checkpoint
    assert client.get_run(first.run_id).data.tags["workbench.resumed_from"].endswith("@step8")


def test_cli_end_to_end(tmp_path, data_cache):
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "+experiment=moe_debug",
            "budget.steps=6",
            f"output_dir={tmp_path / 'out'}",
            f"data.cache_dir={data_cache}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val bits/byte" in proc.stdout and f"mlflow ui --backend-store-uri {uri}" in proc.stdout
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    assert run.info.status == "FINISHED"
    # the link to the runs table (tests/test_mlflow_ui.py opens it in a browser)
    assert f"/#/experiments/{run.info.experiment_id}?workflowType=machine_learning" in proc.stdout
    for key in (
        "val/loss",
        "val/bpb",
        "cost/flops_per_token",
        "cost/tokens_per_s",
        "cost/mfu",
        "cost/usd",
        "moe/load_cv",
        "moe/drop_frac",
    ):
        assert key in run.data.metrics, key
    assert int(run.data.params["model.active_params"]) < int(run.data.params["model.total_params"])
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()


class _LossRecorder(pl.Callback):
    """The training loss of every step this process ran."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])


def test_resume_from_a_periodic_checkpoint_reproduces_the_uninterrupted_run(debug_overrides):
    # Same weights, optimiser, schedule and data position: the resumed steps repeat the original ones exactly.
    overrides = [*debug_overrides, "budget.steps=16", "data.max_docs=60", "trainer.log_every_n_steps=1"]
    full_steps, resumed_steps = _LossRecorder(), _LossRecorder()
    full = workbench.run(
        workbench.compose("moe_debug", [*overrides, "trainer.checkpoint_every_n_steps=10"]),
        print_summary=False,
        callbacks=[full_steps],
    )
    ckpt = Path(full.checkpoint).parent / "step0000010.ckpt"
    assert ckpt.is_file()
    resumed = workbench.run(
        workbench.compose(
            "moe_debug", [*overrides, f"ckpt_path={ckpt}", "output_dir=" + str(ckpt.parent / "r")]
        ),
        print_summary=False,
        callbacks=[resumed_steps],
    )
    assert sorted(resumed_steps.losses) == list(range(11, 17))
    for s in range(11, 17):
        assert resumed_steps.losses[s] == full_steps.losses[s], s
    assert resumed.metrics["val/loss"] == full.metrics["val/loss"]
    # The replayed steps went into the same MLflow run without a second value for any step.
    client = mlflow.MlflowClient()
    for key in ("train/loss", "cost/tokens", "val/loss"):
        steps = [h.step for h in client.get_metric_history(full.run_id, key)]
        assert len(steps) == len(set(steps)), key


def test_cli_multirun_prints_jobs_side_by_side(tmp_path, data_cache):
    uri = f"sqlite:///{tmp_path / 'multi.db'}"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "+experiment=moe_debug",
            "moe.top_k=1,2",
            "budget.steps=3",
            f"data.cache_dir={data_cache}",
            "trainer.progress_bar=false",
            "data.max_docs=60",
            f"output_dir={tmp_path / 'out'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Side by side" in proc.stdout
    assert "moe_debug moe.top_k=1" in proc.stdout and "moe_debug moe.top_k=2" in proc.stdout
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    assert sorted(r.data.params["moe.top_k"] for r in found) == ["1", "2"]
    # named by what differs from the preset (the data cache, output folder and progress bar are not named)
    names = sorted(r.info.run_name for r in found)  # moe_debug routes top-2 itself
    assert names == ["moe_debug max_docs=60 steps=3", "moe_debug top_k=1 max_docs=60 steps=3"]
    checkpoints = sorted(r.data.tags["workbench.checkpoint"] for r in found)  # one folder per job
    assert checkpoints == [str(tmp_path / "out" / str(i) / "checkpoints" / "last.ckpt") for i in (0, 1)]


class _Payload:
    """Unpickling this runs `open(marker, "w")`: what a crafted checkpoint would do with a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_is_refused_without_running_its_payload(tmp_path):
    import pickle

    from workbench.config import ConfigError
    from workbench.data.teacher import load_teacher
    from workbench.runner import read_resume_state

    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    torch.save({"global_step": 5, "workbench": {"x": _Payload(str(marker))}}, bad, pickle_module=pickle)
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*evil\.ckpt: not a loadable workbench checkpoint"):
        read_resume_state(str(bad), tmp_path, "default")
    with pytest.raises(
        ValueError, match=r"^teacher checkpoint .*evil\.ckpt is not a loadable workbench checkpoint"
    ):
        load_teacher(bad)
    assert not marker.exists()


def test_routing_statistics_are_logged_at_the_step_they_were_computed(debug_overrides, monkeypatch):
    from workbench.training.module import LMRecipe

    computed: dict[int, float] = {}
    real = LMRecipe.routing_metrics

    def recording(self, aux):
        out = real(self, aux)
        computed[self.global_step] = out["moe/max_vio_global"]
        return out

    monkeypatch.setattr(LMRecipe, "routing_metrics", recording)
    cfg = workbench.compose(
        "moe_debug",
        [*debug_overrides, "budget.steps=12", "trainer.log_every_n_steps=5", "trainer.val_every_n_steps=100"],
    )
    result = workbench.run(cfg, print_summary=False)
    history = mlflow.MlflowClient(tracking_uri=result.tracking_uri).get_metric_history(
        result.run_id, "moe/max_vio_global"
    )
    # Lightning sends steps 4 and 9 (0-based, every 5th); the statistics are computed there and on the last step
    assert sorted(computed) == [4, 9, 11]
    assert [(m.step, m.value) for m in history] == [
        (4, pytest.approx(computed[4])),
        (9, pytest.approx(computed[9])),
    ]
    assert result.metrics["moe/max_vio_global"] == pytest.approx(computed[11])  # the summary: the last step


def test_a_statistics_interval_off_the_logging_steps_is_refused():
    with pytest.raises(
        workbench.ConfigError, match=r"moe.stats_every_n_steps=3 is not a multiple of trainer"
    ):
        workbench.compose("moe_debug", ["moe.stats_every_n_steps=3", "trainer.log_every_n_steps=2"])
