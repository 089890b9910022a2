"""Tracking through one process: local workers hand their runs to the launcher, which logs them.

MLflow costs a second or more to import and tens of milliseconds of CPU per run; each local
worker would pay both. Instead a worker gets one end of a pipe (``RelayedTracker``: the
Tracker calls a TrialRunner makes, sent as messages) and the launcher logs every message,
in the order its worker sent it, through its one Tracker in a thread (``Relay``). Nothing
waits for the launcher: a run is created when its trial starts, and its id comes back while
the trial trains (the trial stores it after its first epoch, see sweep.run.trial); the
run's epochs and end follow, named by the trial's number, so a trial may be told to Optuna
before its run has ended in MLflow.

A worker that dies loses nothing it sent: the launcher still reads and logs what is in the
pipe, then ends the runs it left open (KILLED). A launcher that dies may leave runs of
finished trials RUNNING; ``sweep.run.trial.reconcile`` ends them from the records Optuna
stores (RESULT_ATTR) when the study is next opened.
A single worker (``sweep run`` in the launcher's process) and ``sweep worker`` log through
their own Tracker, without a relay.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from multiprocessing.connection import Connection, wait

from core.data import Dataset
from core.history import EpochRecord
from sweep.schema import REASON_TAG
from sweep.tracking.tracker import Tracker, TrialRun

DIED = "worker process died"  # why a run is KILLED when its worker is gone


class RelayedRun:
    """A trial's run as a worker sees it: its epochs and its end go to the launcher, named by
    the trial's number; its id is known once the launcher has answered (``run_id`` waits)."""

    def __init__(self, tracker: RelayedTracker, number: int) -> None:
        self.tracker, self.number = tracker, number
        self.id: str | None = None
        self.error: BaseException | None = None  # why the launcher could not create it

    @property
    def run_id(self) -> str:
        while self.id is None and self.error is None:
            self.tracker.receive()
        if self.error is not None:
            raise self.error
        return self.id

    def log_epoch(self, record: EpochRecord) -> None:
        self.tracker.conn.send(("epoch", self.number, record))

    def log_weights(self, weights: bytes) -> None:
        self.tracker.conn.send(("weights", self.number, weights))

    def finish(self, state: str, metrics: dict | None = None, tags: dict | None = None) -> None:
        self.tracker.conn.send(("finish", self.number, state, metrics, tags))


class RelayedTracker:
    """The Tracker of a local worker: the calls it makes, sent to the launcher's Relay."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.unnamed: deque[RelayedRun] = deque()  # runs started, in order, whose ids have not come yet

    def start_trial(
        self,
        parent_run_id: str,
        trial_number: int,
        params: dict,
        tags: dict | None = None,
        *,
        searched: dict | None = None,
        data: Dataset | None = None,
    ) -> RelayedRun:
        """As Tracker.start_trial; ``data`` stays here (the launcher logs its own copy of it)."""
        self.conn.send(("start", parent_run_id, trial_number, params, tags, searched))
        run = RelayedRun(self, trial_number)
        self.unnamed.append(run)
        return run

    def receive(self) -> None:
        """Wait for the launcher's next answer, for the oldest run started (the Relay answers
        each worker in order): its id, or the error that kept the launcher from creating it."""
        reply, run = self.conn.recv(), self.unnamed.popleft()
        if isinstance(reply, BaseException):
            run.error = reply
        else:
            run.id = reply

    def end_run(self, run_id: str, status: str, tags: dict | None = None) -> None:
        self.conn.send(("end", run_id, status, tags))


class Relay(threading.Thread):
    """Logs what local workers send over ``conns`` through ``tracker``, until every worker has
    closed its end (exited or died); ``data`` is the dataset input of their runs, ``parent`` the
    run their runs go under when they name none (workers started before it was made); ``error``
    is the first logging error, if any."""

    def __init__(
        self, tracker: Tracker, conns: list[Connection], data: Dataset | None = None, parent: str | None = None
    ) -> None:
        super().__init__(daemon=True, name="sweep-relay")
        self.tracker, self.conns, self.data, self.parent = tracker, list(conns), data, parent
        self.runs: dict[tuple[Connection, int], TrialRun] = {}  # open runs by worker and trial number
        self.error: Exception | None = None

    def run(self) -> None:
        while self.conns:
            for conn in wait(self.conns):
                try:
                    message = conn.recv()
                except (EOFError, OSError):  # the worker is gone, and all it sent was read
                    self._gone(conn)
                    continue
                self.handle(conn, message)

    def _gone(self, conn: Connection) -> None:
        """A worker ended: the runs it left open lost their worker (a worker that stops ends its own)."""
        self.conns.remove(conn)
        conn.close()
        for key in [key for key in self.runs if key[0] is conn]:
            self.handle(conn, ("end", self.runs.pop(key).run_id, "KILLED", {REASON_TAG: DIED}))

    def handle(self, conn: Connection, message: tuple) -> None:
        """Do what one message asks; a logging error is kept (and sent back to a waiting worker)."""
        kind, *args = message
        try:
            if kind == "start":
                self._start(conn, *args)
            elif kind == "epoch":
                number, record = args
                self.runs[conn, number].log_epoch(record)
            elif kind == "weights":
                number, weights = args
                self.runs[conn, number].log_weights(weights)
            elif kind == "finish":
                number, *rest = args
                self.runs.pop((conn, number)).finish(*rest)
            else:  # "end": a run whose worker is gone
                self.tracker.end_run(*args)
        except Exception as exc:  # (a store that fails now, for the launcher to raise when its workers are done)
            self.error = self.error or exc
            if kind == "start":
                with contextlib.suppress(OSError):  # (a worker that is gone)
                    conn.send(RuntimeError(f"tracking failed: {exc}"))

    def _start(
        self,
        conn: Connection,
        parent_run_id: str | None,
        number: int,
        params: dict,
        tags: dict | None,
        searched: dict | None,
    ) -> None:
        self.runs[conn, number] = run = self.tracker.start_trial(
            parent_run_id or self.parent, number, params, tags, searched=searched, data=self.data
        )
        try:
            conn.send(run.run_id)
        except OSError:  # the worker is gone (its end is read next)
            pass
