"""Fixtures for whole sweeps: tiny study files, temp stores, the CLI run in-process."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest

from sweep.cli import main

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


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory whose ./mlruns holds the default stores."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def write_study(path: Path, name: str = "tiny", sampler: str = "grid", epochs: int = 2, extra: str = "") -> Path:
    path.write_text(TINY.format(name=name, sampler=sampler, epochs=epochs, extra=extra))
    return path


def run_cli(*args: str) -> int:
    """``sweep ARGS`` in this process; returns the exit code."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


def stored_tiny_study(root: Path) -> Path:
    """``root`` made a working directory with a finished tiny study (2 trials) in ./mlruns.

    For module-scoped fixtures, which cannot use the ``workdir`` fixture's chdir."""
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert run_cli("run", write_study(root / "tiny.toml", epochs=1), "--n-trials", 2, "--no-report") == 0
    finally:
        os.chdir(cwd)
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
        optuna.storages.journal.JournalFileBackend(str(workdir / "mlruns" / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


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
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and not p.name.endswith("-shm")} if root.exists() else {}


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
