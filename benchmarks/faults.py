"""Faults, counted: what a training run and a sweep lose to kill -9 and Ctrl-C, and how bad input is refused.

1. `train`: one training run (the debug MoE model, a checkpoint every `--ckpt-every` steps, every step logged)
   is killed with SIGKILL at `--kills` random steps and resumed each time with `ckpt_path=last`. For each kill
   the steps lost are the steps the run had logged minus the checkpoint the next attempt resumes from
   (read from the checkpoint folder, independently of the workbench's own billing, which is reported beside
   it). The final validation loss is compared with an uninterrupted run of the same config (equal: training
   is deterministic on CPU for a seed and a checkpoint); every attempt must land in the same MLflow run.
2. `sweep`: a two-worker study (`--trials` trials) through `sweep.py --workers 2`, hit by `--worker-kills`
   SIGKILLs of a worker that is training a trial and `--ctrl-c` SIGINTs to the whole process group (as a
   terminal's Ctrl-C), each followed by the same command again, in a seeded random order. Counted at the
   end: trials requested vs complete, duplicated results (two completed trials for one configuration),
   lost configurations (a killed or interrupted trial whose parameters never completed), trials left
   RUNNING, and MLflow child runs left RUNNING.
3. `inputs`: bad override sets through `train.py`'s pre-flight check (in process), and bad documents in
   corpus files through the data stage. Clean means a ConfigError of one line naming the key (overrides),
   or a document skipped under a named reason while the good documents beside it are kept, or the file
   refused in one line naming it (documents).

Prints one JSON record. Targets: zero steps lost beyond the checkpoint interval, equal final loss, one run id;
complete == requested with none duplicated or lost; every bad input rejected cleanly.

    python benchmarks/faults.py [--parts train sweep inputs] [--kills 10] [--steps 120] [--ckpt-every 10]
        [--trials 10] [--worker-kills 5] [--ctrl-c 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STEP_FILE = re.compile(r"step(\d+)\.ckpt$")


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "WORKBENCH_ROOT": str(tmp),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def _client(tmp: Path):
    from workbench.tracking.session import client_for

    return client_for(f"sqlite:///{tmp / 'mlflow.db'}")


# -- 1. kill -9 of a training run ----------------------------------------------------------------------------


def _train_cmd(args, out: Path, tmp: Path) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "+experiment=moe_debug",
        f"budget.steps={args.steps}",
        f"trainer.checkpoint_every_n_steps={args.ckpt_every}",
        f"trainer.val_every_n_steps={args.ckpt_every}",
        "trainer.log_every_n_steps=1",  # lost work is measured to the step
        f"output_dir={out}",
        f"data.cache_dir={tmp / 'data'}",
        "ckpt_path=last",
    ]


def _runs(client) -> list:
    exp = client.get_experiment_by_name("workbench")
    return client.search_runs([exp.experiment_id]) if exp else []


def _logged_step(client, run_id: str) -> int:
    history = client.get_metric_history(run_id, "train/loss")
    return max((m.step for m in history), default=-1)


def _last_checkpoint(folder: Path) -> int:
    steps = [int(m.group(1)) for p in folder.glob("*.ckpt") if (m := STEP_FILE.search(p.name))]
    return max(steps, default=0)


def train_part(args, tmp: Path) -> dict:
    rng = random.Random(args.seed)
    ref_tmp, run_tmp = tmp / "reference", tmp / "killed"
    for d in (ref_tmp, run_tmp):
        d.mkdir()
    t0 = time.perf_counter()
    ref = subprocess.run(
        _train_cmd(args, ref_tmp / "out", ref_tmp),
        cwd=ROOT,
        env=_env(ref_tmp),
        capture_output=True,
        text=True,
    )
    if ref.returncode:
        raise SystemExit(f"the uninterrupted run failed: {ref.stderr[-2000:]}")
    ref_wall = time.perf_counter() - t0
    (ref_run,) = _runs(_client(ref_tmp))

    client = _client(run_tmp)
    out = run_tmp / "out"
    targets = sorted(rng.sample(range(2, args.steps - 1), args.kills))  # the steps at which to kill
    kills, run_ids = [], set()
    for target in targets:
        proc = subprocess.Popen(
            _train_cmd(args, out, run_tmp),
            cwd=ROOT,
            env=_env(run_tmp),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        run_id, step = None, -1
        while proc.poll() is None and step < target:
            time.sleep(0.05)
            runs = [r for r in _runs(client) if r.info.status == "RUNNING"]
            if runs:
                run_id = runs[0].info.run_id
                step = _logged_step(client, run_id)
        if proc.poll() is not None:
            raise SystemExit(f"attempt ended before step {target}: {proc.stderr.read()[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        run_ids.add(run_id)
        # what the run had done when it died: the metrics of the n-th step are logged at step n - 1
        done_steps = _logged_step(client, run_id) + 1
        resume_from = _last_checkpoint(out / "checkpoints")
        kills.append({"target_step": target, "steps_done": done_steps, "resume_from": resume_from})
    final = subprocess.run(
        _train_cmd(args, out, run_tmp), cwd=ROOT, env=_env(run_tmp), capture_output=True, text=True
    )
    if final.returncode:
        raise SystemExit(f"the final resume failed: {final.stderr[-2000:]}")
    runs = _runs(client)
    run_ids |= {r.info.run_id for r in runs}
    run = runs[0]  # the newest (the only one when every attempt continued one run)
    for k in kills:
        k["steps_lost"] = k["steps_done"] - k["resume_from"]
    from workbench.preflight import compose

    data = compose("moe_debug", [f"data.cache_dir={tmp / 'data'}"]).data
    tokens_per_step = data.batch_size * data.seq_len
    lost = [k["steps_lost"] for k in kills]
    val, ref_val = run.data.metrics["val/loss"], ref_run.data.metrics["val/loss"]
    replayed = [
        key
        for key in ("train/loss", "val/loss")
        if len({m.step for m in client.get_metric_history(run.info.run_id, key)})
        != len(client.get_metric_history(run.info.run_id, key))
    ]
    return {
        "kills": len(kills),
        "steps": args.steps,
        "checkpoint_every_n_steps": args.ckpt_every,
        "per_kill": kills,
        "steps_lost_max": max(lost),
        "steps_lost_total": sum(lost),
        "steps_lost_billed": int(
            run.data.metrics.get("cost/lost_tokens", 0) // tokens_per_step
        ),  # by the run
        "lost_beyond_interval": sum(x > args.ckpt_every for x in lost),
        "run_ids": len(run_ids),
        "final_status": run.info.status,
        "val_loss": val,
        "val_loss_uninterrupted": ref_val,
        "val_loss_equal": val == ref_val,
        "metrics_logged_twice": replayed,
        "baseline": "the same train.py command, uninterrupted, in its own store and output_dir",
        "uninterrupted_wall_s": round(ref_wall, 1),
    }


# -- 2. worker kills and Ctrl-C in a two-worker study --------------------------------------------------------


def _study(journal: Path, name: str):
    import optuna

    from workbench.sweeps.storage import open_storage

    if not journal.exists():
        return None
    storage = open_storage(f"journal:{journal}")
    if name not in optuna.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def _running(journal: Path, name: str) -> list:
    from optuna.trial import TrialState

    from workbench.sweeps import trial as T

    study = _study(journal, name)
    if study is None:
        return []
    return [
        t
        for t in study.get_trials(states=(TrialState.RUNNING,))
        if T.WORKER in t.user_attrs and T.HEARTBEAT in t.system_attrs
    ]


def _training(tmp: Path) -> set[int]:
    """Trial numbers whose training run is open in MLflow (read only once the workers have made the store)."""
    if not (tmp / "mlflow.db").exists():
        return set()
    client = _client(tmp)
    exp = client.get_experiment_by_name("workbench")
    if exp is None:
        return set()
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    return {int(r.data.tags["optuna.trial_number"]) for r in runs if "optuna.trial_number" in r.data.tags}


def sweep_part(args, tmp: Path) -> dict:
    from optuna.trial import TrialState

    from workbench.sweeps import trial as T
    from workbench.sweeps.spec import grid_key
    from workbench.sweeps.storage import INTERRUPTED, PARENT

    rng = random.Random(args.seed)
    journal = tmp / "journal.log"
    spec = {
        "experiment": "moe_debug",
        "overrides": [
            f"budget.steps={args.trial_steps}",
            "trainer.val_every_n_steps=20",
            f"data.cache_dir={tmp / 'data'}",
        ],
        "params": {"trainer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "sampler": {"type": "random", "seed": args.seed},
        "pruner": {"type": "none"},
        "n_trials": args.trials,
        "heartbeat_s": 1,
        "grace_s": 10,
        "max_retry": args.worker_kills,  # every killed configuration is retried, however often it is hit
        "storage": f"journal:{journal}",
    }
    path = tmp / "faults.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [sys.executable, "sweep.py", str(path), "--workers", "2", "--no-progress"]

    def launch():
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_env(tmp),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: SIGINT to it is a terminal's Ctrl-C
        )

    events = ["kill"] * args.worker_kills + ["ctrl-c"] * args.ctrl_c
    rng.shuffle(events)
    launcher, log, done = launch(), [], []
    launches = 1
    for kind in events:
        hit = None
        while launcher.poll() is None and hit is None:
            time.sleep(0.2)
            hit_before = {e.get("trial") for e in done}
            training = _training(tmp)  # faults land in training, where there is an MLflow run to close
            running = [
                t for t in _running(journal, "faults") if t.number not in hit_before and t.number in training
            ]
            if running:
                hit = rng.choice(running)
        if hit is None:
            break  # the study finished before every fault was delivered (reported as faults_delivered)
        time.sleep(rng.uniform(0.0, 2.0))  # a random point of that trial's training
        if kind == "kill":
            pid = int(hit.user_attrs[T.WORKER].split(":")[1])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            done.append({"kind": kind, "trial": hit.number})
            end = time.time() + 60  # the launcher retires it at once (or a worker after grace_s)
            while time.time() < end and any(t.number == hit.number for t in _running(journal, "faults")):
                time.sleep(0.2)
        else:
            interrupted = [t.number for t in _running(journal, "faults")]
            os.killpg(launcher.pid, signal.SIGINT)
            sent = time.time()
            out, _ = launcher.communicate(timeout=180)
            log.append(out)
            done.append(
                {
                    "kind": kind,
                    "trials_running": interrupted,
                    "exit_status": launcher.returncode,
                    "stopped_in_s": round(time.time() - sent, 1),
                }
            )
            launcher, launches = launch(), launches + 1
    out, _ = launcher.communicate(timeout=1800)
    log.append(out)
    final_status = launcher.returncode

    study = _study(journal, "faults")
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    retired = [
        t
        for t in trials
        if t.state == TrialState.FAIL and (t.user_attrs.get(T.STALE) or t.user_attrs.get(INTERRUPTED))
    ]
    other_failures = [t for t in trials if t.state == TrialState.FAIL and t not in retired]
    completed_keys = [grid_key(t.params) for t in complete]
    lost = [t.number for t in retired if grid_key(t.params) not in set(completed_keys)]
    client = _client(tmp)
    parent = study.user_attrs.get(PARENT)
    kids = client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    statuses: dict[str, int] = {}
    for r in kids:
        statuses[r.info.status] = statuses.get(r.info.status, 0) + 1
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in kids}
    wrong_status = [  # an interrupted trial's run is KILLED, a dead worker's FAILED, each with its reason
        t.number
        for t in retired
        if t.number in by_number
        and (
            by_number[t.number].info.status != ("KILLED" if t.user_attrs.get(INTERRUPTED) else "FAILED")
            or not by_number[t.number].data.tags.get("workbench.failure_reason")
        )
    ]
    return {
        "trials_requested": args.trials,
        "trials_complete": len(complete),
        "duplicated": len(completed_keys) - len(set(completed_keys)),
        "lost": len(lost),
        "retired_stale": sum(bool(t.user_attrs.get(T.STALE)) for t in retired),
        "retired_interrupted": sum(bool(t.user_attrs.get(INTERRUPTED)) for t in retired),
        "other_failures": [t.user_attrs.get(T.REASON) for t in other_failures],
        "left_running": sum(t.state == TrialState.RUNNING for t in trials),
        "faults_requested": len(events),
        "faults_delivered": len(done),
        "faults": done,
        "launches": launches,
        "final_exit_status": final_status,
        "ctrl_c_exit_statuses": [e["exit_status"] for e in done if e["kind"] == "ctrl-c"],
        "ctrl_c_stop_s_max": max((e["stopped_in_s"] for e in done if e["kind"] == "ctrl-c"), default=None),
        "mlflow_child_runs": statuses,
        "mlflow_children_left_running": statuses.get("RUNNING", 0),
        "retired_with_a_run": sum(t.number in by_number for t in retired),
        "retired_runs_wrong_status": wrong_status,
    }


# -- 3. bad overrides and bad documents ----------------------------------------------------------------------

# Each set is one command line's overrides; `key` is what the one-line message must name.
BAD_OVERRIDES: list[tuple[list[str], str]] = [
    (["+experiment=no_such_preset"], "experiment"),
    (["model=no_such_model"], "model"),
    (["moe=no_such_moe"], "moe"),
    (["precision=fp8-magic"], "precision"),
    (["data=nowhere"], "data"),
    (["cost=tpu9"], "cost"),
    (["trainer=turbo"], "trainer"),
    (["moe.num_expert=4"], "moe.num_expert"),
    (["model.d_modle=64"], "model.d_modle"),
    (["trainer.learning_rate=0.1"], "trainer.learning_rate"),
    (["+experiment=moe_debug", "moe.top_k=9"], "moe.top_k"),
    (["+experiment=moe_debug", "moe.top_k=0"], "moe.top_k"),
    (["+experiment=moe_debug", "moe.num_experts=0"], "moe.num_experts"),
    (["+experiment=moe_debug", "moe.num_experts=-2"], "moe.num_experts"),
    (["+experiment=moe_debug", "moe.capacity_factor=-1"], "moe.capacity_factor"),
    (["+experiment=moe_debug", "moe.capacity_factor=abc"], "moe.capacity_factor"),
    (["+experiment=moe_debug", "moe.drop_policy=random"], "moe.drop_policy"),
    (["+experiment=moe_debug", "moe.router.type=magic"], "moe.router.type"),
    (["+experiment=moe_debug", "moe.router.score=tanh"], "moe.router.score"),
    (["+experiment=moe_debug", "moe.router.num_groups=3"], "moe.router.num_groups"),
    (["+experiment=moe_debug", "moe.router.jitter_eps=-0.1"], "moe.router.jitter_eps"),
    (["+experiment=moe_debug", "moe.aux_loss_weight=-1"], "moe.aux_loss_weight"),
    (["+experiment=moe_debug", "moe.z_loss_weight=nan"], "moe.z_loss_weight"),
    (["+experiment=moe_debug", "moe.segmentation=0"], "moe.segmentation"),
    (["+experiment=moe_debug", "moe.experts_backend=cuda_magic"], "moe.experts_backend"),
    (["+experiment=moe_debug", "model.n_heads=3"], "model.n_heads"),
    (["+experiment=moe_debug", "model.d_model=0"], "model.d_model"),
    (["+experiment=moe_debug", "model.n_layers=-1"], "model.n_layers"),
    (["+experiment=moe_debug", "model.dropout=1.5"], "model.dropout"),
    (["+experiment=moe_debug", "model.ffn=sparse"], "model.ffn"),
    (["+experiment=moe_debug", "model.moe_every=0"], "model.moe_every"),
    (["+experiment=moe_debug", "model.vocab_size=3"], "model.vocab_size"),
    (["+experiment=moe_debug", "precision.policy=fp64"], "precision.policy"),
    (["+experiment=moe_debug", "precision.router_logits_dtype=int8"], "precision.router_logits_dtype"),
    (["+experiment=moe_debug", "data.source=ftp"], "data.source"),
    (["+experiment=moe_debug", "data.seq_len=0"], "data.seq_len"),
    (["+experiment=moe_debug", "data.batch_size=-8"], "data.batch_size"),
    (["+experiment=moe_debug", "data.val_fraction=1.5"], "data.val_fraction"),
    (["+experiment=moe_debug", "data.tokenizer=sentencepiece9"], "data.tokenizer"),
    (["+experiment=moe_debug", "data.embedded_kinds=[poetry]"], "data.embedded_kinds"),
    (["+experiment=moe_debug", "data.source=files", "data.paths=[/no/such/file.jsonl]"], "data.paths"),
    (["+experiment=moe_debug", "data.source=hub"], "data.hub_id"),
    (["+experiment=moe_debug", "data.num_workers=-1"], "data.num_workers"),
    (["+experiment=moe_debug", "data.max_docs=0"], "data.max_docs"),
    (["+experiment=moe_debug", "trainer.lr=-0.1"], "trainer.lr"),
    (["+experiment=moe_debug", "trainer.lr=fast"], "trainer.lr"),
    (["+experiment=moe_debug", "trainer.beta1=1.5"], "trainer.beta1"),
    (["+experiment=moe_debug", "trainer.grad_clip=-1"], "trainer.grad_clip"),
    (["+experiment=moe_debug", "trainer.val_every_n_steps=0"], "trainer.val_every_n_steps"),
    (["+experiment=moe_debug", "trainer.devices=64"], "trainer.devices"),
    (["+experiment=moe_debug", "trainer.accelerator=tpu"], "trainer.accelerator"),
    (["+experiment=moe_debug", "trainer.warmup_steps=-5"], "trainer.warmup_steps"),
    (["+experiment=moe_debug", "budget.steps=0"], "budget.steps"),
    (["+experiment=moe_debug", "budget.tokens=-1"], "budget.tokens"),
    (["+experiment=moe_debug", "budget.usd=0"], "budget.usd"),
    (["+experiment=moe_debug", "cost.usd_per_hour=-3"], "cost.usd_per_hour"),
    (["+experiment=moe_debug", "name=../../../../elsewhere/x"], "name"),
    (["+experiment=moe_debug", "output_dir=../../outside"], "output_dir"),
    (["+experiment=moe_debug", "seed=minus_one"], "seed"),
    (["+experiment=moe_debug", "moe.top_k=[1,2"], "moe.top_k"),
]

GOOD = "a good document with enough text to be kept by the corpus builder.\n"


def _bad_documents(tmp: Path) -> list[tuple[str, str, bytes]]:
    """(case, file name, content): each file holds one bad document, beside one good file."""
    good_row = json.dumps({"text": GOOD})
    return [
        ("undecodable txt", "latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1")),
        ("empty txt", "empty.txt", b""),
        ("whitespace-only txt", "blank.txt", b" \n\t \n"),
        ("binary txt", "random.txt", random.Random(0).randbytes(4096)),
        ("null text", "null.jsonl", f'{good_row}\n{{"text": null}}\n'.encode()),
        ("empty text", "emptyrow.jsonl", f'{good_row}\n{{"text": ""}}\n'.encode()),
        ("missing text field", "missing.jsonl", f'{good_row}\n{{"body": "x"}}\n'.encode()),
        ("number as text", "number.jsonl", f'{good_row}\n{{"text": 12}}\n'.encode()),
        ("malformed json line", "broken.jsonl", f'{good_row}\n{{"text": "unterminated\n'.encode()),
        ("truncated parquet", "cut.parquet", b"PAR1\x15\x04\x15\x10"),
        ("json scalar file", "scalar.json", b'"just a string"'),
        ("list as text", "list.jsonl", f'{good_row}\n{{"text": ["a", "b"]}}\n'.encode()),
    ]


def inputs_part(args, tmp: Path) -> dict:
    from workbench.config import ConfigError
    from workbench.config.errors import explain
    from workbench.data.corpus import build_corpus
    from workbench.preflight import check_command_line, compose

    os.environ["WORKBENCH_ROOT"] = str(tmp)
    unclean = []
    for overrides, key in BAD_OVERRIDES:
        try:
            check_command_line(overrides)
            unclean.append({"overrides": overrides, "why": "accepted"})
        except ConfigError as exc:
            msg = str(exc)
            if "\n" in msg or key not in msg:
                unclean.append(
                    {"overrides": overrides, "why": f"message does not name {key} in one line: {msg}"}
                )
        except Exception as exc:  # noqa: BLE001 - counted: anything but a ConfigError is not clean
            unclean.append({"overrides": overrides, "why": f"{type(exc).__name__}: {str(exc)[:300]}"})

    docs_unclean, outcomes = [], {}
    for i, (case, name, content) in enumerate(_bad_documents(tmp)):
        folder = tmp / f"docs{i}"
        folder.mkdir()
        (folder / "good.txt").write_text(GOOD * 3)
        (folder / name).write_bytes(content)
        cfg = compose(
            "moe_debug",
            [
                "data.source=files",
                f"data.paths=[{folder / 'good.txt'},{folder / name}]",
                f"data.cache_dir={tmp / 'cache'}",
            ],
        )
        good_docs = 1 + (1 if name.endswith(".jsonl") else 0)
        try:
            corpus = build_corpus(cfg.data, tmp / "cache" / f"c{i}", require_splits=False)
            skipped = corpus.stats["docs_skipped_reasons"]
            kept = len(corpus.dataset)
            if kept == good_docs and sum(skipped.values()) == 1:
                outcomes[case] = f"skipped: {next(iter(skipped))}"
            else:
                outcomes[case] = f"kept {kept} of {good_docs} good documents, skipped {skipped}"
                docs_unclean.append(case)
        except ConfigError as exc:
            msg = str(exc)
            if "\n" not in msg and name in msg:
                outcomes[case] = f"refused: {msg}"
            else:
                outcomes[case] = f"refused without naming {name} in one line: {msg}"
                docs_unclean.append(case)
        except Exception as exc:  # noqa: BLE001
            known = explain(exc)
            outcomes[case] = f"{type(exc).__name__}: {known[0] if known else str(exc)[:300]}"
            docs_unclean.append(case)
    n_docs = len(outcomes)
    return {
        "bad_overrides_tried": len(BAD_OVERRIDES),
        "bad_overrides_rejected_cleanly": len(BAD_OVERRIDES) - len(unclean),
        "bad_overrides_unclean": unclean,
        "bad_documents_tried": n_docs,
        "bad_documents_rejected_cleanly": n_docs - len(docs_unclean),
        "bad_documents": outcomes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--parts", nargs="+", default=["train", "sweep", "inputs"], choices=["train", "sweep", "inputs"]
    )
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--ckpt-every", type=int, default=10)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--trial-steps", type=int, default=80)
    ap.add_argument("--worker-kills", type=int, default=5)
    ap.add_argument("--ctrl-c", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    record: dict = {"benchmark": "faults", "seed": args.seed}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for part, fn in (("train", train_part), ("sweep", sweep_part), ("inputs", inputs_part)):
            if part in args.parts:
                (tmp / part).mkdir()
                record[part] = fn(args, tmp / part)
    checks = []
    if "train" in record:
        t = record["train"]
        checks.append(
            t["lost_beyond_interval"] == 0
            and t["run_ids"] == 1
            and t["val_loss_equal"]
            and not t["metrics_logged_twice"]
        )
    if "sweep" in record:
        s = record["sweep"]
        checks.append(
            s["trials_complete"] == s["trials_requested"]
            and s["duplicated"] == 0
            and s["lost"] == 0
            and s["left_running"] == 0
            and s["mlflow_children_left_running"] == 0
            and not s["retired_runs_wrong_status"]
            and s["faults_delivered"] == s["faults_requested"]
        )
    if "inputs" in record:
        i = record["inputs"]
        checks.append(
            i["bad_overrides_rejected_cleanly"] == i["bad_overrides_tried"]
            and i["bad_documents_rejected_cleanly"] == i["bad_documents_tried"]
        )
    record["target"] = (
        "train: steps lost <= checkpoint interval, one run id, equal final val loss; sweep: complete == requested, "
        "0 duplicated, 0 lost, nothing left RUNNING; inputs: every bad input rejected cleanly"
    )
    record["meets_target"] = all(checks)
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    record["host"] = platform.node()
    print(json.dumps(record))


if __name__ == "__main__":
    main()
