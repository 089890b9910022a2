"""Options shared by several commands, defined once; the default paths, picked here alone."""

from __future__ import annotations

import math
import os
from pathlib import Path

import click

from sweep import limits

DEFAULT_STORE_DIR = Path("mlruns")
REPORT_DIR, STUDY_DIR = Path("reports"), Path("studies")


def default_storage() -> str:
    return str((DEFAULT_STORE_DIR / "optuna.journal").resolve())


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri_in(DEFAULT_STORE_DIR.resolve())


def tracking_uri_in(root: Path) -> str:
    """The SQLite tracking store of a store directory, as a URI (the default's in DEFAULT_STORE_DIR)."""
    return f"sqlite:///{root}/mlflow.db"


def storage_from_flag(storage: str | None):
    """The study storage --storage names (checked to be the store it was), or the default journal."""
    from sweep.stores.storage import StorageSpec, check_identity

    spec = StorageSpec(storage or default_storage())
    if storage is not None:  # (the default journal's directory is made when the first study is)
        check_identity(spec)
    return spec


def stores_from_flags(storage: str | None, tracking_uri: str | None, no_tracking: bool = False):
    """The stores --storage, --tracking-uri and --no-tracking name, each checked before use."""
    from sweep.run.study import Stores
    from sweep.tracking.store import check_tracking_uri

    spec = storage_from_flag(storage)
    uri = None if no_tracking else tracking_uri or default_tracking_uri()
    if uri is not None:
        check_tracking_uri(uri)
    return Stores(spec, uri)


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange without nan and inf (which a plain FloatRange lets through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


TRIALS = click.IntRange(1, limits.MAX_TRIALS)
WORKERS = click.IntRange(1, limits.max_workers())
SECONDS = FiniteFloatRange(min=0, min_open=True)
FRACTION = FiniteFloatRange(0, 1, min_open=True)
PORT = click.IntRange(1, 65535)

storage_option = click.option(
    "--storage",
    metavar="URL",
    help="Optuna storage: a journal file path, sqlite:///FILE, postgresql://... or a "
    "`sweep proxy` at grpc://HOST:PORT [default: mlruns/optuna.journal]",
)
tracking_option = click.option(
    "--tracking-uri",
    metavar="URI",
    help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db]",
)


def no_tracking_option(what: str = "Do not log to MLflow."):
    return click.option("--no-tracking", is_flag=True, help=what)


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Directory holding the four MNIST .gz files (else $MNIST_DIR, else the cache).",
)
host_option = click.option("--host", help="Interface to bind [default: 127.0.0.1; with --expose: 0.0.0.0].")


def quantile_option(help: str):
    """--quantile, the fraction of the completed trials that makes the best region (``report``, ``refine``)."""
    return click.option("--quantile", type=FRACTION, default=0.10, show_default=True, help=help)


def expose_option(what: str):
    """--expose: listen beyond loopback, where anyone can read and change ``what``."""
    return click.option(
        "--expose",
        is_flag=True,
        help="Listen beyond loopback (on 0.0.0.0 unless --host says where): anyone who can reach it "
        f"can read and change {what}.",
    )


def trial_options(command):
    """The options of the commands that run trials (``run`` and ``worker``), defined once."""
    for option in reversed(
        (
            click.option("--n-trials", type=TRIALS, help="Total trials for the study (default: its budget)."),
            click.option(
                "--timeout",
                type=SECONDS,
                metavar="SECONDS",
                help='Stop starting trials after this long (with [budget] at_timeout = "stop", end those '
                "running at their next epoch).",
            ),
            storage_option,
            tracking_option,
            no_tracking_option(),
            click.option(
                "--no-pack",
                is_flag=True,
                help="Train every trial alone (by default grid trials that differ only in eta and lmbda "
                "train together in one vectorised pass, with identical results).",
            ),
            data_dir_option,
        )
    ):
        command = option(command)
    return command
