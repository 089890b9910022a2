"""Create, resume and run studies: the worker loop, dead workers, local worker processes.

Every worker runs the same loop: under the study's lock it fails and re-queues trials
whose worker died, checks the budget and asks for a trial; then it trains that trial
outside the lock. The lock is what makes a grid run every point exactly once and a
budget of n trials run exactly n, whatever the number of workers and machines.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection, wait

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.data import DataError, Dataset, load_dataset
from core.packed import UNPACKED_OPTIONS
from sweep.adapters import FIXED_PARAMS_ATTR
from sweep.errors import Stopped, TrialsKeepFailing, UsageError, WorkersDied
from sweep.limits import MAX_FAILED_IN_A_ROW
from sweep.run.trial import TrialRunner, is_alive_here, worker_identity
from sweep.schema import (
    BEAT_ATTR,
    PARENT_ATTR,
    REASON_ATTR,
    REASON_TAG,
    RESULT_ATTR,
    RETRY_OF_ATTR,
    RUN_ATTR,
    SPEC_ATTR,
    STUDY_ID_ATTR,
    WORKER_ATTR,
    TrialRecord,
)
from sweep.spec.file import dumps, parse_spec, spec_to_dict
from sweep.spec.samplers import GRID_SAMPLERS, PACKABLE, grid_key, grid_order, grid_points
from sweep.spec.study import StudySpec, suggest
from sweep.stores.storage import StorageSpec, heartbeat_settings, not_yet_made, open_storage, study_lock
from sweep.stores.urls import redact
from sweep.tracking import tracker as tracking
from sweep.tracking.registry import register
from sweep.tracking.relay import DIED, Relay, RelayedTracker, reconcile
from sweep.tracking.summary import parent_summary, state_counts
from sweep.tracking.tracker import Tracker, check_reachable, runs_view

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
PACK_MAX = 16  # trials trained together at most
FAILING_EXIT = 3  # exit code of a local worker process that stopped on TrialsKeepFailing

STOP = threading.Event()  # set by Ctrl-C / SIGTERM; trials stop at their next epoch
_RECEIVED: set[int] = set()  # the signals that set STOP
_LOCAL_WORKERS: list[multiprocessing.Process] = []  # run_study's, told at once when a signal lands
_TOLD: set[int] = set()  # the pids of those told


def _on_signal(signum, frame) -> None:
    """First signal: stop at the next safe point (an epoch's end). The same one again: stop now.

    (A worker of a terminal's ``sweep run`` gets Ctrl-C's SIGINT and the launcher's SIGTERM:
    one request to stop.)
    """
    if signum in _RECEIVED:
        raise KeyboardInterrupt
    _RECEIVED.add(signum)
    STOP.set()
    _tell_workers()  # now, even while the launcher is busy (setting MLflow up, say)


def _tell_workers() -> None:
    """Pass a stop on to the local workers not told yet (SIGTERM: each stops at its next epoch's end)."""
    for p in _LOCAL_WORKERS:
        if p.pid not in _TOLD and p.exitcode is None:
            p.terminate()
            _TOLD.add(p.pid)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``STOP`` while a sweep runs (main thread only).

    A KeyboardInterrupt raised wherever the signal lands can be swallowed (for
    instance inside a garbage-collection callback); a flag checked at safe points cannot.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()
    _RECEIVED.clear()
    _TOLD.clear()
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class Stores:
    """Where a study's trials (Optuna) and runs (MLflow; None = not tracked) are kept."""

    storage: StorageSpec
    tracking_uri: str | None


@dataclass(frozen=True)
class Budget:
    """How much a run may do: the study's total trial count, and this run's deadline."""

    n_trials: int
    deadline: float | None  # time.monotonic() value, or None

    @classmethod
    def start(cls, spec: StudySpec, n_trials: int | None, timeout: float | None) -> Budget:
        """The budget of a run starting now: ``study_budget``'s trials, ``timeout`` seconds (None: no deadline)."""
        return cls(study_budget(spec, n_trials), None if timeout is None else time.monotonic() + timeout)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def study_budget(spec: StudySpec, n_trials: int | None) -> int:
    """Total trials: the flag, else the file, else the grid's size (grid and brute force)."""
    if n_trials is not None:
        return n_trials
    if spec.n_trials is not None:
        return spec.n_trials
    if spec.sampler.name in GRID_SAMPLERS:
        return spec.grid_size
    return 10**9  # only a timeout bounds this run


def _unchanged(stored: dict, given: dict) -> list[str]:
    """Keys whose settings differ between a stored study and a file (budget may change)."""
    ignore = {"n_trials", "timeout", "description", "budget"}
    keys = (set(stored) | set(given)) - ignore
    return sorted(k for k in keys if stored.get(k) != given.get(k))


STALE_REASON = "worker stopped sending heartbeats"


@dataclass
class OpenStudy:
    """A study opened in this process, made once and used by everything that runs its trials:
    its spec, the storage (connections belong to one process), the study with its sampler
    and pruner, the MLflow tracker (None: not tracked; a local worker's relays to the
    launcher) and the study's parent run."""

    spec: StudySpec
    stores: Stores
    storage: optuna.storages.BaseStorage
    study: optuna.Study
    tracker: Tracker | RelayedTracker | None
    parent: str | None
    created: bool = False  # whether this process stored the study (create_or_resume)

    def requeue(self, trial: FrozenTrial, reason: str) -> None:
        """A trial that did not end by itself: its run is KILLED and it is queued again.

        The copy carries the same parameters (those it was queued with, if it died before
        sampling; a grid point stays taken by the failed trial, so no other trial runs it
        meanwhile) and names the trial it re-runs. A trial with neither ran nothing.
        """
        if trial.state != TrialState.FAIL or trial.number in retried_numbers(self.study.get_trials(deepcopy=False)):
            return
        run_id = trial.user_attrs.get(RUN_ATTR)
        if self.tracker is not None and run_id:
            self.tracker.end_run(run_id, "KILLED", {REASON_TAG: reason})
        params = trial_point(trial)
        if not params:  # died before sampling, and was not queued with parameters: nothing to run again
            return
        self.study.enqueue_trial(params, user_attrs={RETRY_OF_ATTR: trial.number, REASON_ATTR: reason})


class _OnStale:
    """Optuna's heartbeat callback: a dead worker's trial (already FAIL) is queued again. Given
    to the storage when it is opened, it learns the study opened with it just after."""

    opened: OpenStudy | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.opened is not None:
            self.opened.requeue(trial, STALE_REASON)


def create_or_resume(
    spec: StudySpec, stores: Stores, data: Dataset | None = None, *, track_later: bool = False
) -> OpenStudy:
    """Create the study (or find it again) and its MLflow parent run (``data``: its dataset
    input): what ``sweep run`` opens once.

    ``track_later``: open the Optuna side alone (only the tracking store's reachability is
    checked first), so that local workers can start training while ``open_tracking`` imports
    MLflow and sets the parent run up (seconds: a new tracking database is migrated first).
    """
    if stores.tracking_uri is not None:
        check_reachable(stores.tracking_uri)  # before the study is stored
    if track_later:
        stores = Stores(stores.storage, None)
    if stores.storage.is_rdb:
        heartbeat_settings()  # bad settings are refused first, also when the storage is not yet made

    on_stale = _OnStale()
    # made once no check fails:
    storage = None if not_yet_made(stores.storage) else open_storage(stores.storage, on_stale)
    kwargs = {"study_name": spec.name, "sampler": spec.make_sampler(), "pruner": spec.make_pruner()}
    exists = storage is not None and spec.name in optuna.get_all_study_names(storage)  # (create_study writes)
    study = optuna.load_study(storage=storage, **kwargs) if exists else None
    given = spec_to_dict(spec)
    stored = study.user_attrs.get(SPEC_ATTR) if study else None
    if stored is not None and (changed := _unchanged(stored, given)):
        raise UsageError(
            f"{spec.source}: study {spec.name!r} already exists in {redact(stores.storage.url)} "
            f"with other settings ({', '.join(changed)}); give the study a new name"
        )
    study_id = study.user_attrs.get(STUDY_ID_ATTR) if study else uuid.uuid4().hex
    tracker = Tracker(stores.tracking_uri, spec.name) if stores.tracking_uri is not None else None
    if tracker is not None:  # before a new study is stored: its name may be taken in MLflow by another
        tracker.check_parent(study.user_attrs.get(PARENT_ATTR) if study else None, study_id)
    if study is None:
        storage = storage or open_storage(stores.storage, on_stale)
        study = optuna.create_study(directions=spec.directions, storage=storage, **kwargs)
        study.set_user_attr(STUDY_ID_ATTR, study_id)
    if stored is None:
        study.set_user_attr(SPEC_ATTR, given)
        for params in _starting_points(spec):  # known configurations first
            study.enqueue_trial(params, skip_if_exists=True)
    on_stale.opened = OpenStudy(spec, stores, storage, study, None, None, created=stored is None)
    if tracker is not None:
        _track(on_stale.opened, tracker, data)
    return on_stale.opened


def _track(opened: OpenStudy, tracker: Tracker, data: Dataset | None) -> None:
    """Log the opened study through ``tracker``: its parent run (found again, or made with
    ``data`` as its dataset input), named in the study; runs a dead launcher left open, ended."""
    spec, study = opened.spec, opened.study
    parent = tracker.parent_run(
        study.user_attrs.get(PARENT_ATTR),
        study.user_attrs.get(STUDY_ID_ATTR),
        description=spec.description,
        config=dumps(spec),
        storage=opened.stores.storage.url,
        data=data,
        view=runs_view(spec.space, [o.metric for o in spec.objectives]),
    )
    if study.user_attrs.get(PARENT_ATTR) != parent:
        study.set_user_attr(PARENT_ATTR, parent)
    if not opened.created:  # runs a launcher that died left open (see sweep.tracking.relay)
        reconcile(study, spec, tracker, parent)
    opened.tracker, opened.parent = tracker, parent


def open_tracking(opened: OpenStudy, tracking_uri: str, data: Dataset | None = None) -> None:
    """The MLflow half of ``create_or_resume(..., track_later=True)``: the tracker and parent run of
    the opened study (a StoreError if its MLflow name belongs to another study: Tracker.check_parent)."""
    tracker = Tracker(tracking_uri, opened.spec.name)
    opened.stores = Stores(opened.stores.storage, tracking_uri)
    _track(opened, tracker, data)  # (parent_run checks the parent first: Tracker.check_parent)


def join_study(
    spec: StudySpec, stores: Stores, parent: str | None, seed_offset: int = 0, relay: Connection | None = None
) -> OpenStudy:
    """Open the existing study of ``spec`` in a worker process (its own connections, a sampler
    seeded with its ``seed_offset``), logging under the parent run ``parent``: through the
    launcher over ``relay`` if given (sweep.tracking.relay), else with its own Tracker."""
    on_stale = _OnStale()
    storage = open_storage(stores.storage, on_stale, create=False)
    study = optuna.load_study(
        study_name=spec.name, storage=storage, sampler=spec.make_sampler(seed_offset), pruner=spec.make_pruner()
    )
    tracker = (
        RelayedTracker(relay)
        if relay is not None
        else Tracker(stores.tracking_uri, spec.name)
        if stores.tracking_uri
        else None
    )
    on_stale.opened = OpenStudy(spec, stores, storage, study, tracker, parent)
    return on_stale.opened


def join_stored_study(name: str, stores: Stores) -> OpenStudy:
    """``sweep worker`` on any machine: the study ``name`` with the spec and parent run stored in it."""
    study, spec = load_stored_study(name, stores)
    return join_study(spec, stores, study.user_attrs.get(PARENT_ATTR))


def _starting_points(spec: StudySpec) -> list[dict]:
    """The spec's ``enqueue`` points; in a grid study each made whole: the first grid point
    (in ``grid_order``) that has the given values and is not already one of them."""
    if spec.sampler.name != "grid":
        return [dict(params) for params in spec.enqueue]
    points: list[dict] = []
    for params in spec.enqueue:
        given = set(grid_key(params))
        point = next((p for p in grid_order(spec.searched) if given <= set(grid_key(p)) and p not in points), None)
        if point is not None:
            points.append(point)
    return points


def trial_point(trial: FrozenTrial) -> dict:
    """The parameters a trial ran or was queued to run: its fixed ones (an enqueued or re-queued
    trial's, whole even if it died while sampling them) and those it sampled."""
    return {**trial.system_attrs.get(FIXED_PARAMS_ATTR, {}), **trial.params}


def load_stored_study(name: str, stores: Stores, *, read_only: bool = False) -> tuple[optuna.Study, StudySpec]:
    """Read an existing study by name and the spec stored in it (``read_only``: see open_storage);
    to run its trials, ``join_study`` opens it with the spec's sampler."""
    storage = open_storage(stores.storage, create=False, read_only=read_only)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise UsageError(f"no study named {name!r} in {redact(stores.storage.url)} (studies there: {known})")
    study = optuna.load_study(study_name=name, storage=storage)  # (its sampler: Optuna's default, never asked)
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        raise UsageError(f"study {name!r} was not created by mlp-sweep (it has no stored settings)")
    return study, parse_spec(stored, source=f"study {name}")


def load_data(spec: StudySpec, data_dir: str | None, progress=None) -> Dataset:
    """The study's dataset; bad or missing files become a UsageError (exit 2)."""
    d = spec.data
    try:
        return load_dataset(
            d.dataset,
            data_dir=data_dir,
            n_train=d.n_train,
            n_validation=d.n_validation,
            n_test=d.n_test,
            progress=progress,
        )
    except (DataError, ValueError) as exc:
        raise UsageError(str(exc)) from None


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


def last_failure(study: optuna.Study) -> str:
    """Why the study's last failed trial failed."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return (TrialRecord.of(failed[-1]).reason or "unknown") if failed else "unknown"


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that were queued again."""
    return {t.user_attrs[RETRY_OF_ATTR] for t in trials if RETRY_OF_ATTR in t.user_attrs}


def retried_since(study: optuna.Study, start: datetime) -> list[int]:
    """Numbers of the trials started at ``start`` or later that were queued again."""
    trials = study.get_trials(deepcopy=False)
    return sorted(
        n for n in retried_numbers(trials) if trials[n].datetime_start is not None and trials[n].datetime_start >= start
    )


def counted(trials: list[FrozenTrial], states=COUNTED) -> int:
    """Trials that take a share of the budget: those in ``states``, and failed trials that
    started and were not queued again."""
    retried = retried_numbers(trials)
    return sum(
        t.state in states
        or (t.state == TrialState.FAIL and t.number not in retried and bool(t.params))  # (no params: never started)
        for t in trials
    )


class StudyLedger:
    """What a worker knows of its study's trials, learnt from each trial once.

    A finished trial never changes again, so it is looked at once, when it is first seen
    finished: the ledger then keeps the budget's count (``counted``), the retried trials and
    (``grids``) the grid points taken, and each ``read`` looks only at the trials that are
    new or were unfinished at the last one. Optuna's cache (RDB storages and the gRPC proxy)
    likewise reads only those from the storage.
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
            trials = self._claim()
            states: dict[int, TrialState] = {}
            try:
                with self.beats.keep(trials):
                    if trials and not STOP.is_set():
                        states = self.runner.run(trials)
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

    def _claim(self) -> list[optuna.Trial]:
        """Up to ``pack`` trials (fewer near the end, so that workers finish together).

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
                claimed = [self.study.ask() for _ in range(n)]
            for trial in claimed:  # sampled and named under the lock: see reap()
                suggest(self.spec, trial)
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


class Beats:
    """How a worker's running trials show they are alive, and how other workers tell they are not.

    ``of`` picks: Optuna's heartbeats (RDB storages: found stale by ``fail_stale_trials``), a
    timestamp in the trial (the gRPC proxy, whose storage has no heartbeat methods: found by
    ``silent``), or none (a journal: local workers only, whose processes are checked).
    """

    @staticmethod
    def of(opened: OpenStudy) -> Beats:
        spec = opened.stores.storage
        if spec.is_proxy:
            return StampBeats(opened)
        return OptunaBeats(opened) if spec.is_rdb else Beats()

    def keep(self, trials: list[optuna.Trial]):
        """A context in which ``trials`` beat every interval."""
        return contextlib.nullcontext()

    def silent(self, trial: FrozenTrial) -> bool:
        """Whether a RUNNING trial has not beaten for longer than the grace period."""
        return False

    def _trial_ids(self, opened: OpenStudy, trials: list[optuna.Trial]) -> list[int]:
        storage = opened.storage
        study_id = storage.get_study_id_from_name(opened.study.study_name)
        return [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]


class OptunaBeats(Beats):
    """The storage's own heartbeat methods, which ``Study.optimize`` calls (a sweep asks and
    tells trials itself)."""

    def __init__(self, opened: OpenStudy) -> None:
        self.opened = opened

    def keep(self, trials: list[optuna.Trial]):
        storage, ids = self.opened.storage, self._trial_ids(self.opened, trials)
        return _Heartbeat(lambda: [storage.record_heartbeat(i) for i in ids], storage.get_heartbeat_interval())


class StampBeats(Beats):
    """Each beat stores the time in the trial (BEAT_ATTR, an ordinary trial attribute the proxy
    passes on); a trial whose last stamp (or start) is older than the grace period is silent.
    Workers' clocks are compared: keep them in step (NTP), well within the grace period."""

    def __init__(self, opened: OpenStudy) -> None:
        self.opened = opened
        self.interval, self.grace = heartbeat_settings()

    def keep(self, trials: list[optuna.Trial]):
        storage, live = self.opened.storage, self._trial_ids(self.opened, trials)

        def beat() -> None:
            for i in list(live):
                try:
                    storage.set_trial_system_attr(i, BEAT_ATTR, time.time())
                except Exception:
                    if not storage.get_trial(i).state.is_finished():
                        raise
                    live.remove(i)  # told meanwhile (a pack's groups end one by one): nothing to keep alive

        return _Heartbeat(beat, self.interval)

    def silent(self, trial: FrozenTrial) -> bool:
        last = trial.system_attrs.get(BEAT_ATTR)
        if last is None:  # not beaten yet: the worker's clock when it claimed the trial
            last = trial.user_attrs.get(WORKER_ATTR, {}).get("claimed", time.time())
        return time.time() - last > self.grace


class _Heartbeat(threading.Thread):
    """Calls ``beat`` now and then every ``interval`` seconds while the trials run."""

    def __init__(self, beat: Callable[[], object], interval: float) -> None:
        super().__init__(daemon=True)
        self.beat, self.interval, self.stop = beat, interval, threading.Event()

    def __enter__(self) -> None:
        self.beat()
        self.start()

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.beat()


def configure_libraries() -> None:
    """Quiet Optuna (warnings only) and set MLflow up (``tracking.configure``): by the launcher
    as it starts, and by each local worker process (the fork server starts afresh)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracking.configure()


@dataclass(frozen=True)
class WorkerPlan:
    """What the launcher hands a local worker process: plain values, since connections to the
    stores belong to one process (the worker opens its own, once, with ``join_study``)."""

    spec: dict  # studyfile.spec_to_dict of the launcher's spec
    source: str
    stores: Stores
    parent: str | None
    budget: Budget
    data_dir: str | None
    workers: int
    pack: bool


def _worker_main(plan: WorkerPlan, seed_offset: int, relay: Connection | None) -> None:
    """Entry point of a local worker process: one BLAS thread, SIGTERM like Ctrl-C, its runs
    logged by the launcher over ``relay`` (None: not tracked)."""
    from threadpoolctl import threadpool_limits

    configure_libraries()
    threadpool_limits(1)
    spec = parse_spec(plan.spec, plan.source)
    with stop_on_signals():
        try:
            opened = join_study(spec, plan.stores, plan.parent, seed_offset, relay)
            Worker(opened, plan.budget, load_data(spec, plan.data_dir), workers=plan.workers, pack=plan.pack).run()
        except (Stopped, KeyboardInterrupt):  # (a second signal: at once)
            pass
        except TrialsKeepFailing:
            raise SystemExit(FAILING_EXIT) from None  # the supervisor says why


PRELOAD = ["sweep.run.runner", "core.preload"]  # about 1 s of imports; the compiled engine's code, loaded once


def prepare_workers() -> None:
    """Start the fork server now, importing PRELOAD once while this process does other work.

    Workers are then forked from it ready-made (clean, single-threaded, one BLAS thread)
    instead of each importing everything again. They never import MLflow: the launcher
    logs their runs (sweep.tracking.relay).
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    from multiprocessing import forkserver

    forkserver.ensure_running()


def start_workers(plan: WorkerPlan) -> tuple[list[multiprocessing.Process], list[Connection]]:
    """Start the plan's local worker processes from the fork server (see ``prepare_workers``);
    return them and, for a tracked study, the launcher's ends of their relays (else none)."""
    prepare_workers()
    ctx = multiprocessing.get_context("forkserver")
    tracked = plan.stores.tracking_uri is not None
    pipes = [ctx.Pipe() if tracked else (None, None) for _ in range(plan.workers)]
    procs = [
        ctx.Process(target=_worker_main, args=(plan, i, theirs), daemon=False, name=f"sweep-worker-{i}")
        for i, (_, theirs) in enumerate(pipes)
    ]
    for p in procs:
        p.start()
    for _, theirs in pipes:
        if theirs is not None:
            theirs.close()  # the worker's now: its end closes when the worker ends
    return procs, [ours for ours, _ in pipes if ours is not None]


@dataclass(frozen=True)
class Progress:
    """Where a study stands: trials by state, the budget, the best value so far."""

    counts: dict[str, int]
    total: int
    best: float | None

    @property
    def done(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)


def progress_of(study: optuna.Study, total: int) -> Progress:
    trials = study.get_trials(deepcopy=False)
    counts = state_counts(trials)
    best = None
    if len(study.directions) == 1 and counts.get("COMPLETE"):
        best = study.best_value
    return Progress(counts, min(total, max(len(trials), total)), best)


def run_study(
    spec: StudySpec,
    stores: Stores,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    workers: int = 1,
    data_dir: str | None = None,
    pack: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
    data_progress=None,
) -> optuna.Study:
    """Create or resume the study and run it to its budget with ``workers`` local processes.

    The data is loaded (and, if needed, downloaded and verified) here first, so bad data
    stops the run before any worker starts. Ctrl-C propagates after the workers stopped:
    finished trials stay, running ones are failed and queued again for the next run. So are
    the trials of a worker that was killed; the others run them (see ``_supervise``). The
    local workers' MLflow runs are logged here, by a Relay thread (sweep.tracking.relay); the workers
    start before MLflow is imported and its parent run made (``_track_beside``), and train
    their first epoch meanwhile (their runs' ids come from the relay once it runs).
    """
    spec.check_memory(pack_size(spec) if pack else 1, workers)  # before anything is loaded or stored
    if workers > 1:
        prepare_workers()  # imports in the background while we load data and open the stores
    data = load_data(spec, data_dir, data_progress)  # bad data stops us before anything is stored
    later = workers > 1 and stores.tracking_uri is not None  # MLflow set up while the workers start
    opened = create_or_resume(spec, stores, data, track_later=later)
    study = opened.study
    budget = Budget.start(spec, n_trials, timeout if timeout is not None else spec.timeout)
    report = (lambda: on_progress(progress_of(study, budget.n_trials))) if on_progress else None
    status, relay = "KILLED", None
    try:
        with stop_on_signals():
            if workers == 1:
                Worker(opened, budget, data, on_trial=report, pack=pack).run()
            else:
                target = (
                    min(budget.n_trials, spec.grid_size) if spec.sampler.name in GRID_SAMPLERS else budget.n_trials
                )  # (a grid runs out of points)
                plan = WorkerPlan(
                    spec_to_dict(spec), spec.source, stores, opened.parent, budget, data_dir, workers, pack
                )
                procs, relays = start_workers(plan)
                _LOCAL_WORKERS[:] = procs
                if STOP.is_set():  # (a signal while they started)
                    _tell_workers()
                if later:
                    _track_beside(opened, stores.tracking_uri, data, procs, relays)
                if opened.tracker is not None:  # (the runs' dataset input: memory-mapped pixels, shared)
                    relay = Relay(opened.tracker, relays, data, opened.parent)
                    relay.start()
                _supervise(procs, report, study, budget, target)
            if STOP.is_set():
                raise Stopped
        status = "FINISHED"
    finally:
        _LOCAL_WORKERS.clear()
        if relay is not None:
            relay.join()  # every worker has ended: the relay has logged all they sent
            if relay.error is not None:
                status = "FAILED"
        if opened.tracker is not None and opened.parent is not None:
            opened.tracker.finish_parent(
                opened.parent, status, **parent_summary(study, spec, opened.tracker.experiment_id)
            )
    if relay is not None and relay.error is not None:
        raise relay.error  # (after the trials: a store that failed in the meantime)
    if opened.tracker is not None:
        register(study, spec, opened.tracker)  # the best network, as a model (sweep.tracking.registry)
    return study


def _track_beside(
    opened: OpenStudy, tracking_uri: str, data: Dataset, procs: list[multiprocessing.Process], relays: list[Connection]
) -> None:
    """``open_tracking`` while the local workers train (their relays wait, unread, meanwhile). If it
    fails, the workers are stopped and a study this run stored is deleted again, as when the
    tracking store refuses it before it is stored (``create_or_resume``)."""
    try:
        open_tracking(opened, tracking_uri, data)
    except BaseException:
        for conn in relays:  # a worker blocked on a full relay fails at once
            conn.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
        if opened.created:
            optuna.delete_study(study_name=opened.spec.name, storage=opened.storage)
        raise


@contextlib.contextmanager
def _signal_wakeup() -> Iterator[int | None]:
    """A pipe that the interpreter writes to the moment a handled signal arrives, so that
    waiting on the workers ends then (None off the main thread, where signals never land)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write)
    try:
        yield read
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)


def _supervise(
    procs: list[multiprocessing.Process], report: Callable | None, study: optuna.Study, budget: Budget, target: int
) -> None:
    """Wait for local workers, reporting progress; pass Ctrl-C or SIGTERM on to them at once,
    let them stop, then raise Stopped.

    A worker killed by a signal is expected: the others fail and retry its trials. Raises
    TrialsKeepFailing if a worker stopped on it, RuntimeError if one raised, and WorkersDied
    if workers were killed and fewer than ``target`` trials ended before the deadline.
    """
    alive = list(procs)
    with _signal_wakeup() as wakeup:
        while alive:
            if STOP.is_set():  # a terminal's Ctrl-C reached the workers too; the signal handler told the rest
                _tell_workers()
                for p in alive:
                    p.join()
                raise Stopped
            if report is not None:
                report()
            ready = wait([p.sentinel for p in alive] + ([] if wakeup is None else [wakeup]), timeout=0.5)
            if wakeup in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup, 512)
            alive = [p for p in alive if p.exitcode is None]
    if report is not None:
        report()
    if any(p.exitcode == FAILING_EXIT for p in procs):
        raise TrialsKeepFailing(study.study_name, MAX_FAILED_IN_A_ROW, last_failure(study))
    raised = [p.name for p in procs if p.exitcode > 0]
    if raised:
        raise RuntimeError(f"worker processes exited with errors: {', '.join(raised)}")
    killed = [-p.exitcode for p in procs if p.exitcode < 0]
    done = counted(study.get_trials(deepcopy=False), (TrialState.COMPLETE, TrialState.PRUNED))
    if killed and done < target and not budget.expired():
        raise WorkersDied(study.study_name, killed, done, target)
