"""Heartbeats: how a worker's running trials show they are alive, and how other workers tell they are not."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial

from sweep.run.study import OpenStudy
from sweep.schema import BEAT_ATTR, WORKER_ATTR
from sweep.stores.storage import heartbeat_settings


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
