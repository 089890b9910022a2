"""The internals sweep/adapters.py relies on are still where it says, in the installed Optuna and MLflow.

Each test fails loudly after an upgrade that moves one, instead of the sweep going quietly wrong.
"""

import importlib
import logging
import sqlite3

import optuna
import pytest

from sweep import adapters
from sweep.tracking import store as tracking


def test_an_enqueued_trial_keeps_its_parameters_in_the_fixed_params_system_attr():
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.25, "n": 3})
    trial = study.ask()
    assert study.get_trials(deepcopy=False)[0].system_attrs[adapters.FIXED_PARAMS_ATTR] == {"x": 0.25, "n": 3}
    assert trial.suggest_float("x", 0, 1) == 0.25  # (what Optuna itself reads it for)


def test_mlflow_logs_lock_retries_to_the_filtered_logger():
    module = importlib.import_module(adapters.MLFLOW_DB_LOGGER)
    assert logging.getLogger(adapters.MLFLOW_DB_LOGGER) is module._logger
    tracking.configure()
    logger = logging.getLogger(adapters.MLFLOW_DB_LOGGER)
    assert not logger.filter(logged(logger, locked_error()))  # a lock error (that retries recover from): dropped
    assert logger.filter(logged(logger, sqlite3.OperationalError("no such table: runs")))  # other errors: kept
    assert logger.filter(logged(logger, None))


def locked_error() -> BaseException:
    """SQLAlchemy's error over SQLite's "database is locked", as MLflow logs it (the cause chained)."""
    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as exc:
            raise RuntimeError("(sqlite3.OperationalError) while committing") from exc
    except RuntimeError as exc:
        return exc


def logged(logger: logging.Logger, exc: BaseException | None) -> logging.LogRecord:
    """The record of logging an error with ``exc``'s traceback (none if None), as MLflow does."""
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "SQLAlchemy database error", (), exc_info)


def test_batch_limits_are_mlflows_own():
    limits = adapters.batch_limits()
    validation = importlib.import_module(adapters.MLFLOW_LIMITS_MODULE)
    assert (limits.metrics, limits.params, limits.entities, limits.param_chars, limits.tag_chars) == (
        validation.MAX_METRICS_PER_BATCH,
        validation.MAX_PARAMS_TAGS_PER_BATCH,
        validation.MAX_ENTITIES_PER_BATCH,
        validation.MAX_PARAM_VAL_LENGTH,
        validation.MAX_TAG_VAL_LENGTH,
    )
    assert 0 < limits.params <= limits.entities and limits.metrics <= limits.entities


def test_the_grpc_proxy_servicer_and_its_registration_are_where_run_grpc_proxy_server_finds_them():
    for module, name in (adapters.GRPC_SERVICER, adapters.GRPC_REGISTER):
        pytest.importorskip("grpc")
        assert callable(getattr(importlib.import_module(module), name))
    rdb = optuna.storages.RDBStorage("sqlite:///:memory:")
    assert isinstance(adapters.cached_storage(rdb), optuna.storages._CachedStorage)
