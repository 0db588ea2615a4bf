"""Every preset and group option composes and validates; every bad value fails with one line naming its key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.config import ConfigError, compose_dictconfig, conf_dir, to_container
from workbench.preflight import compose, validate

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


def test_files_and_hub_options_need_their_inputs(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.paths is empty"):
        compose("dense_debug", ["data=files"])
    with pytest.raises(ConfigError, match=r"^data\.hub_id is not set"):
        compose("dense_debug", ["data=hub"])
    with pytest.raises(ConfigError, match=r"^data\.paths: no such file 'a\.jsonl'"):  # before any work
        compose("dense_debug", ["data=files", "data.paths=[a.jsonl]"])
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    cfg = compose("dense_debug", ["data=files", f"data.paths=[{tmp_path / 'a.jsonl'}]"])
    assert cfg.data.paths == [str(tmp_path / "a.jsonl")]


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
    "args,message",
    [
        (["+experiment=moe_debug", "moe.top_k=[1,2"], "moe.top_k=[1,2: no viable alternative at input"),
        (
            ["+experiment=moe_debug", "data.source=files", "data.paths=[/no/such/file.jsonl]"],
            "data.paths: no such file '/no/such/file.jsonl'",
        ),
        (["+experiment=moe_debug", "model.vocab_size=3"], "model.vocab_size=3 < 257, the smallest tokenizer"),
    ],
)
def test_command_line_check_names_the_override_before_any_work(args, message):
    from workbench.preflight import check_command_line

    with pytest.raises(ConfigError) as info:
        check_command_line(args)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


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


# -- typed choices, one message format, components owning their rules ----------------------------------------


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "cost.hardware=tpu",
            "cost.hardware='tpu' is not allowed; choose one of: a100, h100, h200, cpu",
        ),
        (
            "precision.policy=fp8",
            "precision.policy='fp8' is not allowed; choose one of: fp32, bf16-mixed, fp16-mixed, bf16-true",
        ),
        (
            "moe.router.type=bogus",
            "moe.router.type='bogus' is not allowed; choose one of: topk, switch, noisy_topk, expert_choice, "
            "hash, random",
        ),
        ("moe.drop_policy=random", "moe.drop_policy='random' is not allowed; choose one of: position, probs"),
        (
            "data.embedded_kinds=[code,poetry]",
            "data.embedded_kinds[1]='poetry' is not allowed; choose one of: code, prose",
        ),
        ("model.d_model=wide", "model.d_model='wide' must be an integer"),
        ("moe.eval_capacity_factor=abc", "moe.eval_capacity_factor='abc' must be a number or null"),
        ("tracking.enabled=maybe", "tracking.enabled='maybe' must be true or false"),
    ],
)
def test_closed_choices_and_types_fail_while_composing(override, message):
    """Hydra's composition itself rejects these (before any component rule runs), and the message is built
    from the schema's Enum and type, in the same format as every other check."""
    with pytest.raises(ConfigError) as info:
        compose_dictconfig("moe_debug", [override])
    assert str(info.value) == message


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "moe.capacity_factor=-1",
            "moe.capacity_factor=-1.0 must be > 0 (use moe.dropless=true for no capacity limit)",
        ),
        ("model.dropout=1.0", "model.dropout=1.0 must be in [0, 1)"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5 must be in (0, 1)"),
        ("budget.steps=0", "budget.steps=0 must be > 0 (or null)"),
        ("trainer.beta2=1.0", "trainer.beta2=1.0 must be in [0, 1)"),
        ("moe.top_k=9", "moe.top_k=9 > moe.num_experts=4; top_k must be in 1..4"),
        (
            "moe.router.num_groups=3",
            "moe.router.num_groups=3 must divide the 4 routed experts (moe.num_experts * moe.segmentation)",
        ),
    ],
)
def test_bounds_and_rules_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        compose("moe_debug", [override])
    assert str(info.value) == message


def test_keys_added_with_plus_to_a_typed_node_are_refused():
    # OmegaConf would keep `foo` as a stray attribute of ModelConfig; the run would silently ignore it.
    with pytest.raises(
        ConfigError, match=r"^model\.foo: unknown key; keys allowed in model: ffn, vocab_size"
    ):
        compose("dense_debug", ["+model.foo=1"])
    with pytest.raises(
        ConfigError, match=r"^moe\.router\.bar: unknown key; keys allowed in moe\.router: type,"
    ):
        compose("moe_debug", ["+moe.router.bar=2"])


