"""Where a study lives and what its storage says: storage URLs (SQLite, Optuna's journal file, PostgreSQL),
and the finished trials every worker counts against the trial budget."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from workbench.config import ConfigError
from workbench.paths import project_root, resolve_path
from workbench.sweeps import trial as T
from workbench.sweeps.spec import SweepSpec

PARENT = "workbench.mlflow_parent_run_id"  # study attribute: the MLflow parent run
SPEC_ERROR = "workbench.spec_error"  # study attribute: a mistake in the spec every trial would repeat
INTERRUPTED = "workbench.interrupted"  # trial attribute: stopped by Ctrl-C / SIGTERM, run again
SPEC_FAILED = "workbench.spec_failed"  # trial attribute: ended by a spec mistake, not by its configuration


def default_storages() -> tuple[str, str]:
    root = project_root()
    return f"sqlite:///{root / 'optuna.db'}", f"journal:{root / 'optuna-journal.log'}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """`journal:<file>` is Optuna's journal file storage (safe for several processes); anything else is an
    SQLAlchemy URL (sqlite:///..., postgresql://...)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = resolve_path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # a longer lock timeout: the launcher polls while the worker writes
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def _has_study(url: str, name: str) -> bool:
    if url.startswith("journal:") and not resolve_path(url[len("journal:") :]).exists():
        return False
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return False
    try:
        return name in optuna.get_all_study_names(open_storage(url))
    except Exception:
        return False


def resolve_storage(spec: SweepSpec, workers: int) -> str:
    """The spec's storage, else SQLite in the project for one worker and a journal file for several. A study
    that already lives in the journal file stays there, so the same command resumes it either way."""
    if spec.storage:
        if workers > 1 and spec.storage.startswith("sqlite"):
            raise ConfigError(
                f"storage={spec.storage}: SQLite is not safe for --workers {workers}; "
                "use journal:<file> or a postgresql:// URL"
            )
        return spec.storage
    sqlite, journal = default_storages()
    if workers > 1 or _has_study(journal, spec.study_name):
        if workers > 1 and _has_study(sqlite, spec.study_name) and not _has_study(journal, spec.study_name):
            optuna.copy_study(
                from_study_name=spec.study_name, from_storage=sqlite, to_storage=open_storage(journal)
            )
            print(f"note: study '{spec.study_name}' copied from {sqlite} to {journal} for several workers")
        return journal
    return sqlite


def counts(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """Finished trials as the trial budget counts them: a failure of the configuration itself counts, a trial
    whose worker died (retried), that was interrupted (re-run) or that a spec mistake ended does not."""
    out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0, "lost": 0}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            out["complete"] += 1
        elif t.state == TrialState.PRUNED:
            out["pruned"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
        elif t.state == TrialState.WAITING:
            out["waiting"] += 1
        elif t.state == TrialState.FAIL:
            counted = (
                T.REASON in t.user_attrs
                and not t.user_attrs.get(T.STALE)
                and not t.user_attrs.get(INTERRUPTED)
                and not t.user_attrs.get(SPEC_FAILED)
            )
            out["failed" if counted else "lost"] += 1
    out["done"] = out["complete"] + out["pruned"] + out["failed"]
    return out
