"""The worker loop: claim trials under the study's lock, train them, find the trials of dead workers.

Every worker runs the same loop: under the study's lock it fails and re-queues trials
whose worker died, checks the budget, asks for trials and samples their parameters; then
it trains them outside the lock (sweep.run.trial). The lock is what makes a grid run every
point exactly once and a budget of n trials run exactly n, whatever the number of workers
and machines. Ctrl-C and SIGTERM set ``STOP``, which the loop and the trials check at safe
points.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.data import Dataset
from core.packed import UNPACKED_OPTIONS
from sweep.errors import Stopped, TrialsKeepFailing
from sweep.limits import MAX_FAILED_IN_A_ROW
from sweep.run.beats import Beats
from sweep.run.study import STALE_REASON, Budget, OpenStudy, last_failure, trial_point
from sweep.run.trial import Claimed, TrialRunner
from sweep.schema import RESULT_ATTR, RETRY_OF_ATTR, WORKER_ATTR, TrialRecord
from sweep.spec.samplers import PACKABLE, grid_key, grid_order, grid_points
from sweep.spec.study import StudySpec, suggest
from sweep.stores.storage import heartbeat_settings, study_lock
from sweep.tracking.relay import DIED

PACK_MAX = 16  # trials trained together at most

STOP = threading.Event()  # set by Ctrl-C / SIGTERM; trials stop at their next epoch
_RECEIVED: set[int] = set()  # the signals that set STOP


@contextlib.contextmanager
def stop_on_signals(on_stop: Callable[[], None] | None = None) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``STOP`` while a sweep runs (main thread only); ``on_stop`` is
    called at the first signal (the launcher passes the stop on to its local workers then).

    A KeyboardInterrupt raised wherever the signal lands can be swallowed (for
    instance inside a garbage-collection callback); a flag checked at safe points cannot.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()
    _RECEIVED.clear()
    handler = functools.partial(_on_signal, on_stop)
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous_handler in previous.items():
            signal.signal(sig, previous_handler)


def _on_signal(on_stop: Callable[[], None] | None, signum, frame) -> None:
    """First signal: stop at the next safe point (an epoch's end). The same one again: stop now.

    (A worker of a terminal's ``sweep run`` gets Ctrl-C's SIGINT and the launcher's SIGTERM:
    one request to stop.)
    """
    if signum in _RECEIVED:
        raise KeyboardInterrupt
    _RECEIVED.add(signum)
    STOP.set()
    if on_stop is not None:
        on_stop()  # now, even while the launcher is busy (setting MLflow up, say)


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (Linux), so a reused pid is not taken for ours."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_identity() -> dict:
    """What a worker stores in the trials it claims (WORKER_ATTR): its host, pid and the pid's start."""
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


def pack_size(spec: StudySpec) -> int:
    """How many trials a worker claims at once, at most PACK_MAX. A grid: its run of points that
    differ only in PACKABLE parameters (they train together, see core.packed). Another sampler:
    PACK_MAX when it searches PACKABLE parameters alone (every trial it asks for then packs with
    the others; TPE's constant liar, on by default, keeps them apart); otherwise one. One too when
    a training option that packs do not train (core.packed.UNPACKED_OPTIONS) is searched or on."""
    if any(name in spec.searched or spec.fixed[name] for name in UNPACKED_OPTIONS):
        return 1
    if spec.sampler.name != "grid":
        return PACK_MAX if spec.searched and set(spec.searched) <= set(PACKABLE) else 1
    size = 1
    for name, values in grid_points(spec.searched).items():
        if name in PACKABLE:
            size *= len(values)
    return max(1, min(size, PACK_MAX))


class StudyLedger:
    """What a worker knows of its study's trials, learnt from each trial once.

    A finished trial never changes again, so it is looked at once, when it is first seen
    finished: the ledger then keeps the budget's count (``sweep.run.study.counted``), the
    retried trials and (``grids``) the grid points taken, and each ``read`` looks only at the
    trials that are new or were unfinished at the last one. Optuna's cache (RDB storages and
    the gRPC proxy) likewise reads only those from the storage.
    """

    def __init__(self, grids: bool) -> None:
        self.grids = grids
        self.seen = 0  # trials 0 .. seen-1 have been looked at
        self.open: dict[int, FrozenTrial] = {}  # unfinished at the last read, by number
        self.retried: set[int] = set()  # failed trials queued again
        self.uncounted: set[int] = set()  # failed trials that take no share of the budget
        self.taken: set[tuple] = set()  # grid_key of every trial's point

    def read(self, study: optuna.Study) -> list[FrozenTrial]:
        """Bring the ledger up to date; return the RUNNING trials."""
        trials = study.get_trials(deepcopy=False)
        fresh = trials[self.seen :]
        for t in fresh:
            if self.grids:
                self.taken.add(grid_key(trial_point(t)))
            if RETRY_OF_ATTR in t.user_attrs:
                self.retried.add(t.user_attrs[RETRY_OF_ATTR])
                if t.user_attrs[RETRY_OF_ATTR] not in self.open:
                    self.uncounted.add(t.user_attrs[RETRY_OF_ATTR])  # (already seen finished: a FAIL)
        for t in [*(trials[n] for n in self.open), *fresh]:
            if not t.state.is_finished():
                self.open[t.number] = t
                continue
            self.open.pop(t.number, None)
            if t.state == TrialState.FAIL and (t.number in self.retried or not t.params):  # (no params: never started)
                self.uncounted.add(t.number)
        self.seen = len(trials)
        return [t for t in self.open.values() if t.state == TrialState.RUNNING]

    def count(self, state: TrialState) -> int:
        """Unfinished trials in ``state`` (WAITING or RUNNING) at the last read."""
        return sum(t.state == state for t in self.open.values())

    @property
    def counted(self) -> int:
        """Trials that take a share of the budget (``counted``), at the last read."""
        return self.seen - len(self.uncounted)


class Worker:
    """The loop one process runs: reap dead trials, claim a trial under the lock, train it."""

    def __init__(
        self,
        opened: OpenStudy,
        budget: Budget,
        data: Dataset,
        on_trial: Callable[[], None] | None = None,
        workers: int = 1,
        pack: bool = True,
    ) -> None:
        self.opened, self.study, self.spec, self.stores = opened, opened.study, opened.spec, opened.stores
        self.budget = budget
        self.on_trial = on_trial
        timed_out = budget.expired if self.spec.at_timeout == "stop" else (lambda: False)
        self.runner = TrialRunner(self.study, self.spec, data, opened.tracker, opened.parent, STOP.is_set, timed_out)
        self.rdb = self.stores.storage.is_rdb and not self.stores.storage.is_proxy
        self.workers = workers
        self.pack = pack_size(self.spec) if pack else 1
        self.grid = grid_order(self.spec.searched) if self.spec.sampler.name == "grid" else None
        self.grid_from = 0  # every grid point before this one is taken
        self.ledger = StudyLedger(grids=self.grid is not None)
        self.stale_due = 0.0  # time.monotonic() of the next heartbeat query (see reap)
        self.beats = Beats.of(opened)

    def run(self) -> int:
        """Run trials until the budget or deadline is spent; return how many ran here.

        Raises TrialsKeepFailing after MAX_FAILED_IN_A_ROW failed trials in a row.
        """
        ran = failed_in_a_row = 0
        while not self.budget.expired():
            claimed = self._claim()
            trials = [c.trial for c in claimed]
            states: dict[int, TrialState] = {}
            try:
                with self.beats.keep(trials):
                    if trials and not STOP.is_set():
                        states = self.runner.run(claimed)
            finally:  # the one place where interrupted trials end: a stop, or an exception (a second Ctrl-C)
                for trial in trials:
                    if trial.number not in states:
                        self.opened.requeue(self._failed(trial), "interrupted")
            if STOP.is_set():
                raise Stopped
            if not trials:
                break
            ran += len(trials)
            if self.on_trial is not None:
                self.on_trial()
            failed_in_a_row = failed_in_a_row + len(trials) if set(states.values()) == {TrialState.FAIL} else 0
            if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                raise TrialsKeepFailing(self.spec.name, failed_in_a_row, last_failure(self.study))
        return ran

    def _claim(self) -> list[Claimed]:
        """Up to ``pack`` trials, each with its parameters (fewer near the end, so that workers
        finish together).

        Queued trials (enqueued points, retries) come first, alone. A grid study then
        enqueues its next free points itself, so that a point is taken by a trial from
        the moment it is claimed, whatever trial numbers enqueued points took. What the
        lock guards costs the same in a study of any size: one read of the trials that are
        new or unfinished (Optuna's cache keeps the finished ones), and ``StudyLedger``'s
        counts, kept up to date from those alone.
        """
        with study_lock(self.stores.storage, self.spec.name):
            if STOP.is_set():  # (the lock may have taken a while)
                return []
            ledger = self.ledger
            if self.reap(ledger.read(self.study)):
                ledger.read(self.study)
            waiting = ledger.count(TrialState.WAITING)
            remaining = self.budget.n_trials - ledger.counted
            n = min(self.pack, waiting or math.ceil(remaining / self.workers))
            if self.grid is not None and not waiting:
                n = self._enqueue_free_points(n)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Heartbeat.*")
                asked = [self.study.ask() for _ in range(n)]
            claimed = []
            for trial in asked:  # sampled and named under the lock: see reap()
                claimed.append(Claimed(trial, suggest(self.spec, trial)))
                trial.set_user_attr(WORKER_ATTR, {**worker_identity(), "claimed": time.time()})
            return claimed

    def _enqueue_free_points(self, n: int) -> int:
        """Enqueue up to ``n`` grid points no trial has taken, in grid order and sharing their
        non-PACKABLE values (so they train as one pack); return how many.

        Every trial takes its point for good: a failed one is either counted or re-queued
        with its point (see ``OpenStudy.requeue``). So the points before the first free one
        stay taken, and the search for free points starts there (``grid_from``).
        """
        taken = self.ledger.taken
        while self.grid_from < len(self.grid) and grid_key(self.grid[self.grid_from]) in taken:
            self.grid_from += 1
        if self.grid_from == len(self.grid) or n <= 0:
            return 0
        first = self.grid[self.grid_from]
        structure = {name: value for name, value in first.items() if name not in PACKABLE}
        free = (p for p in itertools.islice(self.grid, self.grid_from, None) if grid_key(p) not in taken)
        pack = itertools.takewhile(lambda p: structure.items() <= p.items(), free)
        points = list(itertools.islice(pack, n))
        for point in points:
            self.study.enqueue_trial(point)
        return len(points)

    def reap(self, trials: list[FrozenTrial]) -> bool:
        """Fail and re-queue the RUNNING ``trials`` whose worker is gone; return whether the
        study's trials may have changed (then the ledger must read them again).

        On this machine a dead worker is seen at once (its process is gone); for RDB
        storages Optuna's heartbeat also finds workers that died on other machines (its
        query, at most once per heartbeat interval: a trial is only found stale after a grace
        period of several). Called under the study's lock, which a worker holds from asking
        for a trial until it has named itself in it: a RUNNING trial that names no worker
        lost its worker in between.
        """
        changed = False
        for t in trials:
            identity = t.user_attrs.get(WORKER_ATTR)
            died = identity is None or is_alive_here(identity) is False
            if died or self.beats.silent(t):
                try:
                    frozen = self.study.tell(t.number, state=TrialState.FAIL)
                except (RuntimeError, ValueError):  # finished meanwhile (told, or reaped by another worker)
                    continue
                self.opened.requeue(frozen, DIED if died else STALE_REASON)
                changed = True
        if self.rdb and time.monotonic() >= self.stale_due:
            self.stale_due = time.monotonic() + heartbeat_settings()[0]
            with warnings.catch_warnings():  # (Optuna's one public way to apply the grace period, experimental)
                warnings.filterwarnings(
                    "ignore",
                    message=r".*\.fail_stale_trials is experimental",
                    category=optuna.exceptions.ExperimentalWarning,
                )
                optuna.storages.fail_stale_trials(self.study)
            changed = True  # (its callback may have failed and re-queued trials; Optuna does not say which)
        return changed

    def _failed(self, trial: optuna.Trial) -> FrozenTrial:
        """The trial, told FAIL if it was still running (with a reason, unless it recorded one)."""
        running = {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if trial.number in running and RESULT_ATTR not in trial.user_attrs:
            trial.set_user_attr(RESULT_ATTR, TrialRecord(reason="interrupted").to_attr())
        return self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
