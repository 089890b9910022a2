"""Many workers on one PostgreSQL study: every grid point once, one MLflow run per trial.

Real ``sweep worker`` processes, a real PostgreSQL server (a fresh database per test,
dropped afterwards) and, for the server path, a real ``mlflow server`` on loopback with
its own PostgreSQL database. The workers run in a directory that holds no study file: the
study's settings come from the storage.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from sweep import StorageSpec, Stores, create_or_resume, load_spec
from sweep.schema import PARENT_ATTR
from tests.sweep.conftest import TINY
from tests.sweep.pg import (
    NEVER_PRUNE,
    QUIET,
    SWEEP,
    by_state,
    check_agreement,
    check_grid_done,
    database_url,
    finish,
    held_env,
    held_workers,
    mlflow_server,
    need_another_host,
    pg_databases,
    rdb_study,
    start_sweep,
    study_ready,
    trial_runs,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
__all__ = ["mlflow_server", "pg_databases"]  # fixtures, imported for pytest

EPOCHS = 3
GRID_SPACE = (
    'batch_size = { type = "int", low = 10, high = 30, step = 10 }\n'
    'eta = { type = "float", low = 0.1, high = 0.4, step = 0.1 }\n'
)  # 3 x 4 = 12 points
N_POINTS = 12


def study_file(path: Path, name: str, epochs: int = EPOCHS, space: str = GRID_SPACE) -> Path:
    head = TINY.split("[space]")[0].format(name=name, sampler="grid", epochs=epochs, extra="")
    path.write_text(head + "[space]\n" + space)
    return path


def ran(out: str) -> int:
    """Trials a ``sweep worker`` says it ran."""
    match = re.search(r"worker ran (\d+) trials?\b", out)
    assert match, out
    return int(match.group(1))


@pytest.fixture(params=["database", "server"])
def tracking(request, pg_databases):
    """MLflow in a shared PostgreSQL database, or behind the module's ``mlflow server``."""
    if request.param == "database":
        return database_url(pg_databases(), driver="postgresql+psycopg2")
    return request.getfixturevalue("mlflow_server").uri


def test_three_workers_share_a_postgresql_study_and_run_every_grid_point_once(
    tmp_path, pg_databases, tracking, monkeypatch
):
    """Each worker is held in its first pack until all three hold one, so each runs a pack."""
    monkeypatch.setenv("MLP_SWEEP_GRACE", "600")  # held workers send no heartbeats: not dead
    storage = database_url(pg_databases())
    path = study_file(tmp_path / "dist.toml", "dist")
    path.write_text(path.read_text() + NEVER_PRUNE)  # every epoch reported: where they are held
    monkeypatch.chdir(tmp_path)  # a database's experiment keeps its artifacts below the directory it was made in
    create_or_resume(load_spec(path), Stores(StorageSpec(storage), tracking))  # what `sweep run` does first
    elsewhere = tmp_path / "other-machine"  # no study file here: the settings come from the storage
    elsewhere.mkdir()

    procs = [
        start_sweep(
            "worker", "--study", "dist", "--storage", storage, "--tracking-uri", tracking, cwd=elsewhere, env=held_env()
        )
        for _ in range(3)
    ]
    wait_until(
        lambda: any(p.poll() is not None for p in procs) or len(held_workers(rdb_study(storage, "dist"))) == 3,
        120,
        "three workers held",
    )
    assert all(p.poll() is None for p in procs)  # (GRID_SPACE's 3 batch sizes: one pack each)
    for p in procs:
        os.kill(p.pid, signal.SIGCONT)
    results = [finish(p) for p in procs]

    for code, _, err in results:
        assert code == 0 and "Traceback" not in err, err
    assert sum(ran(out) for _, out, _ in results) == N_POINTS
    study = rdb_study(storage, "dist")
    assert by_state(study) == {"COMPLETE": N_POINTS}
    check_grid_done(study, N_POINTS)
    from mlflow.tracking import MlflowClient

    runs = trial_runs(tracking, "dist")
    assert check_agreement(study, runs, EPOCHS, MlflowClient(tracking)) == {"FINISHED": N_POINTS}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {study.user_attrs[PARENT_ATTR]}
    pids = {t.user_attrs["mlp_sweep.worker"]["pid"] for t in study.trials}
    assert pids == {p.pid for p in procs}  # the work was shared
    assert list(elsewhere.iterdir()) == []  # nothing written beside the workers


