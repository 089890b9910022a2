"""Where studies live: Optuna storages from a URL or path, and a per-study lock.

Default: a journal file (safe for several local processes; SQLite is not), its writes
serialised by an flock that dies with its holder. A
``sqlite:///`` or ``postgresql://`` URL selects Optuna's RDB storage, with heartbeats so
that a trial whose worker died on another machine is failed and retried. ``grpc://HOST:PORT``
is a ``sweep proxy`` (Optuna's gRPC storage proxy over such a database, see sweep.stores.proxy):
many workers share its cache and its few database connections.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from sweep.errors import StoreError, UsageError
from sweep.stores.integrity import check_journal, check_sqlite
from sweep.stores.urls import MLFLOW_TABLES, OPTUNA_TABLES, in_memory_sqlite, redact, sqlite_file, sqlite_tables

STORAGE = StoreError.STORAGE
HEARTBEAT_INTERVAL = 5  # seconds between heartbeats of a running trial (RDB storages)
GRACE_PERIOD = 20  # a trial silent this long is taken for dead
CONNECT_TIMEOUT = 10  # seconds to reach a database server
# A worker's database connections: one kept (the worker asks and tells one thing at a time), and
# for a moment a second (its heartbeat thread's), closed after use; the study lock takes one more.
WORKER_POOL = {"pool_size": 1, "max_overflow": 4}
HEARTBEAT_ENV, GRACE_ENV = "MLP_SWEEP_HEARTBEAT", "MLP_SWEEP_GRACE"  # override both, in whole seconds
RDB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql")
PROXY_SCHEME = "grpc"


@dataclass(frozen=True)
class StorageSpec:
    """A parsed storage location: an RDB URL or a journal file path."""

    url: str

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0] if "://" in self.url else "journal"

    @property
    def is_rdb(self) -> bool:
        """A database (or a proxy of one): heartbeats find dead workers on other machines."""
        return self.scheme != "journal"

    @property
    def is_proxy(self) -> bool:
        return self.scheme == PROXY_SCHEME

    @property
    def proxy_address(self) -> tuple[str, int]:
        """The host and port of a ``grpc://HOST:PORT`` URL."""
        host, _, port = self.url.split("://", 1)[1].rstrip("/").rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with a driver SQLAlchemy can load: plain postgresql:// means psycopg2 here."""
        if self.scheme == "postgresql":
            return "postgresql+psycopg2://" + self.url.split("://", 1)[1]
        return self.url

    @property
    def journal_path(self) -> Path:
        return Path(self.url)

    def __post_init__(self) -> None:
        if not self.url:
            raise StoreError(STORAGE, None, "empty storage URL")
        if self.scheme != "journal" and self.scheme not in (*RDB_SCHEMES, PROXY_SCHEME):
            raise StoreError(
                STORAGE,
                None,
                f"unknown storage scheme {self.scheme!r} in {redact(self.url)} "
                f"(use a journal file path, sqlite:///FILE, postgresql://... "
                f"or grpc://HOST:PORT)",
            )
        if self.is_proxy:
            rest = self.url.split("://", 1)[1].rstrip("/")
            host, _, port = rest.rpartition(":")
            if not host or "/" in rest or not port.isdigit() or not 0 < int(port) < 65536:
                raise StoreError(STORAGE, None, f"{self.url}: a proxy's URL is grpc://HOST:PORT")


class JournalFlock(JournalFileOpenLock):  # (Optuna's lock base class is private; only the interface is used)
    """The journal's write lock, as flock(2) on ``JOURNAL.write.lock``.

    The kernel drops it when the holding process dies, so a worker killed while it writes
    leaves no stale lock (Optuna's own file locks are broken only after a 30 s grace
    period: the next run would wait that long). Local file systems only, like the journal.
    """

    def __init__(self, journal_path: str) -> None:
        super().__init__(journal_path)
        self._path = f"{journal_path}.write.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def _seconds(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"${name}={text!r}: must be a whole number of seconds, at least 1")
    return value


def heartbeat_settings() -> tuple[int, int]:
    """Heartbeat interval and grace period (seconds) of RDB storages.

    ``$MLP_SWEEP_HEARTBEAT`` sets the interval (then the grace defaults to 4 intervals),
    ``$MLP_SWEEP_GRACE`` the grace period. Give every worker of a study the same values:
    the grace period is applied by whichever worker finds a silent trial.
    """
    interval = _seconds(HEARTBEAT_ENV, HEARTBEAT_INTERVAL)
    grace = _seconds(GRACE_ENV, 4 * interval if os.environ.get(HEARTBEAT_ENV, "").strip() else GRACE_PERIOD)
    if grace <= interval:
        raise UsageError(
            f"${GRACE_ENV}: the grace period ({grace} s) must be longer than the heartbeat "
            f"interval ({interval} s), or live workers would be taken for dead"
        )
    return interval, grace


def _local_file(spec: StorageSpec) -> Path | None:
    """The file of a journal or SQLite storage; None for servers and in-memory SQLite."""
    if not spec.is_rdb:
        return spec.journal_path
    return sqlite_file(spec.url)


def _refuse_damaged(spec: StorageSpec, local: Path, read_only: bool) -> None:
    """DamagedStore if the journal or SQLite file is damaged; a journal whose valid prefix
    Optuna still reads is let through for a read-only command.

    A journal is read under its write lock (if it has one yet), so that a line another
    worker is appending is not taken for a torn one.
    """
    if spec.is_rdb:
        check_sqlite(local, STORAGE)
        return
    with contextlib.ExitStack() as held:
        if Path(f"{local}.write.lock").exists():
            lock = JournalFlock(str(local))
            lock.acquire()
            held.callback(lock.release)
        damage = check_journal(local)
    if damage is not None and not (read_only and damage.readable):
        raise damage


