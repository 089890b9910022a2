"""The MLflow tracking store as a sweep uses it, without importing mlflow: its URI checked, MLflow
set up once per process, and SQLite's lock shared by several processes (retries, write-ahead
logging, a lock on the database's directory for the steps that must not run at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.client
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from sweep.adapters import MLFLOW_DB_LOGGER
from sweep.errors import StoreError
from sweep.stores.integrity import check_kind, check_sqlite
from sweep.stores.urls import MLFLOW_TABLES, OPTUNA_TABLES, in_memory_sqlite, redact, sqlite_file, sqlite_tables
from sweep.stores.urls import scheme as url_scheme

TRACKING = StoreError.TRACKING
RETRY_FOR_S = 30.0  # how long a call keeps retrying a locked database (each try may wait 20 s more in MLflow)
TRACKING_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")
_LOCKED = ("database is locked", "database table is locked")

T = TypeVar("T")


def is_locked(exc: BaseException | None) -> bool:
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
    errors that retry then recovers from (or re-raises). The launcher calls it as it starts;
    a Tracker calls it too, for library use."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    db_log = logging.getLogger(MLFLOW_DB_LOGGER)
    db_log.setLevel(logging.WARNING)
    db_log.addFilter(lambda record: not (record.exc_info and is_locked(record.exc_info[1])))


def check_tracking_uri(tracking_uri: str) -> None:
    """StoreError unless the URI names an MLflow store of a known kind that several processes can share.

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


def check_reachable(tracking_uri: str, timeout: float = 10.0) -> None:
    """StoreError at once when a tracking server or database does not answer, DamagedStore
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


def artifact_root_for(tracking_uri: str) -> str | None:
    """``artifacts/`` beside a SQLite database, as a file URI; None lets a tracking server decide."""
    db = sqlite_file(tracking_uri)
    return (db.resolve().parent / "artifacts").as_uri() if db else None


def retry(call: Callable[..., T], *args, **kwargs) -> T:
    """Run one store call, retrying with jittered backoff while the database is locked (RETRY_FOR_S)."""
    deadline, delay = time.monotonic() + RETRY_FOR_S, 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not is_locked(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(2 * delay, 2.0)


def write_ahead_log(db: Path) -> None:
    """Switch the SQLite store to write-ahead logging (it stays so; a no-op once done).

    Commits then append to a log instead of rewriting pages, so each write holds the
    database's lock far more briefly and concurrent workers wait less for one another.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")


@contextlib.contextmanager
def exclusive(db: Path | None) -> Iterator[None]:
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
