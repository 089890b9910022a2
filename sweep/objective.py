"""One trial: sample, train with per-epoch pruning and tracking, then tell Optuna.

The order of writes keeps Optuna and MLflow in agreement even if the process dies at
any point: the MLflow run is ended before the trial is told, so a trial that is still
RUNNING in Optuna is always safe to fail, retry, and have its run marked KILLED.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import TrialState

from core.data import Dataset
from core.model import evaluate
from core.train import CURVES, EpochRecord, NonFiniteError, TrainResult, train
from sweep.spec import PER_EPOCH_METRICS, StudySpec, all_params, suggest, trial_config
from sweep.tracking import Tracker

WORKER_ATTR = "mlp_sweep.worker"  # {"host", "pid", "started"}: who runs the trial
RUN_ATTR = "mlp_sweep.run_id"  # the trial's MLflow run
RESULT_ATTR = "mlp_sweep.result"  # {"metrics", "history", "reason", "pruned_at_epoch"}


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (Linux), so a reused pid is not taken for ours."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_identity() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _process_start(pid)}


def is_alive_here(identity: dict) -> bool | None:
    """True/False for a worker on this machine; None when it ran elsewhere (cannot tell)."""
    if identity.get("host") != socket.gethostname():
        return None
    pid = identity.get("pid")
    if not isinstance(pid, int):
        return None
    started = _process_start(pid)
    return started is not None and started == identity.get("started", started)


def final_metrics(result: TrainResult, test_accuracy: float | None, seconds: float) -> dict[str, float]:
    """What a finished trial is judged on: last-epoch curves, best validation, gap, time."""
    last = result.history[-1]
    metrics = {k: getattr(last, k) for k in ("training_cost", "training_accuracy", "validation_cost",
                                             "validation_accuracy")}
    val = [r.validation_accuracy for r in result.history if r.validation_accuracy is not None]
    metrics["best_validation_accuracy"] = max(val) if val else None
    if last.training_accuracy is not None and last.validation_accuracy is not None:
        metrics["gap"] = last.training_accuracy - last.validation_accuracy
    metrics["test_accuracy"] = test_accuracy
    metrics["training_seconds"] = seconds
    metrics["epochs_run"] = len(result.history)
    return {k: float(v) for k, v in metrics.items() if v is not None}


@dataclass
class TrialRunner:
    """Runs asked trials of one study in this process, on data loaded once."""

    study: optuna.Study
    spec: StudySpec
    data: Dataset
    tracker: Tracker | None
    parent_run_id: str | None
    stop_requested: Callable[[], bool] = lambda: False

    def run(self, trial: optuna.Trial) -> TrialState:
        """Train the trial, track it, tell Optuna; return its final state.

        Divergence prunes the trial, any other exception fails it (the study goes on);
        KeyboardInterrupt/SystemExit fail it and propagate.
        """
        spec = self.spec
        params = suggest(spec, trial)
        network, config = trial_config(spec, params)
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        run = None
        if self.tracker is not None:
            run = self.tracker.start_trial(self.parent_run_id, trial.number, all_params(spec, params))
            trial.set_user_attr(RUN_ATTR, run.run_id)
        metric = spec.objectives[0].metric
        report = not spec.is_multi_objective and metric in PER_EPOCH_METRICS  # Optuna's intermediate values
        prune = report and spec.pruner.name != "none"
        history: list[EpochRecord] = []
        best = -math.inf

        def on_epoch(record: EpochRecord) -> bool:
            nonlocal best
            if self.stop_requested():  # Ctrl-C or SIGTERM, acted on at a safe point
                raise KeyboardInterrupt
            history.append(record)
            if run is not None:
                run.log_epoch(record)
            if not report:
                return False
            if metric == "best_validation_accuracy":
                best = max(best, record.validation_accuracy)
                value = best
            else:
                value = getattr(record, metric)
            trial.report(value, record.epoch)
            return prune and trial.should_prune()

        start = time.perf_counter()
        result_attr: dict = {}
        try:
            result = train(network, config, self.data.train, self.data.validation, callback=on_epoch)
        except NonFiniteError as exc:
            state, result, result_attr["reason"] = TrialState.PRUNED, None, str(exc)
            result_attr["pruned_at_epoch"] = exc.epoch
        except Exception as exc:  # a failed trial becomes FAIL; the study goes on
            state, result, result_attr["reason"] = TrialState.FAIL, None, f"{type(exc).__name__}: {exc}"
        except BaseException:  # Ctrl-C, SIGTERM: fail it, so that a later run retries it
            self._finish(trial, run, TrialState.FAIL, history, {"reason": "interrupted"}, None, None)
            raise
        else:
            state = TrialState.PRUNED if result.stopped_early else TrialState.COMPLETE
            if result.stopped_early:
                result_attr["pruned_at_epoch"] = result.history[-1].epoch
                result_attr["reason"] = f"pruned at epoch {result.history[-1].epoch}"
        metrics = None
        if result is not None:
            test = self.data.test
            test_accuracy = evaluate(network, result.params, test.X, test.y)[1] if state == TrialState.COMPLETE else None
            metrics = final_metrics(result, test_accuracy, time.perf_counter() - start)
            result_attr["metrics"] = metrics
        values = [metrics[o.metric] for o in spec.objectives] if state == TrialState.COMPLETE else None
        self._finish(trial, run, state, history, result_attr, metrics, values)
        return state

    def _finish(self, trial: optuna.Trial, run, state: TrialState, history: list[EpochRecord],
                result_attr: dict, metrics: dict | None, values: list[float] | None) -> None:
        """Record the result in the trial, end the MLflow run, then tell Optuna (in that order)."""
        result_attr["history"] = {k: [getattr(r, k) for r in history] for k in
                                  ("epoch", "training_cost", "training_accuracy", "validation_cost",
                                   "validation_accuracy", "seconds")}
        trial.set_user_attr(RESULT_ATTR, result_attr)
        if run is not None:
            tags = {k: str(result_attr[k]) for k in ("reason", "pruned_at_epoch") if k in result_attr}
            summary = {k: v for k, v in (metrics or {}).items() if k not in CURVES}  # curves are per epoch
            run.finish(state.name, summary, {f"mlp_sweep.{k}": v for k, v in tags.items()})
        self.study.tell(trial, values, state=state if values is None else None)
