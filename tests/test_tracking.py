"""The TrackingSession every run records through: params once, tags, metrics, artifacts, final status."""

from __future__ import annotations

import pytest
import torch

from workbench.config import NonFiniteLoss
from workbench.tracking.session import EXPERIMENT_KIND, FAILURE_REASON, TrackingSession


def test_a_session_records_and_finishes(tracking_uri):
    s = TrackingSession.start("exp", "run-a", {"workbench.experiment": "demo"}, tracking_uri)
    s.log_params({"model.d_model": 64, "moe.top_k": 2})
    s.log_params(
        {"model.d_model": 128, "trainer.lr": 0.003}
    )  # immutable: an existing key is kept, not raised
    s.log_metrics({"val/bpb": 2.5, "cost/usd": float("nan")}, step=3)  # NaN is left out
    s.log_dict({"a": 1}, "summary.json")
    s.finish()
    run = s.client.get_run(s.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model.d_model": "64", "moe.top_k": "2", "trainer.lr": "0.003"}
    assert run.data.metrics == {"val/bpb": 2.5}
    assert run.data.tags["workbench.experiment"] == "demo"
    exp = s.client.get_experiment(run.info.experiment_id)
    assert exp.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]  # the UI opens on runs, not GenAI traces
    assert [a.path for a in s.client.list_artifacts(s.run_id)] == ["summary.json"]


def test_a_failing_block_marks_the_run_failed_with_its_reason(tracking_uri):
    with pytest.raises(FloatingPointError):
        with TrackingSession.start("exp", "run-b", tracking_uri=tracking_uri) as s:
            raise NonFiniteLoss("train/total_loss is nan at step 7")
    run = s.client.get_run(s.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_REASON] == "train/total_loss is nan at step 7"  # a known failure: its line
    with pytest.raises(ZeroDivisionError):
        with TrackingSession.start("exp", "run-bug", tracking_uri=tracking_uri) as b:
            raise ZeroDivisionError("division by zero\nmore")
    assert b.client.get_run(b.run_id).data.tags[FAILURE_REASON] == "ZeroDivisionError: division by zero"
    with pytest.raises(KeyboardInterrupt):
        with TrackingSession.start("exp", "run-c", tracking_uri=tracking_uri) as k:
            raise KeyboardInterrupt
    assert k.client.get_run(k.run_id).info.status == "KILLED"


def test_resume_and_nesting(tracking_uri):
    parent = TrackingSession.start("exp", "sweep", tracking_uri=tracking_uri)
    child = TrackingSession.start("exp", "trial", tracking_uri=tracking_uri, parent_run_id=parent.run_id)
    child.finish()
    again = TrackingSession.resume(child.run_id, tracking_uri)
    assert again.client.get_run(child.run_id).info.status == "RUNNING"
    assert again.client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_a_run_leaves_the_process_settings_as_it_found_them():
    import logging

    import lightning.pytorch  # noqa: F401  (importing it sets its loggers' levels; a run restores those)

    from workbench.config.schema import TrainerConfig
    from workbench.runner import process_settings

    threads, level = torch.get_num_threads(), logging.getLogger("lightning.pytorch").level
    with process_settings(TrainerConfig(num_threads=1)):
        assert torch.get_num_threads() == 1
        assert logging.getLogger("lightning.pytorch").level == logging.WARNING
    assert torch.get_num_threads() == threads
    assert logging.getLogger("lightning.pytorch").level == level


def test_a_dense_network_is_logged_as_an_exported_model_that_loads_without_unpickling(tracking_uri):
    import mlflow.pytorch

    from workbench.config import compose_dictconfig, to_object
    from workbench.models import build_model
    from workbench.runner import resolve

    cfg = resolve(to_object(compose_dictconfig("dense_debug")), 257)
    network = build_model(cfg.model, cfg.moe, cfg.precision).eval()
    s = TrackingSession.start("exp", "dense", tracking_uri=tracking_uri)
    example = torch.randint(0, 257, (1, 16))
    model_id, fmt = s.log_model(network, example, step=5, params={"total_params": 7})
    s.finish()
    assert fmt == "pt2"
    model = s.client.get_logged_model(model_id)
    assert model.params == {"total_params": "7"} and model.tags["workbench.model_format"] == "pt2"
    assert [(o.model_id, o.step) for o in s.client.get_run(s.run_id).outputs.model_outputs] == [(model_id, 5)]
    loaded = mlflow.pytorch.load_model(model.artifact_location)  # a torch.export program: no pickle
    with torch.no_grad():
        torch.testing.assert_close(loaded(example), network(example)[0])
