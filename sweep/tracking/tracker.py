"""MLflow tracking of a study: one experiment, one parent run, one child run per trial.

Only ``MlflowClient`` is used (no fluent global state), so threads and processes log side by
side. Epoch metrics are buffered and sent with one ``log_batch`` per FLUSH_EVERY_S, and every
store call retries while SQLite reports the database locked (sweep.tracking.store), so several
local workers can share one ``mlflow.db``. The only module of the sweep that imports mlflow, on
first use: it costs over a second, which commands that do not track should not pay.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from core.data import Dataset
from core.history import CURVES, EpochRecord
from sweep.adapters import batch_limits
from sweep.errors import StoreError, UsageError
from sweep.schema import (
    BEST_TAG,
    CONFIG_ARTIFACT,
    DATA_CONTEXT,
    DATA_CONTEXT_TAG,
    EPOCH_ETA,
    EPOCH_SECONDS,
    KIND_TAG,
    ML_KIND,
    NOTE_TAG,
    PARENT_TAG,
    ROLE_PARENT,
    ROLE_TAG,
    ROLE_TRIAL,
    STATE_TAG,
    STATUS_FOR_STATE,
    STORAGE_TAG,
    STUDY_ID_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    VIEW_TAG,
    WEIGHTS_ARTIFACT,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
)
from sweep.stores.urls import redact, sqlite_file
from sweep.tracking.batches import MetricRow, batches, logged_strings, metric_rows, tag_strings
from sweep.tracking.store import (
    TRACKING,
    artifact_root_for,
    check_reachable,
    configure,
    exclusive,
    retry,
    write_ahead_log,
)
from sweep.tracking.views import logged_metric, run_label, view_path
from sweep.words import show_number

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput, Run

FLUSH_EVERY_S = 5.0  # longest a logged epoch waits before it is visible in the UI
DIGEST_BYTES = 4  # a dataset's digest: 8 hex digits, as MLflow's own datasets have


def study_views(tracking_uri: str) -> dict[str, str]:
    """Each study's runs-table address (view_path) in the store, by study name; none while an
    SQLite store is not made yet (nothing is created)."""
    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():
        return {}
    from mlflow.tracking import MlflowClient

    experiments = retry(retry(MlflowClient, tracking_uri).search_experiments)
    return {e.name: view_path(e.experiment_id) for e in experiments if VIEW_TAG in e.tags}


class Tracker:
    """MLflow tracking for one study: one experiment, one parent run, one child run per trial."""

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        configure()
        from mlflow.tracking import MlflowClient

        self.tracking_uri, self.study_name = tracking_uri, study_name
        check_reachable(tracking_uri)
        self._db = sqlite_file(tracking_uri)
        with exclusive(self._db):
            self.client = retry(MlflowClient, tracking_uri)  # (sweep.tracking.registry registers with it too)
            if self._db is not None:
                write_ahead_log(self._db)
            self.experiment_id = self._experiment_id()
        self._input: tuple[Dataset, DatasetInput] | None = None

    def _experiment_id(self) -> str:
        """The study's experiment, created if missing; safe against another process creating it too."""
        from mlflow.exceptions import MlflowException

        experiment = retry(self.client.get_experiment_by_name, self.study_name)
        if experiment is None:
            try:
                return retry(
                    self.client.create_experiment,
                    self.study_name,
                    artifact_location=artifact_root_for(self.tracking_uri),
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            experiment = retry(self.client.get_experiment_by_name, self.study_name)
        if experiment.lifecycle_stage != "active":
            raise UsageError(
                f"MLflow experiment {self.study_name!r} is deleted in "
                f"{redact(self.tracking_uri)}: restore it (mlflow experiments restore) or purge it (mlflow gc)"
            )
        return experiment.experiment_id

    def check_parent(self, run_id: str | None, study_id: str | None) -> None:
        """UsageError if the parent run found for the study belongs to another study of its name.

        A parent run is tagged with its Optuna study's random id: a study of the same name in
        another storage (or one made anew) must not log its trials under it. Read-only.
        """
        run = (self._run(run_id) if run_id else None) or self._find_parent()
        if run is not None and run.data.tags.get(STUDY_ID_TAG) != study_id:
            raise StoreError(
                TRACKING,
                redact(self.tracking_uri),
                f"MLflow run {run.info.run_id} of study "
                f"{self.study_name!r} belongs to another Optuna study of that name (another storage?); "
                f"give the study a new name or use its own storage",
            )

    def parent_run(
        self,
        run_id: str | None = None,
        study_id: str | None = None,
        *,
        description: str = "",
        config: str = "",
        storage: str = "",
        view: str | None = None,
        data: Dataset | None = None,
    ) -> str:
        """The study's parent run: ``run_id`` if it exists, else the experiment's, else a new one
        tagged with ``study_id`` (see check_parent).

        A new run gets the study file's text (``config``) as CONFIG_ARTIFACT, the storage as a tag
        and ``data`` as its dataset input. The experiment is marked as model training, described by
        ``description`` and given the runs-table ``view`` (see runs_view). The run is RUNNING on
        return, also when a finished sweep is resumed.
        """
        with exclusive(self._db):
            self.check_parent(run_id, study_id)
            self._describe_experiment(description, view)
            run = (self._run(run_id) if run_id else None) or self._find_parent()
            if run is None:
                tags = {ROLE_TAG: ROLE_PARENT, STUDY_TAG: self.study_name}
                if study_id:
                    tags[STUDY_ID_TAG] = study_id
                if description:  # (no note rather than "None")
                    tags[NOTE_TAG] = description
                if storage:
                    tags[STORAGE_TAG] = redact(storage)
                run = retry(
                    self.client.create_run,
                    self.experiment_id,
                    run_name=self.study_name,
                    tags=tag_strings(tags),
                )
                if config:
                    retry(self.client.log_text, run.info.run_id, redact(config), CONFIG_ARTIFACT)
                if data is not None:
                    retry(self.client.log_inputs, run.info.run_id, datasets=[self._dataset_input(data)])
            elif run.info.status != "RUNNING":
                retry(self.client.update_run, run.info.run_id, status="RUNNING")
        return run.info.run_id

    def _describe_experiment(self, description: str, view: str | None) -> None:
        """Experiment tags the UI reads: its kind (model training), description and runs-table view."""
        tags = {
            KIND_TAG: ML_KIND,
            **({NOTE_TAG: description} if description else {}),
            **({VIEW_TAG: view} if view else {}),
        }
        for key, value in tag_strings(tags).items():
            retry(self.client.set_experiment_tag, self.experiment_id, key, value)

    def _run(self, run_id: str) -> Run | None:
        """The run if it exists, is not deleted and belongs to this experiment."""
        from mlflow.exceptions import MlflowException

        try:
            run = retry(self.client.get_run, run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None
        ours = run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active"
        return run if ours else None

    def _find_parent(self) -> Run | None:
        """The experiment's oldest run tagged as a parent."""
        runs = retry(
            self.client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_PARENT}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def finish_parent(
        self,
        run_id: str,
        status: str = "FINISHED",
        metrics: dict | None = None,
        tags: dict | None = None,
        best: dict[str, str] | None = None,
    ) -> None:
        """End the parent run with an MLflow status, the study's summary metrics and tags; mark the
        trial runs in ``best`` (run id: "best" or "pareto") with BEST_TAG and unmark the others."""
        if best is not None:
            for run in self.trial_runs(run_id):
                mark = best.get(run.info.run_id)
                if mark is not None and run.data.tags.get(BEST_TAG) != mark:
                    retry(self.client.set_tag, run.info.run_id, BEST_TAG, mark)
                elif mark is None and BEST_TAG in run.data.tags:
                    retry(self.client.delete_tag, run.info.run_id, BEST_TAG)
        self._end(run_id, status, metric_rows(metrics or {}, 0), tags=tags)

    def start_trial(
        self,
        parent_run_id: str,
        trial_number: int,
        params: dict,
        tags: dict | None = None,
        *,
        searched: dict | None = None,
        data: Dataset | None = None,
    ) -> TrialRun:
        """Open the trial's child run under the parent, named by the ``searched`` values, with
        ``data`` as its dataset input; its params (None left out, floats short) go with the first
        batch of metrics, so a short trial costs four writes: create, inputs, one batch, terminate."""
        tags = {
            PARENT_TAG: parent_run_id,
            STUDY_TAG: self.study_name,
            TRIAL_TAG: trial_number,
            ROLE_TAG: ROLE_TRIAL,
            STATE_TAG: "RUNNING",
            **(tags or {}),
        }
        run = retry(
            self.client.create_run,
            self.experiment_id,
            run_name=run_label(trial_number, searched or {}),
            tags=tag_strings(tags),
        )
        if data is not None:
            retry(self.client.log_inputs, run.info.run_id, datasets=[self._dataset_input(data)])
        return TrialRun(self, run.info.run_id, params)

    def _dataset_input(self, data: Dataset) -> DatasetInput:
        """The data as an MLflow dataset input: name, digest of the arrays, split sizes (made once)."""
        from mlflow.entities import Dataset as LoggedDataset
        from mlflow.entities import DatasetInput, InputTag

        if self._input is None or self._input[0] is not data:
            digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
            for split in (data.train, data.validation, data.test):
                digest.update(split.X.data)
                digest.update(split.y.data)
            sizes = {name: getattr(data, name).n for name in ("train", "validation", "test")}
            logged = LoggedDataset(
                name=data.name,
                digest=digest.hexdigest(),
                source_type="local",
                source=json.dumps({"dataset": data.name}),
                profile=json.dumps(sizes),
                schema=json.dumps({"X": ["n", data.train.X.shape[1]], "y": ["n"]}),
            )
            self._input = (data, DatasetInput(logged, [InputTag(DATA_CONTEXT_TAG, DATA_CONTEXT)]))
        return self._input[1]

    def end_run(self, run_id: str, status: str, tags: dict | None = None) -> None:
        """End a run another process left open (a dead worker's trial, whose Optuna state is FAIL)
        with an MLflow status and tags."""
        self._end(run_id, status, tags={STATE_TAG: "FAIL", **(tags or {})})

    def trial_runs(self, parent_run_id: str) -> list[Run]:
        """All child runs of the parent, in trial order."""
        runs, token = [], None
        while True:
            page = retry(
                self.client.search_runs,
                [self.experiment_id],
                max_results=1000,
                page_token=token,
                filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            )
            runs += page
            token = page.token
            if not token:
                return sorted(runs, key=lambda run: int(run.data.tags.get(TRIAL_TAG, -1)))

    def log_artifacts(self, run_id: str, local_dir: str | os.PathLike) -> None:
        """Copy a directory's files into the run's artifacts."""
        retry(self.client.log_artifacts, run_id, os.fspath(local_dir))

    def log_weights(self, run_id: str, weights: bytes) -> None:
        """A trial's weights (the bytes of core.model.save_params' .npz) as WEIGHTS_ARTIFACT of its run."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, WEIGHTS_FILE)
            path.write_bytes(weights)
            retry(self.client.log_artifact, run_id, str(path), WEIGHTS_DIR)

    def download_weights(self, run_id: str, dst_dir: str | os.PathLike) -> Path | None:
        """The run's WEIGHTS_ARTIFACT copied into ``dst_dir``; None when the run has none."""
        if not any(f.path == WEIGHTS_ARTIFACT for f in retry(self.client.list_artifacts, run_id, WEIGHTS_DIR)):
            return None
        return Path(retry(self.client.download_artifacts, run_id, WEIGHTS_ARTIFACT, os.fspath(dst_dir)))

    def _end(
        self,
        run_id: str,
        status: str,
        metrics: Sequence[MetricRow] = (),
        tags: dict | None = None,
        params: dict | None = None,
    ) -> None:
        """Last metrics, params and tags in as few calls as the limits allow, then the terminal status."""
        self._log_batch(run_id, metrics, params=params, tags=tags)
        retry(self.client.set_terminated, run_id, status)

    def _log_batch(
        self, run_id: str, metrics: Sequence[MetricRow] = (), params: dict | None = None, tags: dict | None = None
    ) -> None:
        """Log metrics, params and tags with as few log_batch calls as MLflow's limits allow."""
        from mlflow.entities import Metric, Param, RunTag

        for m, p, t in batches(
            [Metric(*row) for row in metrics],
            [Param(*item) for item in logged_strings(params or {}, batch_limits().param_chars).items()],
            [RunTag(*item) for item in tag_strings(tags or {}).items()],
        ):
            retry(self.client.log_batch, run_id, metrics=m, params=p, tags=t, synchronous=True)


class TrialRun:
    """One trial's child run; epoch metrics are buffered and sent at most every FLUSH_EVERY_S."""

    def __init__(self, tracker: Tracker, run_id: str, params: dict | None = None) -> None:
        self.run_id = run_id
        self._tracker = tracker
        # sent with the first batch: short numbers, no None values
        self._params = None if params is None else {k: show_number(v) for k, v in params.items() if v is not None}
        self._pending: list[MetricRow] = []
        self._sent_at = time.monotonic()
        self._eta: float | None = None  # the η last logged (EPOCH_ETA)

    def log_epoch(self, record: EpochRecord) -> None:
        """Buffer the epoch's curves and its SGD time (step = epoch); flush if FLUSH_EVERY_S has passed."""
        values = {name: getattr(record, name) for name in CURVES}
        if record.eta != self._eta:  # (a constant η is one row, not one per epoch)
            values[EPOCH_ETA], self._eta = record.eta, record.eta
        self._pending += metric_rows({**values, EPOCH_SECONDS: record.seconds}, record.epoch)
        if time.monotonic() - self._sent_at >= FLUSH_EVERY_S:
            self._tracker._log_batch(self.run_id, self._pending, params=self._params)
            self._pending, self._params, self._sent_at = [], None, time.monotonic()

    def log_weights(self, weights: bytes) -> None:
        self._tracker.log_weights(self.run_id, weights)

    def finish(self, state: str, metrics: dict | None = None, tags: dict | None = None) -> None:
        """End the run: buffered epochs, one-value metrics (under SUMMARY: bar charts in a section of
        their own) and tags, the Optuna ``state`` as STATE_TAG, then the MLflow status for it."""
        if state not in STATUS_FOR_STATE:
            raise ValueError(f"not a finished Optuna trial state: {state!r} (one of {list(STATUS_FOR_STATE)})")
        final = self._pending + metric_rows({logged_metric(k): v for k, v in (metrics or {}).items()}, 0)
        self._tracker._end(
            self.run_id, STATUS_FOR_STATE[state], final, {**(tags or {}), STATE_TAG: state}, self._params
        )
        self._pending, self._params = [], None
