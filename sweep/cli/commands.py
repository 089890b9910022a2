"""The ``sweep`` launcher: thin commands over the library, and ``main``, the one edge where what
they raise becomes a line and an exit code (sweep.cli.errors words it).

Only sweep.cli prints, reads flags or picks default paths.
"""

from __future__ import annotations

import gc
import os
import re
import sys

import click

from sweep.cli.errors import BAD_INPUT, DEBUG_ENV, debug_asked, error_line
from sweep.cli.serve import proxy, ui
from sweep.cli.study import best, list_studies, refine, report, run, worker
from sweep.errors import UsageError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help=f"Show the traceback of an unexpected error (also ${DEBUG_ENV}=1).")
def cli(debug) -> None:
    """Hyperparameter sweeps of a NumPy MLP on MNIST: Optuna studies, tracked in MLflow."""
    from sweep.run.runner import configure_libraries

    # reports are files: matplotlib (imported later, if at all) draws without a GUI
    os.environ.setdefault("MPLBACKEND", "Agg")
    configure_libraries()  # (``main`` reads --debug itself: it handles what the command raises)


for command in (run, worker, report, refine, best, list_studies, ui, proxy):
    cli.add_command(command)


CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # characters a terminal acts on (moves, erases, new lines)


def check_arguments(args: list[str]) -> None:
    """UsageError for an empty argument, or one with a control character: no path, name or URL
    holds one, and echoed in a message it would rewrite the screen or forge a line."""
    for number, arg in enumerate(args, start=1):
        if not arg:
            raise UsageError(f"argument {number} is empty")
        if CONTROL.search(arg):
            raise UsageError(f"argument {number} ({arg!r}) has a control character, which no path, name or URL holds")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: the one place where errors become messages and exit codes."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = debug_asked(args)
    try:
        check_arguments(args)
        code = cli.main(args=argv, prog_name="sweep", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        code = BAD_INPUT
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except (Exception, KeyboardInterrupt) as exc:
        line, code = error_line(exc, debug)
        click.echo(line, err=True)
    if argv is None:  # the process's own command line: it ends here
        # Everything is written and closed. The interpreter's teardown would walk every object
        # that mlflow, SQLAlchemy and pandas made (about a second); frozen, they are left alone.
        gc.freeze()
    sys.exit(code or 0)
