"""What a study prints while it runs: one progress bar for the whole study and a line per finished trial."""

from __future__ import annotations

import sys

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from workbench.sweeps import trial as T
from workbench.sweeps.spec import SweepSpec
from workbench.sweeps.storage import counts


def console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=200)


def trial_line(spec: SweepSpec, t: optuna.trial.FrozenTrial) -> str:
    """`trial 3 COMPLETE val/bpb=2.0991 cost/usd=0.0021 | capacity=1.25 (41 s)`"""
    state = {TrialState.FAIL: "FAILED"}.get(t.state, t.state.name)
    parts = [f"trial {t.number:>3} {state:<8}"]
    if t.state == TrialState.COMPLETE:
        parts += [f"{m}={t.user_attrs.get(T.METRIC + m, float('nan')):.4g}" for m in spec.tracked_metrics()]
    elif t.state == TrialState.PRUNED:
        last = max(t.intermediate_values) if t.intermediate_values else None
        if last is not None:
            parts.append(f"at step {last} ({spec.monitor}={t.intermediate_values[last]:.4g})")
    elif t.state == TrialState.FAIL:
        parts.append(str(t.user_attrs.get(T.REASON, "no reason recorded"))[:160])
    if T.DUPLICATE in t.user_attrs:
        parts.append(f"(same configuration as trial {t.user_attrs[T.DUPLICATE]}, not re-trained)")
    params = " ".join(f"{k}={v}" for k, v in t.params.items())
    seconds = t.duration.total_seconds() if t.duration else 0.0
    return " ".join(parts) + f" | {params} ({seconds:.0f} s)"


def print_trial(spec: SweepSpec, prefix: str = ""):
    def on_trial(t: optuna.trial.FrozenTrial) -> None:
        print(prefix + trial_line(spec, t), flush=True)

    return on_trial


class StudyProgress:
    """A rich progress bar over the study's trial budget, fed from the storage (so it follows every worker)."""

    def __init__(
        self,
        spec: SweepSpec,
        study: optuna.Study,
        budget: int | None,
        enabled: bool = True,
        lines: bool = True,
    ):
        self.spec, self.study, self.budget, self.enabled, self.lines = spec, study, budget, enabled, lines
        self.console = console()
        self.seen: set[int] = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.task = None

    def __enter__(self) -> StudyProgress:
        done = counts(self.study.get_trials(deepcopy=False))["done"]
        self.progress.start()
        self.task = self.progress.add_task(
            f"study {self.spec.study_name}", total=self.budget, completed=done, best=""
        )
        return self

    def __exit__(self, *exc) -> None:
        self.poll()
        self.progress.stop()

    def on_trial(self, _t: optuna.trial.FrozenTrial) -> None:
        self.poll()

    def poll(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                if self.lines:
                    self.console.print(trial_line(self.spec, t), highlight=False, soft_wrap=True)
        if self.task is not None:
            self.progress.update(self.task, completed=counts(trials)["done"], best=self._best(trials))

    def _best(self, trials) -> str:
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if not done:
            return ""
        if self.spec.multi_objective:
            return f"Pareto front: {len(self.study.best_trials)} trials"
        o = self.spec.objectives[0]
        best = (min if o.direction == "minimize" else max)(done, key=lambda t: t.values[0])
        return f"best {o.metric}={best.values[0]:.4g} (trial {best.number})"
