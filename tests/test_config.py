"""Every preset and group option composes and validates; every bad value fails with one line naming its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workbench.config import ConfigError, conf_dir
from workbench.preflight import compose

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ["model", "moe", "precision", "data", "trainer", "budget", "cost", "tracking"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_preset_composes_and_validates(experiment):
    cfg = compose(experiment)
    assert cfg.name == experiment


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in GROUPS for o in _options(g) if not (g == "data" and o in ("files", "hub"))],
)
def test_every_group_option_composes(group, option):
    cfg = compose("moe_debug", [f"{group}={option}"])
    assert getattr(cfg, group) is not None


def test_files_and_hub_options_need_their_inputs():
    with pytest.raises(ConfigError, match=r"^data\.paths is empty"):
        compose("dense_debug", ["data=files"])
    with pytest.raises(ConfigError, match=r"^data\.hub_id is not set"):
        compose("dense_debug", ["data=hub"])
    cfg = compose("dense_debug", ["data=files", "data.paths=[a.jsonl]"])
    assert cfg.data.paths == ["a.jsonl"]


def test_presets_compare_at_equal_active_ffn():
    dense, moe = compose("quickstart_dense"), compose("quickstart_moe")
    assert dense.model.d_model == moe.model.d_model and dense.model.n_layers == moe.model.n_layers
    assert dense.budget == moe.budget
    assert moe.moe.expert_hidden is None  # resolved to d_ff // top_k at run time
    assert moe.model.d_ff // moe.moe.top_k * moe.moe.top_k == dense.model.d_ff


@pytest.mark.parametrize(
    "override,key",
    [
        ("moe.top_k=9", "moe.top_k"),
        ("moe.capacity_factor=0", "moe.capacity_factor"),
        ("moe.capacity_factor=-1.5", "moe.capacity_factor"),
        ("model.n_heads=3", "model.n_heads"),
        ("budget.steps=0", "budget.steps"),
        ("cost.hardware=tpu9", "cost.hardware"),
        ("model.d_modle=64", "model.d_modle"),
        ("model.d_model=wide", "model.d_model"),
        ("trainer.lr=-1", "trainer.lr"),
        ("precision.policy=fp8", "precision.policy"),
        ("data.tokenizer=sentencepiece", "data.tokenizer"),
        ("model=huge", "model=huge"),
    ],
)
def test_invalid_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as info:
        compose("moe_debug", [override])
    message = str(info.value)
    assert key in message
    assert "\n" not in message


def test_budget_needs_a_limit():
    with pytest.raises(ConfigError, match=r"^budget: no limit set"):
        compose("dense_debug", ["budget.steps=null"])


def test_allowed_values_are_listed():
    with pytest.raises(ConfigError, match=r"choose one of: a100, h100, h200, cpu"):
        compose("dense_debug", ["cost.hardware=v100"])
    with pytest.raises(ConfigError, match=r"keys allowed in moe: num_experts, top_k"):
        compose("moe_debug", ["moe.topk=2"])
    with pytest.raises(ConfigError, match=r"available: .*dense_debug.*moe_debug"):
        compose("nope")


@pytest.mark.parametrize(
    "args,key",
    [
        (["+experiment=moe_debug", "moe.top_k=9"], "moe.top_k"),
        (["-m", "+experiment=moe_debug,dense_debug", "moe.capacity_factor=1.0,0"], "moe.capacity_factor"),
        (["+experiment=dense_debug", "model.d_modle=3"], "model.d_modle"),
        (
            ["+experiment=dense_debug", "data=files", "data.paths=[no/such/*.jsonl]", "tracking=none"],
            "data.paths",
        ),
    ],
)
def test_cli_rejects_bad_config_with_one_line(args, key, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and key in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
