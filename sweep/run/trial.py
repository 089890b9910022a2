"""Claimed trials: train (packed when they share a structure), prune, track, tell Optuna.

The order of writes keeps Optuna and MLflow in agreement even if a process dies at any
point. The trial's record (epochs, metrics, reason) is stored in Optuna and its run's end
is sent to MLflow before the trial is told, so a trial that is still RUNNING in Optuna is
always safe to fail, retry, and have its run marked KILLED. With its own Tracker (one
worker, ``sweep worker``) the run has ended when the trial is told; a local worker of
``sweep run`` hands the end to the launcher (sweep.tracking.relay), which logs it even if the worker
dies meanwhile, and runs a dead launcher left open are ended from the stored records when
the study is next opened (``reconcile``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna import Study
from optuna.trial import TrialState

from core.config import TrainConfig
from core.data import Dataset
from core.history import CURVES, EpochRecord, NotLearningError, TrainResult
from core.model import NetworkSpec, Params, save_params
from core.packed import PACKED_FIELDS, packs, train_packed
from core.train import evaluate_on, train
from sweep.schema import (
    BEST_VALIDATION_ACCURACY,
    EPOCHS_RUN,
    GAP,
    HISTORY_KEYS,
    PER_EPOCH_METRICS,
    REASON_ATTR,
    REASON_TAG,
    RESULT_ATTR,
    RETRY_OF_ATTR,
    RUN_ATTR,
    TEST_ACCURACY,
    TIMING_TAG,
    TRAINING_SECONDS,
    TrialRecord,
)
from sweep.spec.study import StudySpec, all_params, trial_config, used
from sweep.tracking.relay import RelayedRun, RelayedTracker
from sweep.tracking.tracker import Tracker, TrialRun
from sweep.tracking.views import timing_note

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def final_metrics(result: TrainResult, test_accuracy: float | None, seconds: float) -> dict[str, float]:
    """What a finished trial is judged on: the curves of its result's epoch (the last one, or with
    early stopping the best one, whose parameters it keeps), best validation, gap, time."""
    last = result.history[-1 if result.best_epoch is None else result.best_epoch - 1]
    metrics = {k: getattr(last, k) for k in CURVES}
    val = [r.validation_accuracy for r in result.history if r.validation_accuracy is not None]
    metrics[BEST_VALIDATION_ACCURACY] = max(val) if val else None
    if last.training_accuracy is not None and last.validation_accuracy is not None:
        metrics[GAP] = last.training_accuracy - last.validation_accuracy
    metrics[TEST_ACCURACY] = test_accuracy
    metrics[TRAINING_SECONDS] = seconds
    metrics[EPOCHS_RUN] = len(result.history)
    return {k: float(v) for k, v in metrics.items() if v is not None}


@dataclass(frozen=True)
class Claimed:
    """A trial a worker claimed, with the parameters sampled for it under the study's lock."""

    trial: optuna.Trial
    params: dict  # {name: value} for all of [space] (sweep.spec.study.suggest)


@dataclass
class _Trial:
    """A claimed trial on its way through training: its settings, run and history so far."""

    trial: optuna.Trial
    network: NetworkSpec
    config: TrainConfig
    run: TrialRun | RelayedRun | None
    history: list[EpochRecord] = field(default_factory=list)
    best: float = -math.inf
    interrupted: bool = False  # stopped because a stop was requested, not by the pruner
    timed_out: bool = False  # ended by the run's timeout ([budget] at_timeout = "stop"), kept as it was then
    pack: int = 1  # trials trained together with it (core.packed), itself included
    named: bool = False  # whether the trial stores its run's id (RUN_ATTR) yet

    def name_run(self) -> None:
        """Store the run's id in the trial, once. A run another process creates (a RelayedRun)
        is named when the first trial of its pack ends its first epoch: by then its id has long
        arrived, so no trial waits for it (a worker killed before then leaves runs that the
        launcher ends KILLED but that no trial names)."""
        if self.run is not None and not self.named:
            self.trial.set_user_attr(RUN_ATTR, self.run.run_id)
            self.named = True

    @property
    def pack_key(self) -> tuple:
        """Trials with equal keys train together in one vectorised pass (core.packed); a trial
        with an option packs do not train (momentum, dropout, ...) has a key of its own."""
        if not packs(self.config):
            return ("alone", self.trial.number)
        return (self.network, *(getattr(self.config, f) for f in PACKED_FIELDS))


