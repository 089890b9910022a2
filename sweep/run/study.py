"""Open a study: where it lives, creating or resuming it (``sweep run``), joining it (a worker),
its data and its budget.

An ``OpenStudy`` is made once per process and used by everything that runs its trials. It
also queues again the trials of workers that died (``OpenStudy.requeue``), whoever finds them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.data import DataError, Dataset, load_dataset
from sweep.adapters import FIXED_PARAMS_ATTR
from sweep.errors import UsageError
from sweep.run.trial import reconcile
from sweep.schema import (
    PARENT_ATTR,
    REASON_ATTR,
    REASON_TAG,
    RETRY_OF_ATTR,
    RUN_ATTR,
    SPEC_ATTR,
    STUDY_ID_ATTR,
    TrialRecord,
)
from sweep.spec.file import dumps, parse_spec, spec_to_dict
from sweep.spec.samplers import GRID_SAMPLERS, grid_key, grid_order
from sweep.spec.study import StudySpec
from sweep.stores.storage import StorageSpec, heartbeat_settings, not_yet_made, open_storage
from sweep.stores.urls import redact
from sweep.tracking.relay import RelayedTracker
from sweep.tracking.store import check_reachable
from sweep.tracking.tracker import Tracker
from sweep.tracking.views import runs_view

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
STALE_REASON = "worker stopped sending heartbeats"  # why a trial is failed when its heartbeats stopped


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
