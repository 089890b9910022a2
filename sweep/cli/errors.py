"""The wording of every error for a person, one line each, and its exit code.

Exit codes: 0 ok, 2 bad input (one line, no traceback), 1 unexpected, trials that keep failing or
workers killed before the budget was spent, 130 interrupted.
"""

from __future__ import annotations

import itertools
import os
import traceback
from functools import singledispatch

import click

from sweep.errors import (
    DamagedStore,
    FileExists,
    OptionError,
    Stopped,
    StoreError,
    TrialsKeepFailing,
    UsageError,
    WorkersDied,
)
from sweep.words import plural

DEBUG_ENV = "MLP_SWEEP_DEBUG"  # =1: like --debug
STORE_FLAGS = {StoreError.STORAGE: "--storage", StoreError.TRACKING: "--tracking-uri"}  # the flag naming each store
BAD_INPUT, FAILED, INTERRUPTED = 2, 1, 130  # exit codes


def debug_asked(args: list[str]) -> bool:
    """Whether --debug (an option of ``sweep`` itself, before the command) or $MLP_SWEEP_DEBUG=1 asks for tracebacks."""
    leading = list(itertools.takewhile(lambda arg: arg.startswith("-"), args))
    return "--debug" in leading or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


@singledispatch
def error_line(exc: BaseException, debug: bool) -> tuple[str, int]:
    """The line that tells a person what went wrong, and the exit code; the most specific wording wins.

    An error with no wording of its own is unexpected: its traceback first if ``debug``.
    """
    if debug:
        traceback.print_exc()
    where = "the traceback above says where" if debug else f"--debug or {DEBUG_ENV}=1 shows where"
    first = str(exc).strip().splitlines()
    return (
        f"sweep: unexpected error: {type(exc).__name__}{': ' + first[0] if first else ''} ({where}); please report it",
        FAILED,
    )


@error_line.register
def _(exc: click.UsageError, debug: bool) -> tuple[str, int]:
    command = exc.ctx.command_path if exc.ctx else "sweep"
    return f"{command}: error: {exc.format_message()}", BAD_INPUT


@error_line.register
def _(exc: UsageError, debug: bool) -> tuple[str, int]:
    return f"sweep: error: {exc}", BAD_INPUT


@error_line.register
def _(exc: DamagedStore, debug: bool) -> tuple[str, int]:
    return f"sweep: error: {damaged_store_message(exc)}", BAD_INPUT


@error_line.register
def _(exc: StoreError, debug: bool) -> tuple[str, int]:
    where = f"{STORE_FLAGS[exc.store]} {exc.url}" if exc.url else STORE_FLAGS[exc.store]
    return f"sweep: error: {where}: {exc.problem}", BAD_INPUT


@error_line.register
def _(exc: OptionError, debug: bool) -> tuple[str, int]:
    return f"sweep: error: --{exc.option} {exc.value}: {exc.problem}", BAD_INPUT


@error_line.register
def _(exc: FileExists, debug: bool) -> tuple[str, int]:  # (refine's study file)
    return f"sweep: error: {exc.path} already exists; choose another --out or remove it", BAD_INPUT


@error_line.register
def _(exc: TrialsKeepFailing, debug: bool) -> tuple[str, int]:
    return (
        f"sweep: error: stopped study {exc.study}: its last {exc.count} trials failed, the last with "
        f"{exc.reason.splitlines()[0] if exc.reason else 'no reason'}; "
        f"`sweep report {exc.study}` lists every trial's reason",
        FAILED,
    )


@error_line.register
def _(exc: WorkersDied, debug: bool) -> tuple[str, int]:
    import signal

    how = ", ".join(sorted({signal.Signals(n).name for n in exc.signals}))
    return (
        f"sweep: error: study {exc.study}: {plural(len(exc.signals), 'worker process', 'worker processes')} "
        f"killed ({how}) before its budget was spent ({exc.done} of {exc.budget} trials ended); "
        "run the same command again to continue",
        FAILED,
    )


@error_line.register(Stopped)
@error_line.register(KeyboardInterrupt)
@error_line.register(click.exceptions.Abort)
def _(exc: BaseException, debug: bool) -> tuple[str, int]:
    return "interrupted: finished trials are kept; run the same command again to continue", INTERRUPTED


def damaged_store_message(exc: DamagedStore) -> str:
    """What is wrong with a damaged store file and how to recover it (it is never repaired here)."""
    if exc.line is None:
        return (
            f"{exc.path} is damaged: {exc.problem}; nothing was written to it; restore it from a backup "
            "or move it aside to start afresh"
        )
    tail = exc.lines - exc.line + 1
    if exc.readable:
        how = (
            f"copy it aside and remove its last {plural(tail, 'line')}; until then `sweep list`, "
            "`report` and `refine` still read the lines before it"
        )
    else:
        how = (
            f"copy it aside and remove or mend line {exc.line} and any later line that is not JSON "
            "(Optuna cannot read past it, so no command can use it until then)"
        )
    return f"{exc.path} is damaged: line {exc.line} of {exc.lines} is {exc.problem}; nothing was written to it; {how}"
