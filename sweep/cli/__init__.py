"""The ``sweep`` command: flags, the wording of every error, exit codes."""

from sweep.cli.commands import main

__all__ = ["main"]
