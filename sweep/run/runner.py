"""``sweep run``'s launcher: open the study once, then run it with one worker in this process or
with local worker processes (started from a fork server), supervised, their runs relayed.

One worker trains here and logs through the launcher's own Tracker, as ``sweep worker`` does.
Several are processes that never import MLflow: their runs are logged here by a Relay thread
(sweep.tracking.relay). Either way the launcher ends the study's parent run with its summary
and registers the best trial's model.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import optuna
from optuna.trial import TrialState

from core.data import Dataset
from sweep.errors import Stopped, TrialsKeepFailing, WorkersDied
from sweep.limits import MAX_FAILED_IN_A_ROW
from sweep.run.study import (
    Budget,
    OpenStudy,
    Stores,
    counted,
    create_or_resume,
    join_study,
    last_failure,
    load_data,
    open_tracking,
)
from sweep.run.worker import STOP, Worker, pack_size, stop_on_signals
from sweep.spec.file import parse_spec, spec_to_dict
from sweep.spec.samplers import GRID_SAMPLERS
from sweep.spec.study import StudySpec
from sweep.tracking.registry import register
from sweep.tracking.relay import Relay
from sweep.tracking.store import configure
from sweep.tracking.summary import parent_summary, state_counts

FAILING_EXIT = 3  # exit code of a local worker process that stopped on TrialsKeepFailing

_LOCAL_WORKERS: list[multiprocessing.Process] = []  # run_study's, told at once when a signal lands
_TOLD: set[int] = set()  # the pids of those told


def _tell_workers() -> None:
    """Pass a stop on to the local workers not told yet (SIGTERM: each stops at its next epoch's end)."""
    for p in _LOCAL_WORKERS:
        if p.pid not in _TOLD and p.exitcode is None:
            p.terminate()
            _TOLD.add(p.pid)


def configure_libraries() -> None:
    """Quiet Optuna (warnings only) and set MLflow up (``sweep.tracking.store.configure``): by the
    launcher as it starts, and by each local worker process (the fork server starts afresh)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configure()


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
    the trials of a worker that was killed; the others run them (see ``_supervise``). One
    worker runs here and logs through this process's Tracker. Local workers' MLflow runs are
    logged here, by a Relay thread (sweep.tracking.relay); the workers start before MLflow is
    imported and its parent run made (``_track_beside``), and train their first epoch meanwhile
    (their runs' ids come from the relay once it runs).
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
        with stop_on_signals(_tell_workers):
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
        _TOLD.clear()
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
