"""Tracking through one process: local workers hand their runs to the launcher, which logs them.

MLflow costs a second or more to import and tens of milliseconds of CPU per run; each local
worker would pay both. Instead a worker gets one end of a pipe (``RelayedTracker``: the
Tracker calls a TrialRunner makes, sent as messages) and the launcher logs every message,
in the order its worker sent it, through its one Tracker in a thread (``Relay``). A run is
created when its trial starts (the worker waits for the run's id, which the trial stores);
its epochs and its end follow without waiting, so a trial may be told to Optuna before its
run has ended in MLflow.

A worker that dies loses nothing it sent: the launcher still reads and logs what is in the
pipe. A launcher that dies may leave runs of finished trials RUNNING; ``reconcile`` ends
them from the records Optuna stores (RESULT_ATTR) when the study is next opened.
``sweep worker`` on another machine logs through its own Tracker.
"""

from __future__ import annotations

import threading
from multiprocessing.connection import Connection, wait

from optuna import Study
from optuna.trial import TrialState

from core.train import CURVES, EpochRecord
from sweep.schema import HISTORY_KEYS, REASON_ATTR, REASON_TAG, RESULT_ATTR, RETRY_OF_ATTR, RUN_ATTR, TrialRecord
from sweep.study import StudySpec, all_params
from sweep.tracking import Tracker, TrialRun

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def finish_run(run, state: str, record: TrialRecord) -> None:
    """End a trial's run (a TrialRun or a RelayedRun) with its record: the final metrics (the
    curves are logged per epoch) and the tags that say why it ended."""
    summary = {k: v for k, v in (record.metrics or {}).items() if k not in CURVES}
    run.finish(state, summary, record.tags())


class RelayedRun:
    """A trial's run as a worker sees it: its epochs and its end go to the launcher."""

    def __init__(self, conn: Connection, run_id: str) -> None:
        self.conn, self.run_id = conn, run_id

    def log_epoch(self, record: EpochRecord) -> None:
        self.conn.send(("epoch", self.run_id, record))

    def finish(self, state: str, metrics: dict | None = None, tags: dict | None = None) -> None:
        self.conn.send(("finish", self.run_id, state, metrics, tags))


class RelayedTracker:
    """The Tracker of a local worker: the calls it makes, sent to the launcher's Relay."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def start_trial(self, parent_run_id: str, trial_number: int, params: dict,
                    tags: dict | None = None) -> RelayedRun:
        self.conn.send(("start", parent_run_id, trial_number, params, tags))
        reply = self.conn.recv()
        if isinstance(reply, BaseException):  # the launcher could not create the run
            raise reply
        return RelayedRun(self.conn, reply)

    def end_run(self, run_id: str, status: str, tags: dict | None = None) -> None:
        self.conn.send(("end", run_id, status, tags))


class Relay(threading.Thread):
    """Logs what local workers send over ``conns`` through ``tracker``, until every worker has
    closed its end (exited or died); ``error`` is the first logging error, if any."""

    def __init__(self, tracker: Tracker, conns: list[Connection]) -> None:
        super().__init__(daemon=True, name="sweep-relay")
        self.tracker, self.conns = tracker, list(conns)
        self.runs: dict[str, TrialRun] = {}  # open runs by id
        self.error: Exception | None = None

    def run(self) -> None:
        while self.conns:
            for conn in wait(self.conns):
                try:
                    message = conn.recv()
                except (EOFError, OSError):  # the worker is gone, and all it sent was read
                    self.conns.remove(conn)
                    conn.close()
                    continue
                self.handle(conn, message)

    def handle(self, conn: Connection, message: tuple) -> None:
        """Do what one message asks; a logging error is kept (and sent back to a waiting worker)."""
        kind, *args = message
        try:
            if kind == "start":
                self._start(conn, *args)
            elif kind == "epoch":
                run_id, record = args
                self.runs[run_id].log_epoch(record)
            elif kind == "finish":
                run_id, *rest = args
                self.runs.pop(run_id).finish(*rest)
            else:  # "end": a run another worker left open
                run_id, *rest = args
                self.runs.pop(run_id, None)
                self.tracker.end_run(run_id, *rest)
        except Exception as exc:  # (a store that fails now, for the launcher to raise when its workers are done)
            self.error = self.error or exc
            if kind == "start":
                conn.send(RuntimeError(f"tracking failed: {exc}"))

    def _start(self, conn: Connection, parent_run_id: str, number: int, params: dict, tags: dict | None) -> None:
        run = self.tracker.start_trial(parent_run_id, number, params, tags)
        try:
            conn.send(run.run_id)
        except OSError:  # the worker died waiting: its trial names no run
            self.tracker.end_run(run.run_id, "KILLED")
            return
        self.runs[run.run_id] = run


def reconcile(study: Study, spec: StudySpec, tracker: Tracker, parent_run_id: str) -> list[int]:
    """End the runs a dead launcher left RUNNING for finished trials, from their stored records
    (epochs, final metrics, reason; a retried trial's run KILLED as ``OpenStudy.requeue`` ends
    it); return the trials' numbers."""
    trials = {t.user_attrs[RUN_ATTR]: t for t in study.get_trials(deepcopy=False, states=_FINISHED)
              if RUN_ATTR in t.user_attrs}
    retries = {t.user_attrs[RETRY_OF_ATTR]: t.user_attrs.get(REASON_ATTR)
               for t in study.get_trials(deepcopy=False) if RETRY_OF_ATTR in t.user_attrs}
    ended = []
    for found in tracker.trial_runs(parent_run_id):
        trial = trials.get(found.info.run_id)
        if found.info.status != "RUNNING" or trial is None:
            continue
        stored = trial.user_attrs.get(RESULT_ATTR, {})
        record = TrialRecord(stored.get("history", {}), stored.get("metrics"), stored.get("reason"),
                             stored.get("pruned_at_epoch"))
        params = all_params(spec, trial.params) if set(spec.searched) <= trial.params.keys() else None
        run = TrialRun(tracker, found.info.run_id, params)
        history = record.history
        for values in zip(*(history.get(key, []) for key in HISTORY_KEYS)):
            run.log_epoch(EpochRecord(**dict(zip(HISTORY_KEYS, values)), eval_seconds=0.0))
        finish_run(run, trial.state.name, record)
        if trial.number in retries:
            tracker.end_run(found.info.run_id, "KILLED", {REASON_TAG: retries[trial.number]} if retries[trial.number] else None)
        ended.append(trial.number)
    return ended
