"""Every MoE preset trains at debug size from the CLI, and every router, capacity policy and balancer chosen by
override shows up in MLflow params and metrics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

import workbench
from workbench.config import conf_dir
from workbench.models.moe import MoEShape
from workbench.preflight import compose

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (conf_dir() / "experiment").glob("moe_*.yaml") if p.stem != "moe_debug")
ROUTER_OF = {
    "moe_top2": "topk",
    "moe_switch": "switch",
    "moe_expert_choice": "expert_choice",
    "moe_deepseek": "topk",
    "moe_aux_free": "topk",
    "moe_group_limited": "topk",
    "moe_hash": "hash",
    "moe_random": "random",
    "moe_gran8x1": "topk",
    "moe_gran32x4": "topk",
    "moe_gran64x8": "topk",
}


def test_the_preset_list_is_the_documented_one():
    assert PRESETS == sorted(ROUTER_OF)
    readme = (ROOT / "README.md").read_text()
    for name in [*PRESETS, "dense_baseline"]:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize("name", PRESETS)
def test_presets_match_the_dense_baseline_in_active_ffn_width(name):
    dense, cfg = compose("dense_baseline"), compose(name)
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.budget) == (
        dense.model.d_model,
        dense.model.n_layers,
        dense.budget,
    )
    shape = MoEShape.of(cfg.moe, cfg.model.d_ff)
    active_width = (shape.active_experts(cfg.moe) + shape.num_shared) * shape.expert_hidden
    assert (
        active_width == dense.model.d_ff
    )  # each token passes through as many FFN units as in the dense model


def test_granularity_ladder_keeps_total_and_active_parameters():
    shapes = [MoEShape.of(compose(n).moe, 512) for n in ("moe_gran8x1", "moe_gran32x4", "moe_gran64x8")]
    assert [(s.num_experts, s.top_k) for s in shapes] == [(8, 1), (32, 4), (64, 8)]
    assert {s.num_experts * s.expert_hidden for s in shapes} == {8 * 512}  # total routed width
    assert {s.top_k * s.expert_hidden for s in shapes} == {512}  # active routed width


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_every_preset_trains_at_debug_size_from_the_cli(tmp_path, data_cache):
    uri = f"sqlite:///{tmp_path / 'presets.db'}"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            f"+experiment={','.join(['dense_baseline', *PRESETS])}",
            "+debug=default",
            "budget.steps=4",
            "trainer.log_every_n_steps=1",  # the aux-free bias range is 0 at step 0, the first logged step
            "data.max_docs=60",
            f"data.cache_dir={data_cache}",
            f"output_dir={tmp_path / 'out'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    by_name = {r.data.tags["workbench.experiment"]: r for r in runs}
    assert sorted(by_name) == sorted(["dense_baseline", *PRESETS])
    for name, run in by_name.items():
        assert run.info.status == "FINISHED", name
        assert math.isfinite(run.data.metrics["val/bpb"]), name
        assert run.data.params["model.d_model"] == "64"  # +debug=default shrank it
        if name == "dense_baseline":
            assert not any(k.startswith("moe/") for k in run.data.metrics)
            continue
        assert run.data.params["moe.router.type"] == ROUTER_OF[name], name
        for key in (
            "moe/aux_loss",
            "moe/drop_frac",
            "moe/max_vio",
            "moe/max_vio_global",
            "moe/router_entropy",
        ):
            assert key in run.data.metrics, (name, key)
    assert "moe/bias_range" in by_name["moe_aux_free"].data.metrics
    assert by_name["moe_aux_free"].data.metrics["moe/bias_range"] > 0
    assert "moe/device_loss_scaled" in by_name["moe_group_limited"].data.metrics
    assert by_name["moe_deepseek"].data.params["moe.built.num_experts"] == "32"
    assert by_name["moe_deepseek"].data.params["moe.built.top_k"] == "7"
    assert by_name["moe_expert_choice"].data.metrics["moe/drop_frac"] == 0.0


def test_overrides_reach_mlflow_params_and_metrics(debug_overrides):
    cfg = workbench.compose(
        "moe_debug",
        [
            *debug_overrides,
            "budget.steps=4",
            "data.max_docs=60",
            "moe/router=noisy_topk",
            "moe.drop_policy=probs",
            "moe.capacity_factor=1.0",
            "moe.eval_capacity_factor=2.0",
            "moe.pad_to_capacity=true",
            "moe.seq_aux_loss_weight=0.001",
            "moe.global_aux_loss_weight=0.002",
            "moe.z_loss_weight=0.001",
            "precision.router_combine_dtype=compute",
        ],
    )
    result = workbench.run(cfg, print_summary=False)
    # 4 steps, validation every 5: the summary survives the final stand-alone validate()
    assert {"moe/max_vio", "moe/drop_frac", "moe/z_loss_scaled", "train/loss"} <= set(result.metrics)
    run = mlflow.MlflowClient().get_run(result.run_id)
    params, metrics = run.data.params, run.data.metrics
    # logging every 5 steps never flushed a 4-step run: the end of the run logs what the summary holds
    assert set(result.metrics) <= set(metrics)
    assert params["moe.router.type"] == "noisy_topk" and params["moe.drop_policy"] == "probs"
    assert params["moe.eval_capacity_factor"] == "2.0" and params["moe.pad_to_capacity"] == "True"
    assert params["precision.router_combine_dtype"] == "compute"
    for name, weight in [
        ("aux_loss", 0.01),
        ("seq_aux_loss", 0.001),
        ("global_aux_loss", 0.002),
        ("z_loss", 0.001),
    ]:
        assert metrics[f"moe/{name}_scaled"] == pytest.approx(weight * metrics[f"moe/{name}"], rel=1e-6)
    # each layer's expert shares are logged and sum to 1; padding shows when capacity exceeds the load
    for layer in (0, 1):
        shares = [metrics[f"moe/layer{layer}/load/e{j}"] for j in range(4)]
        assert sum(shares) == pytest.approx(1.0, abs=1e-6)
    assert metrics["moe/pad_frac"] >= 0.0
    # the end-of-run heatmap and its numbers are artifacts
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(result.run_id, "moe")}
    assert names == {"moe/expert_load.json", "moe/expert_load.png"}
    loads = json.loads(Path(client.download_artifacts(result.run_id, "moe/expert_load.json")).read_text())
    assert sorted(loads) == ["layer0", "layer1"]
    assert all(len(v) == 4 and sum(v) == pytest.approx(1.0) for v in loads.values())


def test_aux_free_bias_and_expert_loads_are_saved_in_the_checkpoint(debug_overrides):
    import torch

    cfg = workbench.compose(
        "moe_aux_free", [*debug_overrides, "+debug=default", "budget.steps=4", "data.max_docs=60"]
    )
    result = workbench.run(cfg, print_summary=False)
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for layer in (0, 1):
        bias = state[f"network.blocks.{layer}.ffn.router.bias_E"]
        assert bias.dtype == torch.float32 and bias.abs().max() > 0  # 4 sign updates of 1e-3 moved it
        assert (
            abs(float(bias.abs().max()) - 4e-3) < 1e-6
        )  # |b| <= 4 * gamma, reached by a persistently skewed expert
        loads = state[f"network.blocks.{layer}.ffn.load_total_E"]
        assert (
            int(loads.sum()) == 4 * 8 * 64 * 2
        )  # 4 steps x 8 sequences x 64 tokens x top-2, every assignment