def test_configs_built_in_python_get_the_same_checks():
    """A dataclass built or replaced in Python never went through OmegaConf; validate still checks its
    choices and bounds, with the same message."""
    cfg = compose("moe_debug")
    bad = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, drop_policy="nope"))
    with pytest.raises(
        ConfigError, match=r"^moe\.drop_policy='nope' is not allowed; choose one of: position, probs$"
    ):
        validate(bad)
    bad = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, lr=0.0))
    with pytest.raises(ConfigError, match=r"^trainer\.lr=0\.0 must be > 0$"):
        validate(bad)


def test_every_choice_is_implemented_by_its_component():
    from workbench.config.choices import ExpertsBackend, HardwareName, PrecisionPolicy, RouterType
    from workbench.cost.hardware import HARDWARE
    from workbench.models.moe.experts import BACKENDS
    from workbench.models.moe.router import ROUTERS
    from workbench.training.precision import LIGHTNING_PRECISION

    assert list(ROUTERS) == list(RouterType)
    assert list(HARDWARE) == list(HardwareName)
    assert list(LIGHTNING_PRECISION) == [str(p) for p in PrecisionPolicy]
    assert BACKENDS == tuple(ExpertsBackend)
    from workbench.config.choices import SourceKind, SyntheticTask
    from workbench.data.sources import GENERATED, READ
    from workbench.data.synthetic import VERIFIERS

    assert sorted([*READ, *GENERATED]) == sorted(SourceKind)
    assert sorted(VERIFIERS) == sorted(SyntheticTask)


def test_choices_compare_as_strings_and_record_as_values():
    cfg = compose("moe_debug", ["precision=bf16-mixed"])
    assert cfg.precision.policy == "bf16-mixed" and cfg.moe.router.type == "topk"
    tree = to_container(cfg)
    assert tree["precision"]["policy"] == "bf16-mixed" and type(tree["precision"]["policy"]) is str
    assert tree["data"]["embedded_kinds"] == ["code", "prose"]


def test_config_package_imports_nothing_else_of_the_workbench():
    code = (
        "import sys, workbench.config\n"
        "print(sorted(m for m in sys.modules if m.startswith('workbench.') and not m.startswith('workbench.config')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_import_layers_hold():
    """The dependency rule of README "Layout" (pyproject [tool.importlinter]): layers and no cycles."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed in this environment")
    proc = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.parametrize(
    ("experiment", "overrides", "label"),
    [
        ("moe_top2", [], "moe_top2"),
        ("moe_top2", ["moe.capacity_factor=1.0"], "moe_top2 capacity_factor=1.0"),
        ("moe_top2", ["moe.capacity_factor=1.25"], "moe_top2"),  # the preset's own value changes nothing
        # debug size is one word, the rest in config order; where a run writes or how it shows is no change
        (
            "moe_switch",
            ["+debug=default", "moe.top_k=2", "seed=1", "output_dir=/tmp/x"],
            "moe_switch debug seed=1 top_k=2",
        ),
        # two changed keys that end alike keep their full names; past four values the rest is counted
        ("moe_debug", ["seed=1", "moe.router.seed=2"], "moe_debug seed=1 moe.router.seed=2"),
        (
            "moe_debug",
            ["model.d_model=96", "model.n_layers=3", "data.seq_len=32", "budget.steps=5", "trainer.lr=0.001"],
            "moe_debug d_model=96 n_layers=3 seq_len=32 lr=0.001 +1 more",
        ),
    ],
)
def test_run_label_names_what_differs_from_the_preset(experiment, overrides, label):
    from workbench.config import to_object
    from workbench.config.compose import run_label

    assert run_label(to_object(compose_dictconfig(experiment, overrides))) == label


def test_config_digest_keys_what_a_run_trains_not_where_it_is_written():
    from workbench.config import to_object
    from workbench.config.compose import config_digest

    def digest(*overrides: str) -> str:
        return config_digest(to_object(compose_dictconfig("moe_debug", list(overrides))))

    base = digest()
    assert digest("output_dir=/tmp/elsewhere", "tracking.run_name=x", "data.cache_dir=/tmp/c") == base
    assert digest("moe.capacity_factor=1.25") == base  # the preset's own value
    assert (
        len({base, digest("seed=1"), digest("moe.capacity_factor=1.5"), digest("precision=bf16-mixed")}) == 4
    )
