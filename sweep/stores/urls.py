"""Store URLs and files, read without touching them: SQLite paths, table names, passwords hidden.

Shared by the Optuna side (``sweep.stores.storage``) and the MLflow side (``sweep.tracking.tracker``), which
both take ``sqlite:///FILE`` URLs and must tell each other's databases apart.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path
from urllib.parse import unquote

OPTUNA_TABLES, MLFLOW_TABLES = {"studies", "version_info"}, {"experiments", "runs"}  # what tells the two apart


def redact(url: str) -> str:
    """The text with the password of any URL in it (user:PASSWORD@ or ?password=) replaced by ***."""
    url = re.sub(r"([A-Za-z][\w+.-]*://[^:/@\s]*:)\S*@", r"\1***@", url)  # to the last @: raw @ in a password
    return re.sub(r"([?&]passw(?:or)?d=)[^&#\s]*", r"\1***", url, flags=re.IGNORECASE)


def scheme(url: str) -> str:
    """The URL's scheme in lower case ("postgresql+psycopg2"), or "" for a plain path."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///FILE[?query]`` URL (percent-escapes decoded, as SQLAlchemy
    does); None for in-memory databases and other schemes."""
    if not url.startswith("sqlite:///"):
        return None
    path = unquote(url.removeprefix("sqlite:///").split("?", 1)[0])
    return Path(path) if path not in ("", ":memory:") else None


def in_memory_sqlite(url: str) -> bool:
    """Whether an SQLite URL names a private in-memory database (``sqlite://``, ``sqlite:///:memory:``)."""
    if not url.lower().startswith("sqlite:"):
        return False
    path = url.split("://", 1)[-1].split("?", 1)[0]
    return path in ("", "/", "/:memory:") or "mode=memory" in url


def sqlite_tables(db: Path) -> set[str]:
    """The table names of an existing SQLite file (empty if it is not one), read without touching it.

    ``immutable=1``: not even the ``-shm`` index of a WAL database is rewritten (as ``mode=ro``
    would). Tables still only in an uncheckpointed ``-wal`` are missed; both MLflow and Optuna
    make theirs before any write-ahead logging starts.
    """
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro&immutable=1", uri=True)) as conn:
            return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return set()