@dataclass
class TrialRunner:
    """Runs claimed trials of one study in this process, on data loaded once.

    Trials that share their structure (network, batch size, epochs, monitoring) are
    trained together with ``core.packed.train_packed``; each is still tracked, pruned and
    told on its own, exactly as if it had been trained alone.
    """

    study: optuna.Study
    spec: StudySpec
    data: Dataset
    tracker: Tracker | RelayedTracker | None
    parent_run_id: str | None
    stop_requested: Callable[[], bool] = lambda: False
    timed_out: Callable[[], bool] = lambda: False  # whether running trials end at this epoch, complete

    def run(self, claimed: list[Claimed]) -> dict[int, TrialState]:
        """Train the claimed trials, track them, tell Optuna; return the final states of those told, by number.

        A trial that does not learn (diverges, or stays at chance: core's LearningCheck)
        is pruned with the reason, any other exception fails it (the study goes on). Once a
        stop is requested, trials stop at their next epoch's end: each not done is recorded
        as interrupted (its epochs so far, its run ended) and left untold, for the caller.
        Once ``timed_out()``, trials end at their next epoch's end and complete as they are then.
        """
        groups: dict[tuple, list[_Trial]] = {}
        for t in map(self._prepare, claimed):
            groups.setdefault(t.pack_key, []).append(t)
        for group in groups.values():
            for t in group:
                t.pack = len(group)
        states = {}
        for group in groups.values():
            outcomes = [None] * len(group) if self.stop_requested() else self._train(group)
            for t, outcome in zip(group, outcomes):
                if outcome is None or t.interrupted:
                    self._record(t, TrialState.FAIL, TrialRecord(_history(t.history), reason="interrupted"))
                else:
                    states[t.trial.number] = self._conclude(t, outcome)
        return states

    def _prepare(self, claim: Claimed) -> _Trial:
        """The trial's settings from its claimed parameters, and its run started."""
        trial, params = claim.trial, claim.params
        network, config = trial_config(self.spec, params)
        run = None
        if self.tracker is not None:
            run = self.tracker.start_trial(
                self.parent_run_id,
                trial.number,
                all_params(self.spec, params),
                searched=used(self.spec, params),
                data=self.data,
            )
        t = _Trial(trial, network, config, run)
        if not isinstance(run, RelayedRun):
            t.name_run()
        return t

    def _train(self, group: list[_Trial]) -> list[TrainResult | Exception]:
        """Outcomes in order: a result, or the exception that ended the trial."""
        data, callbacks = self.data, [self._on_epoch(t, group) for t in group]
        if len(group) > 1:
            try:
                return train_packed(
                    group[0].network, [t.config for t in group], data.train, data.validation, callbacks=callbacks
                )
            except Exception as exc:  # fails the whole pack, like one trial
                return [exc] * len(group)
        try:
            return [train(group[0].network, group[0].config, data.train, data.validation, callback=callbacks[0])]
        except Exception as exc:
            return [exc]

    def _on_epoch(self, t: _Trial, pack: list[_Trial]) -> Callable[[EpochRecord], bool]:
        """Per epoch: name the pack's runs, log to MLflow, report to Optuna, ask the pruner; True stops the trial."""
        spec = self.spec
        metric = spec.objectives[0].metric
        prune = spec.pruner.name != "none" and not spec.is_multi_objective and metric in PER_EPOCH_METRICS

        def on_epoch(record: EpochRecord) -> bool:
            if self.stop_requested():  # Ctrl-C or SIGTERM, acted on at a safe point (this epoch is not kept)
                t.interrupted = True
                return True
            t.history.append(record)
            for other in pack:
                other.name_run()
            if t.run is not None:
                t.run.log_epoch(record)
            if self.timed_out():
                t.timed_out = True
                return True
            if not prune:
                return False
            if metric == BEST_VALIDATION_ACCURACY:
                t.best = max(t.best, record.validation_accuracy)
                value = t.best
            else:
                value = getattr(record, metric)
            t.trial.report(value, record.epoch)
            return t.trial.should_prune()

        return on_epoch

    def _conclude(self, t: _Trial, outcome: TrainResult | Exception) -> TrialState:
        """Turn a training outcome into the trial's state, metrics and values."""
        reason = pruned_at = metrics = None
        if isinstance(outcome, NotLearningError):
            state, reason, pruned_at = TrialState.PRUNED, str(outcome), outcome.epoch
        elif isinstance(outcome, Exception):
            state, reason = TrialState.FAIL, f"{type(outcome).__name__}: {outcome}"
        elif outcome.stopped_early and not t.timed_out:
            state, pruned_at = TrialState.PRUNED, outcome.history[-1].epoch
            reason = f"pruned at epoch {pruned_at}"
        else:
            state = TrialState.COMPLETE
            if t.timed_out:
                reason = f"stopped at the run's timeout, after epoch {outcome.history[-1].epoch}"
        if isinstance(outcome, TrainResult):
            test = self.data.test
            test_accuracy = (
                evaluate_on(outcome.engine, t.network, outcome.params, test, want_cost=False)[1]
                if state == TrialState.COMPLETE
                else None
            )
            seconds = sum(r.seconds + r.eval_seconds for r in outcome.history)
            metrics = final_metrics(outcome, test_accuracy, seconds)
        values = [metrics[o.metric] for o in self.spec.objectives] if state == TrialState.COMPLETE else None
        if values is not None and t.run is not None and self._best_so_far(values[0]):
            t.run.log_weights(weights_bytes(t.network, outcome.params))
        self._finish(t, state, TrialRecord(_history(t.history), metrics, reason, pruned_at), values)
        return state

    def _best_so_far(self, value: float) -> bool:
        """Whether a completed trial is at least as good as every trial told so far: its weights
        are then kept. Ties count (Optuna's best trial is the first of them by number, which may
        be told later), so the study's best trial always has its weights; a multi-objective
        study has no one best and keeps none."""
        if self.spec.is_multi_objective:
            return False
        try:
            best = self.study.best_value
        except ValueError:  # no trial completed yet
            return True
        return value >= best if self.spec.objectives[0].direction == "maximize" else value <= best

    def _finish(self, t: _Trial, state: TrialState, record: TrialRecord, values: list[float] | None) -> None:
        """Record the result in the trial, end (or send the end of) the MLflow run, then tell Optuna."""
        self._record(t, state, record)
        self.study.tell(t.trial, values, state=state if values is None else None)

    def _record(self, t: _Trial, state: TrialState, record: TrialRecord) -> None:
        t.name_run()
        t.trial.set_user_attr(RESULT_ATTR, record.to_attr())
        if t.run is not None:
            finish_run(t.run, state.name, record, t.pack)


