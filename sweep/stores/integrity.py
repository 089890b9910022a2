"""Damaged store files, found before anything is written to them.

A journal line torn by a killed writer, or garbage in it, makes Optuna append after it and
then fail on every later read; a truncated SQLite file fails deep inside SQLAlchemy. Both
are found here, by reading only, so that the command stops before it changes anything.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from sweep.errors import DamagedStore


def check_journal(path: Path) -> DamagedStore | None:
    """The damage in a journal file (every line one JSON object ending in a newline), or None.

    Streams the file once. ``readable`` says whether Optuna still reads the valid prefix:
    its reader skips a bad last line but raises on one that is followed by others.
    """
    first_bad, lines, torn = 0, 0, False
    try:
        with open(path, "rb") as fh:
            for lines, line in enumerate(fh, start=1):
                torn = not line.endswith(b"\n")
                if first_bad:
                    continue
                try:
                    good = not torn and isinstance(json.loads(line), dict)
                except ValueError:  # JSONDecodeError and UnicodeDecodeError
                    good = False
                if not good:
                    first_bad = lines
    except FileNotFoundError:
        return None
    if not first_bad:
        return None
    problem = "cut short (no newline at its end: a torn write)" if torn and first_bad == lines else "not a JSON object"
    return DamagedStore(str(path), problem, line=first_bad, lines=lines, readable=first_bad == lines)


def check_sqlite(path: Path) -> None:
    """DamagedStore if an existing file is not a sound SQLite database (opened read-only,
    ``PRAGMA quick_check``: it reads every page, not the indexes' consistency)."""
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
