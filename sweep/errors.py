"""Typed errors carrying the facts; ``sweep.cli`` alone words them for a person and picks exit codes.

UsageError and its subclasses are bad input (exit code 2); the others are runs that could
not finish (exit code 1).
"""

from __future__ import annotations

import os


class UsageError(Exception):
    """Bad input from a person: a study file, a flag, a name, a path. Exit code 2."""


class InvalidValue(ValueError):
    """A value a spec dataclass rejects; ``key`` is the dotted key relative to it (None: the value itself)."""

    def __init__(self, key: str | None, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key, self.problem = key, problem


class StoreError(UsageError):
    """A store that cannot be used: ``store`` is STORAGE (Optuna's) or TRACKING (MLflow's), ``url``
    the store as given, passwords redacted (None: the message does not repeat it), ``problem`` what is wrong."""

    STORAGE, TRACKING = "storage", "tracking"

    def __init__(self, store: str, url: str | None, problem: str) -> None:
        self.store, self.url, self.problem = store, url, problem
        super().__init__(f"{store} {url}: {problem}" if url else f"{store}: {problem}")


class OptionError(UsageError):
    """A setting that does not fit (a report's heat map, an export path): ``option`` (its name), the
    ``value`` given and the problem; the CLI words it as the flag."""

    def __init__(self, option: str, value: str, problem: str) -> None:
        self.option, self.value, self.problem = option, value, problem
        super().__init__(f"{option} {value}: {problem}")


class FileExists(UsageError):
    """A file that is never written over: ``path``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path} already exists")


class SpecError(UsageError):
    """A study file that cannot be used; the message names the file, the key and the problem."""

    def __init__(self, source: str | os.PathLike, key: str | None, problem: str) -> None:
        self.source, self.key, self.problem = os.fspath(source), key, problem
        super().__init__(f"{self.source}: {key}: {problem}" if key else f"{self.source}: {problem}")


class Stopped(Exception):
    """A run stopped when asked to (Ctrl-C, SIGTERM) at a safe point: finished trials are kept,
    interrupted ones queued again."""


class TrialsKeepFailing(Exception):
    """A worker stopped because its last ``count`` trials of study ``study`` all failed (see
    limits.MAX_FAILED_IN_A_ROW); ``reason`` is why the last one failed."""

    def __init__(self, study: str, count: int, reason: str) -> None:
        self.study, self.count, self.reason = study, count, reason
        super().__init__(f"study {study!r}: the last {count} trials failed (the last: {reason})")


class WorkersDied(Exception):
    """Local worker processes of study ``study`` were killed (``signals``: each one's signal
    number) and the others did not finish its budget: ``done`` of ``budget`` trials ended."""

    def __init__(self, study: str, signals: list[int], done: int, budget: int) -> None:
        self.study, self.signals, self.done, self.budget = study, signals, done, budget
        super().__init__(
            f"study {study!r}: {len(signals)} worker processes were killed; {done} of {budget} trials ended"
        )


class DamagedStore(UsageError):
    """The store file ``path`` is damaged: ``problem``; for a journal, from ``line`` (1-based)
    of its ``lines``, and whether Optuna can still read the lines before (``readable``)."""

    def __init__(
        self, path: str, problem: str, *, line: int | None = None, lines: int | None = None, readable: bool = False
    ) -> None:
        self.path, self.problem, self.line, self.lines, self.readable = path, problem, line, lines, readable
        super().__init__(f"{path}: damaged: {problem}" + (f" at line {line} of {lines}" if line else ""))