def check_identity(spec: StorageSpec) -> None:
    """StoreError unless the storage is an Optuna storage, or a place where one can be made.

    Refused: a journal whose directory does not exist (a mistyped path would start a second
    study of the same name), in-memory SQLite (workers share the storage) and a database
    that holds tables but not Optuna's (MLflow's ``mlflow.db``, say). Read-only.
    """
    where = redact(spec.url)
    if not spec.is_rdb:
        if not spec.journal_path.parent.is_dir():
            raise StoreError(
                STORAGE,
                where,
                f"{spec.journal_path} does not exist, nor does its directory "
                f"{spec.journal_path.parent} (create the directory first)",
            )
        return
    if in_memory_sqlite(spec.url):
        raise StoreError(
            STORAGE, where, "an in-memory database is private to one process; give a file (sqlite:///FILE)"
        )
    local = _local_file(spec)
    tables = sqlite_tables(local) if local is not None and local.is_file() else _server_tables(spec)
    if tables and not tables >= OPTUNA_TABLES:
        what = "an MLflow tracking store" if tables >= MLFLOW_TABLES else "a database of something else"
        raise StoreError(STORAGE, where, f"the database is {what}, not an Optuna storage")


def not_yet_made(spec: StorageSpec) -> bool:
    """Whether the storage is a journal or SQLite file that does not exist: it holds no study,
    and opening it would create it."""
    local = _local_file(spec)
    return local is not None and not local.exists()


def _server_tables(spec: StorageSpec) -> set[str]:
    """The table names of a PostgreSQL storage; empty if it cannot be read (open_storage then says why)."""
    if not spec.scheme.startswith("postgresql"):
        return set()
    import sqlalchemy  # (only for servers: Optuna imports it only for them too)

    engine = sqlalchemy.create_engine(
        spec.sqlalchemy_url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT}
    )
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    except (sqlalchemy.exc.SQLAlchemyError, ImportError):  # unreachable or not allowed: open_storage says why
        return set()
    finally:
        engine.dispose()


def open_storage(
    spec: StorageSpec,
    heartbeat_callback: Callable | None = None,
    *,
    create: bool = True,
    read_only: bool = False,
    pool: dict | None = None,
) -> optuna.storages.BaseStorage:
    """Open the storage; UsageError if it cannot be reached, DamagedStore if its file is damaged.

    ``create=False`` is for commands that only use existing studies: a journal or SQLite
    file that does not exist is then an error, not created empty. ``read_only`` is for
    commands that never write to it (nor create it): they may read what a damaged journal
    still holds.
    ``pool``: SQLAlchemy's pool settings for a server (default WORKER_POOL; the proxy's are larger).
    """
    local = _local_file(spec)
    if (read_only or not create) and local is not None and not local.exists():
        raise StoreError(STORAGE, None, f"{local} does not exist (no study is stored there)")
    if local is not None:
        _refuse_damaged(spec, local, read_only)
    if spec.is_proxy:
        from sweep.stores.client import connect

        return connect(spec, CONNECT_TIMEOUT)
    if not spec.is_rdb:
        path = spec.journal_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFlock(str(path))))
        except OSError as exc:
            raise StoreError(STORAGE, None, f"cannot open journal {path}: {exc.strerror or exc}") from None
    import sqlalchemy

    interval, grace = heartbeat_settings()
    engine_kwargs: dict = {"pool_pre_ping": True}
    if spec.scheme.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}  # an unreachable host fails soon
        engine_kwargs.update(pool or WORKER_POOL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                spec.sqlalchemy_url,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=heartbeat_callback,
                engine_kwargs=engine_kwargs,
            )
    # SQLAlchemy's and the driver's errors, a missing driver, an Optuna schema of another version (RuntimeError):
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(STORAGE, None, f"cannot open {redact(spec.url)}: {redact(reason)}") from None


@contextlib.contextmanager
def study_lock(spec: StorageSpec, study_name: str) -> Iterator[None]:
    """Serialise "is the budget spent? if not, ask for a trial" across workers of a study.

    A lock file beside a journal or SQLite file for local workers; a PostgreSQL advisory
    lock, which holds across machines, for a server; the proxy's lock (which takes that
    advisory lock for its workers) for a ``sweep proxy``.
    """
    if spec.is_proxy:
        from sweep.stores.client import held

        with held(spec, study_name):
            yield
        return
    if spec.scheme.startswith("postgresql"):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(f"mlp-sweep:{study_name}".encode()).digest()[:8], "big", signed=True)
        engine = _engine(spec.sqlalchemy_url)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    if spec.scheme.startswith("mysql"):
        raise StoreError(STORAGE, None, "MySQL is not supported for sweeps yet; use PostgreSQL")
    base = _local_file(spec)  # (never None here: in-memory SQLite is refused by check_identity)
    lock_path = base.with_name(f"{base.name}.{hashlib.sha256(study_name.encode()).hexdigest()[:12]}.lock")
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_ENGINES: dict[str, object] = {}


def _engine(url: str):
    """One small SQLAlchemy engine per URL and process, for the advisory lock."""
    if url not in _ENGINES:
        import sqlalchemy

        _ENGINES[url] = sqlalchemy.create_engine(
            url, pool_size=1, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT}
        )
    return _ENGINES[url]