def weights_bytes(network: NetworkSpec, params: Params) -> bytes:
    """A network's .npz (core.model.save_params) as bytes: what a trial's run logs, or sends to the launcher."""
    buffer = io.BytesIO()
    save_params(buffer, network, params)
    return buffer.getvalue()


def _history(records: list[EpochRecord]) -> dict[str, list]:
    """A trial's epochs as the columns it stores (schema.HISTORY_KEYS)."""
    return {key: [getattr(record, key) for record in records] for key in HISTORY_KEYS}


def finish_run(run, state: str, record: TrialRecord, pack: int | None = None) -> None:
    """End a trial's run (a TrialRun or a RelayedRun) with its record: the final metrics (the
    curves are logged per epoch), the tags that say why it ended and, when known, what its
    seconds measure (``pack``: how many trials trained together with it, itself included)."""
    summary = {k: v for k, v in (record.metrics or {}).items() if k not in CURVES}
    tags = record.tags() if pack is None else {**record.tags(), TIMING_TAG: timing_note(pack)}
    run.finish(state, summary, tags)


def reconcile(study: Study, spec: StudySpec, tracker: Tracker, parent_run_id: str) -> list[int]:
    """End the runs a dead launcher left RUNNING for finished trials, from their stored records
    (epochs, final metrics, reason; a retried trial's run KILLED as ``OpenStudy.requeue`` ends
    it); return the trials' numbers."""
    trials = {
        t.user_attrs[RUN_ATTR]: t
        for t in study.get_trials(deepcopy=False, states=_FINISHED)
        if RUN_ATTR in t.user_attrs
    }
    retries = {
        t.user_attrs[RETRY_OF_ATTR]: t.user_attrs.get(REASON_ATTR)
        for t in study.get_trials(deepcopy=False)
        if RETRY_OF_ATTR in t.user_attrs
    }
    ended = []
    for found in tracker.trial_runs(parent_run_id):
        trial = trials.get(found.info.run_id)
        if found.info.status != "RUNNING" or trial is None:
            continue
        record = TrialRecord.of(trial)
        params = all_params(spec, trial.params) if set(spec.searched) <= trial.params.keys() else None
        run = TrialRun(tracker, found.info.run_id, params)
        history = record.history
        for values in zip(*(history.get(key, []) for key in HISTORY_KEYS)):
            run.log_epoch(EpochRecord(**dict(zip(HISTORY_KEYS, values)), eval_seconds=0.0))
        finish_run(run, trial.state.name, record)
        if trial.number in retries:
            tracker.end_run(
                found.info.run_id, "KILLED", {REASON_TAG: retries[trial.number]} if retries[trial.number] else None
            )
        ended.append(trial.number)
    return ended
