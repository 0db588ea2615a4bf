"""Faults a demanding user causes: kill -9 while a checkpoint is written, truncated checkpoints, crashes and
Ctrl-C mid-run, dead processes that leave MLflow runs RUNNING, and run-time failures reported in one line."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import lightning.pytorch as pl
import mlflow
import pytest

import workbench
from workbench.config import ConfigError
from workbench.config.errors import explain
from workbench.training.checkpoints import TEMP_SUFFIX, remove_stale_temps, write_atomic

ROOT = Path(__file__).resolve().parents[1]


# -- atomic checkpoint writes -------------------------------------------------------------------------------


def test_kill_9_during_a_checkpoint_write_on_another_filesystem_leaves_no_partial_file(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temp folder")
    target_dir = shm / f"workbench-test-{os.getpid()}"
    target = target_dir / "step0000010.ckpt"
    # The writer blocks in fsync, after writing its bytes and before the rename: the moment a kill hurts most.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, sys, time
                import workbench.training.checkpoints as c
                def stuck(fd):
                    print("writing", flush=True)
                    time.sleep(60)
                c.os.fsync = stuck
                c.write_atomic({str(target)!r}, b"x" * (8 << 20))
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        assert child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        leftovers = list(target_dir.iterdir())
        assert not target.exists()  # never a truncated file under the final name
        assert [p.name for p in leftovers] == [f".{target.name}.{child.pid}{TEMP_SUFFIX}"]  # same folder
        assert remove_stale_temps(target_dir) == leftovers  # the next writer removes it: the pid is gone
        assert list(target_dir.iterdir()) == []
        write_atomic(target, b"complete")
        assert target.read_bytes() == b"complete" and len(list(target_dir.iterdir())) == 1
    finally:
        child.kill()
        for p in target_dir.glob("*"):
            p.unlink()
        target_dir.rmdir()


def test_a_full_disk_names_the_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import workbench.training.checkpoints as c

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(c.os, "fsync", full)
    target = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(OSError) as info:
        write_atomic(target, b"data")
    assert explain(info.value) == (
        f"disk full writing {target} (No space left on device); free space or choose another output_dir",
        1,
    )
    assert list(target.parent.iterdir()) == []


# -- crash, resume from the last good checkpoint, lost work billed ------------------------------------------


class _CrashAt(pl.Callback):
    def __init__(self, step: int, exc: BaseException) -> None:
        self.step, self.exc = step, exc

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise self.exc


def test_a_crash_resumes_from_the_last_loadable_checkpoint_and_bills_the_lost_steps(
    debug_overrides, tmp_path, tracking_uri
):
    overrides = [
        *debug_overrides,
        "budget.steps=12",
        "trainer.checkpoint_every_n_steps=4",
        "trainer.log_every_n_steps=1",
        "trainer.val_every_n_steps=4",
    ]
    cfg = workbench.compose("moe_debug", overrides)
    with pytest.raises(RuntimeError, match="power cut"):
        workbench.run(cfg, print_summary=False, callbacks=[_CrashAt(10, RuntimeError("power cut"))])
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    (crashed,) = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    assert crashed.info.status == "FAILED"
    assert crashed.data.tags["workbench.failure_reason"] == "RuntimeError: power cut"
    ckpts = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step0000004.ckpt", "step0000008.ckpt"]
    # step 8 is truncated (as a copy across filesystems used to leave it): `last` falls back to step 4
    data = (ckpts / "step0000008.ckpt").read_bytes()
    (ckpts / "step0000008.ckpt").write_bytes(data[: len(data) // 3])
    with pytest.raises(
        ConfigError, match=r"^ckpt_path=.*step0000008\.ckpt: not a loadable workbench checkpoint"
    ):
        workbench.run(
            workbench.compose("moe_debug", [*overrides, f"ckpt_path={ckpts / 'step0000008.ckpt'}"]),
            print_summary=False,
        )
    resumed = workbench.run(
        workbench.compose("moe_debug", [*overrides, "ckpt_path=last"]), print_summary=False
    )
    assert resumed.run_id == crashed.info.run_id
    run = client.get_run(resumed.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["workbench.resumed_from"] == f"{ckpts / 'step0000004.ckpt'}@step4"
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    # steps 5..10 ran before the crash and again after the resume: 6 steps computed twice, and billed
    assert resumed.metrics["cost/tokens"] == 12 * tokens_per_step
    assert resumed.metrics["cost/lost_tokens"] == 6 * tokens_per_step
    assert resumed.metrics["cost/tokens_computed"] == 18 * tokens_per_step
    assert (
        resumed.metrics["cost/flops_computed"]
        == 18 * tokens_per_step * resumed.metrics["cost/flops_per_token"]
    )
    for key in ("train/loss", "val/loss", "cost/tokens"):
        steps = [h.step for h in client.get_metric_history(resumed.run_id, key)]
        assert len(steps) == len(set(steps)), key  # replayed steps are not logged twice
    assert not [p for p in ckpts.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_a_run_that_died_before_its_first_checkpoint_continues_in_the_same_run(debug_overrides, tracking_uri):
    overrides = [
        *debug_overrides,
        "budget.steps=8",
        "trainer.checkpoint_every_n_steps=6",
        "trainer.log_every_n_steps=1",
    ]
    cfg = workbench.compose("moe_debug", [*overrides, "ckpt_path=last"])
    with pytest.raises(RuntimeError, match="power cut"):
        workbench.run(cfg, print_summary=False, callbacks=[_CrashAt(3, RuntimeError("power cut"))])
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    (crashed,) = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    resumed = workbench.run(cfg, print_summary=False)  # no checkpoint yet: from step 0, in the same run
    runs = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    assert [r.info.run_id for r in runs] == [crashed.info.run_id] == [resumed.run_id]
    run = runs[0]
    assert (
        run.info.status == "FINISHED" and run.data.tags["workbench.resumed_from"] == "no checkpoint yet@step0"
    )
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    assert resumed.metrics["cost/lost_tokens"] == 3 * tokens_per_step  # steps 0..2 ran twice
    for key in ("train/loss", "data/docs_kept"):
        steps = [h.step for h in client.get_metric_history(resumed.run_id, key)]
        assert len(steps) == len(set(steps)), key


def test_ckpt_path_last_without_a_checkpoint_starts_from_step_0(debug_overrides, capsys):
    result = workbench.run(
        workbench.compose("dense_debug", [*debug_overrides, "budget.steps=2", "ckpt_path=last"]),
        print_summary=False,
    )
    assert "no checkpoint in" in capsys.readouterr().out and result.metrics["cost/tokens"] > 0


def test_ctrl_c_mid_run_is_a_keyboard_interrupt_and_the_run_is_killed(debug_overrides, tracking_uri):
    before = signal.getsignal(signal.SIGINT)
    cfg = workbench.compose("dense_debug", [*debug_overrides, "budget.steps=8"])
    with pytest.raises(KeyboardInterrupt):  # not Lightning's sys.exit(1)
        workbench.run(cfg, print_summary=False, callbacks=[_CrashAt(3, KeyboardInterrupt())])
    assert signal.getsignal(signal.SIGINT) is before  # Lightning left SIGINT ignored; the run restored it
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    assert run.info.status == "KILLED"


def test_interrupts_inside_tracking_writes_wait_for_the_write_so_the_store_stays_unlocked(tracking_uri):
    # Without the deferral, an interrupt inside an MLflow SQLite call left the connection holding a database
    # lock: the next write (of any process) failed after MLflow's 20 s busy timeout.
    from workbench.config.errors import interrupt_on_signals
    from workbench.tracking.session import client_for

    client = client_for(tracking_uri)
    run_id = client.create_run(client.create_experiment("locks")).info.run_id
    rng = random.Random(0)
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupted = 0
    try:
        interrupt_on_signals()
        for i in range(40):
            threading.Timer(rng.uniform(0.001, 0.03), os.kill, (os.getpid(), signal.SIGINT)).start()
            with pytest.raises(KeyboardInterrupt):
                while True:  # a write, then reads (a half-fetched cursor holds SQLite's shared lock)
                    client.log_batch(run_id, metrics=[mlflow.entities.Metric("m", float(i), 0, i)])
                    client.get_metric_history(run_id, "m")
            interrupted += 1
            client.set_tag(run_id, "after", str(i))  # raises "database is locked" if a write was cut
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
    assert interrupted == 40
    assert client.get_run(run_id).data.tags["after"] == "39"


# -- runs whose process died ---------------------------------------------------------------------------------


def test_a_run_whose_process_was_killed_is_closed_by_fix_stale(tracking_uri):
    script = (
        "import os; from workbench.tracking.session import TrackingSession as S; "
        "s = S.start('workbench', 'doomed'); print(s.run_id, flush=True); os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    run_id = proc.stdout.strip()
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    listed = subprocess.run(
        [sys.executable, "-m", "workbench", "runs"], capture_output=True, text=True, timeout=120
    )
    assert run_id in listed.stdout and "ended without closing the run" in listed.stdout
    fixed = subprocess.run(
        [sys.executable, "-m", "workbench", "runs", "--fix-stale"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fixed.returncode == 0 and "1 stale run(s) closed" in fixed.stdout
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "ended without closing the run (killed)" in run.data.tags["workbench.failure_reason"]


# -- one line for every run-time failure ---------------------------------------------------------------------


def _train(args: list[str], cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, *extra],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_bad_runs_end_in_one_line_with_their_exit_status(tmp_path, data_cache, tracking_uri):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    base = ["+experiment=dense_debug", "budget.steps=4", f"data.cache_dir={data_cache}"]
    out = f"output_dir={tmp_path / 'out'}"
    cases = {
        "devices": (
            [*base, out, "trainer.devices=64", "trainer.accelerator=cpu"],
            2,
            r"trainer\.devices=64: this machine has \d+ CPU cores",
        ),
        "name": (
            [*base, "name=../../../../elsewhere/x"],
            2,
            r"name='\.\./\.\./\.\./\.\./elsewhere/x': a run name is one folder name",
        ),
        "dotdot": (
            [*base, "output_dir=outputs/../../x"],
            2,
            r"output_dir=outputs/\.\./\.\./x: '\.\.' is not allowed",
        ),
        "under a file": (
            [*base, f"output_dir={a_file}/out"],
            2,
            rf"output_dir={a_file}/out: {a_file} is a file, not a folder",
        ),
        "tracking": (
            [*base, out, "tracking.tracking_uri=bogus://nowhere"],
            1,
            r"tracking\.tracking_uri=bogus://nowhere: cannot open the MLflow store",
        ),
        "hub offline": (
            [*base, out, "data=hub", "data.hub_id=nobody/nothing"],
            1,
            r"data\.hub_id=nobody/nothing: cannot load split 'train' from the Hugging Face hub \(HF_HUB_OFFLINE",
        ),
        "corrupt": (
            [*base, out, f"ckpt_path={corrupt}"],
            2,
            rf"ckpt_path={corrupt}: not a loadable workbench checkpoint",
        ),
        "nan": (
            [*base, out, "trainer.lr=1e3", "trainer.warmup_steps=0", "budget.steps=30"],
            1,
            r"train/total_loss is nan at step \d+: the run diverged",
        ),
    }
    # MLflow's first schema migration of a new SQLite store is not safe against 8 processes at once
    # (a leftover _alembic_tmp table breaks the store): the store exists before they start.
    from workbench.tracking.session import check_tracking

    check_tracking(tracking_uri)
    procs = {name: _train(args, tmp_path) for name, (args, _, _) in cases.items()}
    import re

    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        _, status, pattern = cases[name]
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode == status, (name, stderr[-2000:])
        assert "Traceback" not in stderr, (name, stderr[-2000:])
        assert re.fullmatch("error: " + pattern + ".*", lines[-1]), (name, lines[-1])
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    (nan_run,) = runs  # only the diverged run got as far as MLflow
    assert nan_run.info.status == "FAILED"
    assert nan_run.data.tags["workbench.failure_reason"].startswith("train/total_loss is nan at step")
    assert not (tmp_path.parent / "elsewhere").exists()


def test_verbose_shows_the_traceback(tmp_path, data_cache, tracking_uri):
    args = [
        "+experiment=dense_debug",
        f"data.cache_dir={data_cache}",
        "tracking.tracking_uri=bogus://nowhere",
    ]
    proc = _train([*args, f"output_dir={tmp_path / 'out'}"], tmp_path, "--verbose")
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1 and "Traceback" in stderr and "Unavailable" in stderr
