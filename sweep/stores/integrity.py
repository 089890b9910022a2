"""Store files checked before anything is written to them: of the kind expected, and not damaged.

A journal line torn by a killed writer, or garbage in it, makes Optuna append after it and
then fail on every later read; a truncated SQLite file fails deep inside SQLAlchemy. Both
are found here, by reading only, so that the command stops before it changes anything.
A sound file of another kind (MLflow's database given as the journal, a study file as the
tracking database) is not damage: it is refused as what it is, so that no one "mends" it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tomllib
from pathlib import Path

from sweep.errors import DamagedStore, StoreError
from sweep.spec.file import not_regular
from sweep.stores.urls import MLFLOW_TABLES, OPTUNA_TABLES, sqlite_tables

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database
HEAD_BYTES = 64 * 1024  # what is read of a file to tell what it holds
EXPECTED = {StoreError.STORAGE: "an Optuna storage", StoreError.TRACKING: "an MLflow tracking store"}


def _head(path: Path) -> tuple[bytes, int]:
    """The first HEAD_BYTES of a regular file, and its size (O_NONBLOCK: never waits on a FIFO
    that took the file's place)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return os.read(fd, HEAD_BYTES), os.fstat(fd).st_size
    finally:
        os.close(fd)


def _json_object(line: bytes) -> bool:
    """Whether a line (its newline included or not) is one JSON object, as each of a journal's is."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False


def _is_journal(head: bytes) -> bool:
    """Whether a file that starts so is an Optuna journal, damaged or not: one of its first whole
    lines is a JSON object, or its only line starts as one (torn by a killed writer, or long)."""
    *whole, last = head.split(b"\n")
    return any(map(_json_object, whole)) or (not whole and last.startswith(b'{"'))


def _text_kind(head: bytes, size: int) -> str:
    """What a file that is neither a database nor a journal holds: TOML, other text, or binary data."""
    try:
        text = (head if size <= len(head) else head[:-3]).decode()  # (less a character the head may cut)
    except UnicodeDecodeError:
        return "binary data"
    if "\x00" in text:
        return "binary data"
    if size <= len(head):
        try:
            tomllib.loads(text)
            return "a TOML file"
        except (tomllib.TOMLDecodeError, RecursionError):
            pass
    return "a text file"


def check_kind(path: Path, store: str, expected: str) -> None:
    """StoreError naming ``store`` if the file at ``path`` is not ``expected`` ("journal" or
    "sqlite"), saying what it is; nothing if it is (or may be) one, or there is no file. Reads
    at most HEAD_BYTES of it, never blocks."""
    try:
        problem = not_regular(os.stat(path).st_mode)
        if problem:
            raise StoreError(store, None, f"{path} is {problem}, not a store file")
        head, size = _head(path)
    except FileNotFoundError:
        return
    if not head:
        return  # an empty file is an empty journal, and an empty database to SQLite
    if head.startswith(SQLITE_HEADER):
        if expected == "sqlite":
            return
        tables, hint = sqlite_tables(path), ""
        if tables >= OPTUNA_TABLES:  # the right store, named the wrong way
            kind, hint = f"holding {EXPECTED[StoreError.STORAGE]}", f" (give it as sqlite:///{path})"
        elif tables >= MLFLOW_TABLES:
            kind = f"holding {EXPECTED[StoreError.TRACKING]}"
        else:
            kind = "of something else" if tables else "without tables"
        raise StoreError(store, None, f"{path} is an SQLite database {kind}, not an Optuna journal{hint}")
    if _is_journal(head):
        if expected == "journal":
            return
        raise StoreError(store, None, f"{path} is an Optuna journal, not an SQLite database holding {EXPECTED[store]}")
    wanted = "an Optuna journal" if expected == "journal" else f"an SQLite database holding {EXPECTED[store]}"
    raise StoreError(store, None, f"{path} is {_text_kind(head, size)}, not {wanted}")


def check_journal(path: Path) -> DamagedStore | None:
    """The damage in a journal file (every line one JSON object ending in a newline), or None;
    StoreError if the file is not a journal at all (a database, a study file, a FIFO).

    Streams the file once. ``readable`` says whether Optuna still reads the valid prefix:
    its reader skips a bad last line but raises on one that is followed by others.
    """
    check_kind(path, StoreError.STORAGE, "journal")
    first_bad, lines, torn = 0, 0, False
    try:
        with open(path, "rb") as fh:
            for lines, line in enumerate(fh, start=1):
                torn = not line.endswith(b"\n")
                if first_bad:
                    continue
                if torn or not _json_object(line):
                    first_bad = lines
    except FileNotFoundError:
        return None
    if not first_bad:
        return None
    problem = "cut short (no newline at its end: a torn write)" if torn and first_bad == lines else "not a JSON object"
    return DamagedStore(str(path), problem, line=first_bad, lines=lines, readable=first_bad == lines)


def check_sqlite(path: Path, store: str) -> None:
    """DamagedStore if an existing file is not a sound SQLite database (opened read-only,
    ``PRAGMA quick_check``: it reads every page, not the indexes' consistency); StoreError
    naming ``store`` if it is no SQLite database at all (a journal, a study file, a FIFO)."""
    check_kind(path, store, "sqlite")
    if not path.is_file():
        return
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if (exc.sqlite_errorname or "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return  # a writer holds it: not damage; the store's own retries wait for it
        raise DamagedStore(str(path), f"not a sound SQLite database ({exc})") from None
    if result is None or result[0] != "ok":
        raise DamagedStore(str(path), f"SQLite's quick_check found damage ({result[0] if result else 'no answer'})")