def test_the_readme_two_machine_set_up(tmp_path, pg_databases, mlflow_server, monkeypatch):
    """Machine A: ``sweep run`` creates the study and works; machine B (another host name) joins."""
    need_another_host()
    monkeypatch.setenv("MLP_SWEEP_GRACE", "600")  # A, held, sends no heartbeats: B must not take it for dead
    storage = database_url(pg_databases())
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    machine_a.mkdir(), machine_b.mkdir()
    path = study_file(machine_a / "two.toml", "two")
    path.write_text(path.read_text() + NEVER_PRUNE)  # every epoch reported: where A is held
    common = ["--storage", storage, "--tracking-uri", mlflow_server.uri]

    run_a = start_sweep("run", "two.toml", *common, cwd=machine_a, env=held_env())
    [(pid, held)] = wait_until(
        lambda: run_a.poll() is not None or (study_ready(storage, "two") and held_workers(rdb_study(storage, "two"))),
        60,
        "machine A held in its first trials",
    ).items()
    assert pid == run_a.pid
    worker_b = start_sweep("worker", "--study", "two", *common, cwd=machine_b, hostname="machine-b")
    wait_until(
        lambda: (
            worker_b.poll() is not None
            or any(
                t.user_attrs.get("mlp_sweep.worker", {}).get("host") == "machine-b"
                for t in rdb_study(storage, "two").trials
            )
        ),
        60,
        "machine B to claim trials",
    )  # B joins while A trains
    os.kill(pid, signal.SIGCONT)
    code_a, out_a, err_a = finish(run_a)
    code_b, out_b, err_b = finish(worker_b)

    assert code_a == 0 and "Traceback" not in err_a, err_a
    assert code_b == 0 and "Traceback" not in err_b, err_b
    study = rdb_study(storage, "two")
    check_grid_done(study, N_POINTS)
    assert by_state(study) == {"COMPLETE": N_POINTS}
    hosts = {t.user_attrs["mlp_sweep.worker"]["host"] for t in study.trials}
    assert 1 <= ran(out_b) == sum(t.user_attrs["mlp_sweep.worker"]["host"] == "machine-b" for t in study.trials)
    assert "machine-b" in hosts and len(hosts) == 2, hosts
    runs = trial_runs(mlflow_server.uri, "two")
    assert check_agreement(study, runs, EPOCHS) == {"FINISHED": N_POINTS}
    # machine A's report went to the study's parent run, through the server, into its artifact store
    reports = [p.name for p in mlflow_server.artifacts.rglob("*") if p.is_file()]
    assert "trials.csv" in reports and (machine_a / "reports" / "two" / "trials.csv").exists()
    assert not (machine_b / "mlruns").exists() and not (machine_a / "mlruns").exists()


LEAKS = ("Warning", "warning", "ExperimentalWarning", "pruning feature", "experimental", "Traceback")


def test_a_postgresql_run_says_nothing_but_its_own_words(tmp_path, pg_databases):
    """No library warning in a tracked PostgreSQL run with two workers, a joining worker and a report.

    Run with the default warning filters and MLflow's default logging (the other tests quiet both).
    """
    storage = database_url(pg_databases())
    env = {k: v for k, v in os.environ.items() if k not in QUIET or k == "OPENBLAS_NUM_THREADS"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    study_file(tmp_path / "quiet.toml", "quiet", epochs=1)

    def sweep(*args: str) -> str:
        done = subprocess.run([*SWEEP, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    said = [
        sweep("run", "quiet.toml", "--storage", storage, "--workers", "2", "--n-trials", "6", "--no-report"),
        sweep("worker", "--study", "quiet", "--storage", storage, "--n-trials", "8"),
        sweep("worker", "--study", "quiet", "--storage", storage, "--no-tracking", "--n-trials", "9"),
        sweep("report", "quiet", "--storage", storage),  # what a run writes at its end, later
        sweep("report", "quiet", "--storage", storage, "--no-tracking", "--out", "untracked"),
    ]
    assert "Study quiet: 6 trials" in said[0] and "worker ran 2 trials of quiet" in said[1]
    assert "worker ran 1 trial of quiet" in said[2]
    for text in said:
        assert not [word for word in LEAKS if word in text], text
    summary = (tmp_path / "reports" / "quiet" / "summary.txt").read_text()
    assert not [word for word in LEAKS if word in summary], summary
