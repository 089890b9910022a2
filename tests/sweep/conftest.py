"""Fixtures for whole sweeps: tiny study files, temp stores, the CLI run in-process.

MLflow migrates every new SQLite database (seconds each time), so one empty migrated
database and one stored tiny study are made per test run and copied where a test needs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest

from sweep.cli import main
from tests.sweep.pg import kill_started

TINY = """\
name = "{name}"
description = "a tiny grid for tests"

[data]
dataset = "mnist-5k"
n_train = 300
n_validation = 100
n_test = 100

[sampler]
name = "{sampler}"

{extra}

[train]
sizes = [784, 8, 10]
epochs = {epochs}

[space]
batch_size = {{ type = "int", low = 10, high = 30, step = 10 }}
eta = {{ type = "float", low = 0.1, high = 0.2, step = 0.1 }}
"""


@pytest.fixture(autouse=True)
def no_sweep_left_running():
    yield
    kill_started()


@pytest.fixture(scope="session")
def empty_tracking_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite database, migrated once per test run: copy it, never write to it."""
    from sweep.tracking import store as tracking

    tracking.configure()  # before mlflow is imported: no telemetry, quiet migrations
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("empty-tracking-db")
    made, template = root / "made.db", root / "mlflow.db"
    cwd = os.getcwd()
    os.chdir(root)  # MLflow's default experiment points below the working directory
    try:
        MlflowClient(f"sqlite:///{made}").search_experiments()  # runs the migrations
    finally:
        os.chdir(cwd)
    with contextlib.closing(sqlite3.connect(made)) as src, contextlib.closing(sqlite3.connect(template)) as dst:
        src.backup(dst)  # a consistent, self-contained copy (no -wal file beside it)
    return template


def tracking_db(template: Path, directory: Path) -> str:
    """A copy of the empty migrated MLflow database as ``directory/mlflow.db``; its URI."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


@pytest.fixture
def workdir(tmp_path, monkeypatch, empty_tracking_db):
    """A fresh working directory: ./mlruns holds the default stores, for now an empty (migrated)
    MLflow database and no study."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking_db(empty_tracking_db, tmp_path / "mlruns")
    return tmp_path


def write_study(path: Path, name: str = "tiny", sampler: str = "grid", epochs: int = 2, extra: str = "") -> Path:
    path.write_text(TINY.format(name=name, sampler=sampler, epochs=epochs, extra=extra))
    return path


def run_cli(*args: str) -> int:
    """``sweep ARGS`` in this process; returns the exit code."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


@pytest.fixture(scope="session")
def stored_study(tmp_path_factory, empty_tracking_db) -> Path:
    """A working directory with a finished tiny study (2 trials) in ./mlruns, made once per
    test run: copy it (``copy_stored``), never write to it."""
    root = tmp_path_factory.mktemp("stored-study")
    tracking_db(empty_tracking_db, root / "mlruns")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert run_cli("run", write_study(root / "tiny.toml", epochs=1), "--n-trials", 2, "--no-report") == 0
    finally:
        os.chdir(cwd)
    return root


def copy_stored(template: Path, root: Path) -> Path:
    """The stored study's files copied into ``root`` (which may exist); returns root."""
    shutil.copytree(template, root, dirs_exist_ok=True)
    return root


def one_line_error(capsys) -> str:
    """The one line a refused command wrote to stderr (no traceback anywhere)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert lines[0].startswith("sweep"), lines[0]
    return lines[0]


def journal_study(workdir: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(workdir / "mlruns" / "optuna.journal"))
    )
    return optuna.load_study(study_name=name, storage=storage)


def overlapping(trials) -> int:
    """Pairs of trials in a row (by start) where the later one started before the earlier one ended:
    trials trained together in one pack are claimed, hence started, together."""
    trials = sorted(trials, key=lambda t: (t.datetime_start, t.number))
    return sum(b.datetime_start < a.datetime_complete for a, b in zip(trials, trials[1:]))


def tracking_client(workdir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")


def child_runs(workdir: Path, name: str) -> list:
    client = tracking_client(workdir)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    return [r for r in runs if r.data.tags.get("mlp_sweep.role") == "trial"]


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file below root: to prove nothing stored was touched.

    Less SQLite's ``-shm`` index, which any reader of a WAL database rewrites (it holds no
    data: SQLite rebuilds it from the database and its ``-wal`` file)."""
    return (
        {
            str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")
            if p.is_file() and not p.name.endswith("-shm")
        }
        if root.exists()
        else {}
    )


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
