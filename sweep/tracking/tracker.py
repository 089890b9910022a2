"""MLflow tracking of a study: one experiment, one parent run, one child run per trial.

Only ``MlflowClient`` is used (no fluent global state), so threads and processes log side by
side. Epoch metrics are buffered and sent with one ``log_batch`` per FLUSH_EVERY_S, and every
store call retries while SQLite reports the database locked, so several local workers can
share one ``mlflow.db``. mlflow is imported on first use: it costs over a second, which
commands that do not track should not pay.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import http.client
import json
import logging
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote

from core.data import Dataset
from core.train import CURVES, EpochRecord
from sweep.adapters import MLFLOW_DB_LOGGER, batch_limits
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
    MODEL_NAME,
    MODEL_WEIGHTS_KEY,
    N_PIXELS,
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
    SUMMARY,
    TRIAL_TAG,
    VIEW_KEY,
    VIEW_TAG,
    WEIGHTS_ARTIFACT,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
)
from sweep.stores.integrity import check_kind, check_sqlite
from sweep.stores.urls import MLFLOW_TABLES, OPTUNA_TABLES, in_memory_sqlite, redact, sqlite_file, sqlite_tables
from sweep.stores.urls import scheme as url_scheme

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput, Run

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
SERVED = Path(__file__).with_name("served.py")  # the code of a study's logged model
TRACKING = StoreError.TRACKING
FLUSH_EVERY_S = 5.0  # longest a logged epoch waits before it is visible in the UI
RETRY_FOR_S = 30.0  # how long a call keeps retrying a locked database (each try may wait 20 s more in MLflow)

DIGEST_BYTES = 4  # a dataset's digest: 8 hex digits, as MLflow's own datasets have
TRACKING_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")
_LOCKED = ("database is locked", "database table is locked")

MetricRow = tuple[str, float, int, int]  # key, value, timestamp (ms), step
T = TypeVar("T")


def _is_locked(exc: BaseException | None) -> bool:
    """Whether SQLite's "database is locked" is anywhere in the exception's chain."""
    while exc is not None:
        if any(text in str(exc) for text in _LOCKED):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@functools.cache  # once per process: each call would add another log filter
def configure() -> None:
    """Set MLflow up for a sweep, once per process and before mlflow is first imported: no
    telemetry thread, no "View run ..." lines on stdout; migrations ("Creating initial MLflow
    database tables...") stay off the console, and so do the tracebacks MLflow logs for lock
    errors that _retry then recovers from (or re-raises). The launcher calls it as it starts;
    a Tracker calls it too, for library use."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    db_log = logging.getLogger(MLFLOW_DB_LOGGER)
    db_log.setLevel(logging.WARNING)
    db_log.addFilter(lambda record: not (record.exc_info and _is_locked(record.exc_info[1])))


def default_tracking_uri(root: Path) -> str:
    """The SQLite tracking URI of a store directory."""
    return f"sqlite:///{root}/mlflow.db"


def check_tracking_uri(tracking_uri: str) -> None:
    """UsageError unless the URI names an MLflow store of a known kind that several processes can share.

    Refused: unknown schemes, plain files, in-memory SQLite and an SQLite file that holds
    tables but not MLflow's (an Optuna storage, say). Nothing is created or changed.
    """
    where = redact(tracking_uri)
    scheme = url_scheme(tracking_uri)
    if scheme and scheme.split("+")[0] not in TRACKING_SCHEMES:
        raise StoreError(
            TRACKING,
            where,
            f"unknown scheme {scheme!r} (use sqlite:///FILE, postgresql://..., http(s)://SERVER or a directory)",
        )
    if in_memory_sqlite(tracking_uri):
        raise StoreError(
            TRACKING, where, "an in-memory database is private to one process; give a file (sqlite:///FILE)"
        )
    local = Path(unquote(tracking_uri.removeprefix("file://"))) if scheme in ("", "file") else None
    if local is not None and local.exists() and not local.is_dir():
        raise StoreError(
            TRACKING, where, f"{local} is a file, not a store directory (for SQLite use sqlite:///{local})"
        )
    db = sqlite_file(tracking_uri)
    if db is not None:
        check_kind(db, TRACKING, "sqlite")
    if db is not None and db.is_file():
        tables = sqlite_tables(db)
        if tables and not tables >= MLFLOW_TABLES:
            what = "an Optuna storage" if tables >= OPTUNA_TABLES else "a database of something else"
            raise StoreError(TRACKING, where, f"{db} is {what}, not an MLflow tracking store")


def artifact_root_for(tracking_uri: str) -> str | None:
    """``artifacts/`` beside a SQLite database, as a file URI; None lets a tracking server decide."""
    db = sqlite_file(tracking_uri)
    return (db.resolve().parent / "artifacts").as_uri() if db else None


def _strings(values: dict, limit: int) -> dict[str, str]:
    """Param or tag values as MLflow takes them: str(), passwords redacted, cut to ``limit`` characters."""
    texts = {key: redact(str(value)) for key, value in values.items()}
    return {key: text if len(text) <= limit else text[: limit - 1] + "…" for key, text in texts.items()}


def short(value: object) -> str:
    """A value as the UI shows it: floats to four significant digits (0.30000000000000004 is 0.3)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_label(number: int, searched: dict) -> str:
    """A trial run's name: its number and the values searched (``#0005 batch_size=20 eta=0.3``)."""
    return " ".join([f"#{number:04d}", *(f"{key}={short(value)}" for key, value in searched.items())])


def served_signature():
    """The served model's signature: rows of N_PIXELS numbers in, one digit (int64) per row out."""
    import numpy as np
    from mlflow.models import infer_signature

    return infer_signature(np.zeros((1, N_PIXELS), np.float32), np.zeros(1, np.int64))  # (as core.data loads them)


def timing_note(pack: int) -> str:
    """TIMING_TAG's value for a trial trained in a pack of ``pack`` trials (1: alone)."""
    return f"pack of {pack}: seconds are the pack's, shared equally" if pack > 1 else "own"


def logged_metric(name: str) -> str:
    """The MLflow key of a trial metric: curves as they are, one-value metrics under SUMMARY."""
    return name if name in CURVES else SUMMARY + name


def runs_view(searched: Sequence[str], objectives: Sequence[str]) -> str:
    """The runs-table view a study's experiment opens with (VIEW_TAG's value): the searched
    parameters, the objectives, the trial state and best-trial tags, the dataset; nested runs shown."""
    columns = (
        [f"params.`{name}`" for name in searched]
        + [f"metrics.`{logged_metric(m)}`" for m in objectives]
        + [f"tags.`{STATE_TAG}`", f"tags.`{BEST_TAG}`", "attributes.`Dataset`"]
    )
    return json.dumps(
        {
            "selectedColumns": columns,
            "columnOrder": columns,
            "runsHiddenMode": "SHOW_ALL",
            "columnWidths": {"attributes.`Run Name`": 300},
            "orderByKey": "attributes.start_time",
            "orderByAsc": True,
        }
    )


def view_path(experiment_id: str, run_id: str = "") -> str:
    """The UI's address (after host:port/) of an experiment's runs table, or of one run, in the
    model-training view (and the table in VIEW_TAG's view)."""
    if run_id:
        return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def study_views(tracking_uri: str) -> dict[str, str]:
    """Each study's runs-table address (view_path) in the store, by study name; none while an
    SQLite store is not made yet (nothing is created)."""
    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():
        return {}
    from mlflow.tracking import MlflowClient

    experiments = _retry(_retry(MlflowClient, tracking_uri).search_experiments)
    return {e.name: view_path(e.experiment_id) for e in experiments if VIEW_TAG in e.tags}


def _rows(values: dict[str, float | None], step: int) -> list[MetricRow]:
    """Metric rows stamped now; None values (curves not monitored) are left out."""
    now = int(time.time() * 1000)
    return [(key, float(value), now, step) for key, value in values.items() if value is not None]


def _batches(metrics: list, params: list, tags: list) -> Iterator[tuple[list, list, list]]:
    """Split one logical batch into log_batch calls within MLflow's per-call limits."""
    limits = batch_limits()
    while metrics or params or tags:
        p, params = params[: limits.params], params[limits.params :]
        t, tags = tags[: limits.tags], tags[limits.tags :]
        room = min(limits.metrics, limits.entities - len(p) - len(t))  # (1000 entities per call in all)
        m, metrics = metrics[:room], metrics[room:]
        yield m, p, t


def _retry(call: Callable[..., T], *args, **kwargs) -> T:
    """Run one store call, retrying with jittered backoff while the database is locked (RETRY_FOR_S)."""
    deadline, delay = time.monotonic() + RETRY_FOR_S, 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not _is_locked(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(2 * delay, 2.0)


def _write_ahead_log(db: Path) -> None:
    """Switch the SQLite store to write-ahead logging (it stays so; a no-op once done).

    Commits then append to a log instead of rewriting pages, so each write holds the
    database's lock far more briefly and concurrent workers wait less for one another.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")


@contextlib.contextmanager
def _exclusive(db: Path | None) -> Iterator[None]:
    """Hold a lock on the SQLite database's directory across processes (no-op for servers).

    MLflow's first-use migrations and our find-or-create steps are not safe when run at once.
    """
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_reachable(tracking_uri: str, timeout: float = 10.0) -> None:
    """UsageError at once when a tracking server or database does not answer, DamagedStore
    when its SQLite file is damaged (MLflow would fail on it after the study is stored).

    MLflow itself retries a refused connection for minutes before it gives up.
    """
    db = sqlite_file(tracking_uri)
    if db is not None:
        check_sqlite(db, TRACKING)
    scheme = url_scheme(tracking_uri)
    unreachable: tuple[type[BaseException], ...] = (OSError, ValueError, http.client.HTTPException)  # urllib, socket
    try:
        if scheme in ("http", "https"):
            import urllib.error
            import urllib.request

            try:
                urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout).close()
            except urllib.error.HTTPError:
                pass  # it answered (perhaps asking for credentials): reachable
        elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
            import sqlalchemy

            unreachable += (sqlalchemy.exc.SQLAlchemyError, ImportError)  # (ImportError: no driver installed)
            args = {"connect_timeout": int(timeout)} if scheme.startswith("postgresql") else {}
            engine = sqlalchemy.create_engine(tracking_uri, poolclass=sqlalchemy.pool.NullPool, connect_args=args)
            try:
                engine.connect().close()
            finally:
                engine.dispose()
    except unreachable as exc:  # all mean "cannot use it"
        reason = str(getattr(exc, "reason", None) or exc).strip().splitlines()
        raise StoreError(
            TRACKING,
            None,
            f"cannot reach {redact(tracking_uri)}: {redact(reason[0]) if reason else type(exc).__name__}",
        ) from None


class Tracker:
    """MLflow tracking for one study: one experiment, one parent run, one child run per trial."""

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        configure()
        from mlflow.tracking import MlflowClient

        self.tracking_uri, self.study_name = tracking_uri, study_name
        check_reachable(tracking_uri)
        self._db = sqlite_file(tracking_uri)
        with _exclusive(self._db):
            self._client = _retry(MlflowClient, tracking_uri)
            if self._db is not None:
                _write_ahead_log(self._db)
            self.experiment_id = self._experiment_id()
        self._input: tuple[Dataset, DatasetInput] | None = None

    def _experiment_id(self) -> str:
        """The study's experiment, created if missing; safe against another process creating it too."""
        from mlflow.exceptions import MlflowException

        experiment = _retry(self._client.get_experiment_by_name, self.study_name)
        if experiment is None:
            try:
                return _retry(
                    self._client.create_experiment,
                    self.study_name,
                    artifact_location=artifact_root_for(self.tracking_uri),
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            experiment = _retry(self._client.get_experiment_by_name, self.study_name)
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
        with _exclusive(self._db):
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
                run = _retry(
                    self._client.create_run,
                    self.experiment_id,
                    run_name=self.study_name,
                    tags=_strings(tags, batch_limits().tag_chars),
                )
                if config:
                    _retry(self._client.log_text, run.info.run_id, redact(config), CONFIG_ARTIFACT)
                if data is not None:
                    _retry(self._client.log_inputs, run.info.run_id, datasets=[self._dataset_input(data)])
            elif run.info.status != "RUNNING":
                _retry(self._client.update_run, run.info.run_id, status="RUNNING")
        return run.info.run_id

    def _describe_experiment(self, description: str, view: str | None) -> None:
        """Experiment tags the UI reads: its kind (model training), description and runs-table view."""
        tags = {
            KIND_TAG: ML_KIND,
            **({NOTE_TAG: description} if description else {}),
            **({VIEW_TAG: view} if view else {}),
        }
        for key, value in _strings(tags, batch_limits().tag_chars).items():
            _retry(self._client.set_experiment_tag, self.experiment_id, key, value)

    def _run(self, run_id: str) -> Run | None:
        """The run if it exists, is not deleted and belongs to this experiment."""
        from mlflow.exceptions import MlflowException

        try:
            run = _retry(self._client.get_run, run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None
        ours = run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active"
        return run if ours else None

    def _find_parent(self) -> Run | None:
        """The experiment's oldest run tagged as a parent."""
        runs = _retry(
            self._client.search_runs,
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
                    _retry(self._client.set_tag, run.info.run_id, BEST_TAG, mark)
                elif mark is None and BEST_TAG in run.data.tags:
                    _retry(self._client.delete_tag, run.info.run_id, BEST_TAG)
        self._end(run_id, status, _rows(metrics or {}, 0), tags=tags)

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
        run = _retry(
            self._client.create_run,
            self.experiment_id,
            run_name=run_label(trial_number, searched or {}),
            tags=_strings(tags, batch_limits().tag_chars),
        )
        if data is not None:
            _retry(self._client.log_inputs, run.info.run_id, datasets=[self._dataset_input(data)])
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
            page = _retry(
                self._client.search_runs,
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
        _retry(self._client.log_artifacts, run_id, os.fspath(local_dir))

    def log_weights(self, run_id: str, weights: bytes) -> None:
        """A trial's weights (the bytes of core.model.save_params' .npz) as WEIGHTS_ARTIFACT of its run."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, WEIGHTS_FILE)
            path.write_bytes(weights)
            _retry(self._client.log_artifact, run_id, str(path), WEIGHTS_DIR)

    def download_weights(self, run_id: str, dst_dir: str | os.PathLike) -> Path | None:
        """The run's WEIGHTS_ARTIFACT copied into ``dst_dir``; None when the run has none."""
        if not any(f.path == WEIGHTS_ARTIFACT for f in _retry(self._client.list_artifacts, run_id, WEIGHTS_DIR)):
            return None
        return Path(_retry(self._client.download_artifacts, run_id, WEIGHTS_ARTIFACT, os.fspath(dst_dir)))

    def register_best(self, run_id: str, tags: dict) -> str | None:
        """Log the weights of the trial run ``run_id`` as a pyfunc model (sweep.tracking.served) and register it
        under the study's name; the new version, or None when that run is already the latest
        version or has no weights.

        ``mlflow.pyfunc.log_model`` works on MLflow's global state (tracking URI, experiment,
        active run): these are the client calls it makes, on this study's experiment and run.
        """
        import mlflow
        import numpy as np
        from mlflow.entities import LoggedModelOutput
        from mlflow.exceptions import MlflowException

        name = self.study_name
        latest = _retry(
            self._client.search_model_versions, f"name = '{name}'", max_results=1, order_by=["version_number DESC"]
        )  # (a study's name has no quotes)
        if latest and latest[0].run_id == run_id:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            weights = self.download_weights(run_id, tmp)
            if weights is None:
                return None
            local = Path(tmp, MODEL_NAME)
            with warnings.catch_warnings():  # (the advice to give an input example: the signature says it all)
                warnings.simplefilter("ignore", UserWarning)
                mlflow.pyfunc.save_model(  # (models from code: no pickle)
                    local,
                    python_model=str(SERVED),
                    artifacts={MODEL_WEIGHTS_KEY: str(weights)},
                    code_paths=[str(SERVED.parents[2] / "core"), str(SERVED.parents[1])],  # (core/ and sweep/)
                    signature=served_signature(),
                    pip_requirements=[f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"],
                )
            strings = _strings(tags, batch_limits().tag_chars)
            model = _retry(self._client.create_logged_model, self.experiment_id, MODEL_NAME, run_id, strings)
            _retry(self._client.log_model_artifacts, model.model_id, str(local))
        _retry(self._client.finalize_logged_model, model.model_id, "READY")
        if not latest:
            try:
                _retry(
                    self._client.create_registered_model,
                    name,
                    tags={STUDY_TAG: name},
                    description=f"The best network of study {name}, chosen by its objective",
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        _retry(self._client.log_outputs, run_id, [LoggedModelOutput(model.model_id, step=0)])
        # source: the model's artifacts, not "models:/ID" (the registry would look that up in the
        # default tracking store, not this one)
        version = _retry(
            self._client.create_model_version,
            name,
            model.artifact_location,
            run_id,
            tags=strings,
            model_id=model.model_id,
        )
        return version.version

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
        _retry(self._client.set_terminated, run_id, status)

    def _log_batch(
        self, run_id: str, metrics: Sequence[MetricRow] = (), params: dict | None = None, tags: dict | None = None
    ) -> None:
        """Log metrics, params and tags with as few log_batch calls as MLflow's limits allow."""
        from mlflow.entities import Metric, Param, RunTag

        for m, p, t in _batches(
            [Metric(*row) for row in metrics],
            [Param(*item) for item in _strings(params or {}, batch_limits().param_chars).items()],
            [RunTag(*item) for item in _strings(tags or {}, batch_limits().tag_chars).items()],
        ):
            _retry(self._client.log_batch, run_id, metrics=m, params=p, tags=t, synchronous=True)


class TrialRun:
    """One trial's child run; epoch metrics are buffered and sent at most every FLUSH_EVERY_S."""

    def __init__(self, tracker: Tracker, run_id: str, params: dict | None = None) -> None:
        self.run_id = run_id
        self._tracker = tracker
        # sent with the first batch: short numbers, no None values
        self._params = None if params is None else {k: short(v) for k, v in params.items() if v is not None}
        self._pending: list[MetricRow] = []
        self._sent_at = time.monotonic()
        self._eta: float | None = None  # the η last logged (EPOCH_ETA)

    def log_epoch(self, record: EpochRecord) -> None:
        """Buffer the epoch's curves and its SGD time (step = epoch); flush if FLUSH_EVERY_S has passed."""
        values = {name: getattr(record, name) for name in CURVES}
        if record.eta != self._eta:  # (a constant η is one row, not one per epoch)
            values[EPOCH_ETA], self._eta = record.eta, record.eta
        self._pending += _rows({**values, EPOCH_SECONDS: record.seconds}, record.epoch)
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
        final = self._pending + _rows({logged_metric(k): v for k, v in (metrics or {}).items()}, 0)
        self._tracker._end(
            self.run_id, STATUS_FOR_STATE[state], final, {**(tags or {}), STATE_TAG: state}, self._params
        )
        self._pending, self._params = [], None
