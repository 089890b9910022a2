"""Workers through ``sweep proxy`` (Optuna's gRPC storage proxy over PostgreSQL, with the study lock).

Real ``sweep proxy`` and ``sweep worker`` processes; the workers know only ``grpc://127.0.0.1:PORT``.
A grid is still run exactly once, and a worker killed mid-trial has its trial failed and
retried: seen at once on the same machine (its process is gone), after the grace period
from another (its trial's heartbeat stamps stop).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from sweep import StorageSpec, Stores, create_or_resume, load_spec
from tests.sweep.conftest import run_cli, write_study
from tests.sweep.pg import (
    NEVER_PRUNE,
    by_state,
    check_grid_done,
    check_retries,
    database_url,
    finish,
    free_port,
    held_env,
    held_workers,
    need_another_host,
    pg_databases,
    rdb_study,
    start_sweep,
    wait_until,
)

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install '.[test]')")
__all__ = ["pg_databases"]  # a fixture, imported for pytest

N_POINTS = 6  # TINY's grid


def start_proxy(tmp_path, storage: str) -> str:
    """``sweep proxy`` over ``storage`` on a free loopback port; its grpc:// URL once it answers."""
    port = free_port()
    proc = start_sweep("proxy", "--storage", storage, "--port", port, cwd=tmp_path)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=60)
        except grpc.FutureTimeoutError:
            raise AssertionError(f"sweep proxy did not answer: {finish(proc, timeout=5)}") from None
    return f"grpc://127.0.0.1:{port}"


def proxied_study(tmp_path, pg_databases, epochs: int = 2, extra: str = "") -> tuple[str, str]:
    """A stored TINY grid study, created through a proxy; the database's URL and the proxy's."""
    storage = database_url(pg_databases())
    proxy = start_proxy(tmp_path, storage)
    spec = load_spec(write_study(tmp_path / "tiny.toml", epochs=epochs, extra=extra))
    create_or_resume(spec, Stores(StorageSpec(proxy), None))  # what `sweep run` does first
    return storage, proxy


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_through_the_proxy_run_every_grid_point_once(tmp_path, pg_databases):
    """Each worker stops itself inside its first trial (held_env) until both are held, so that
    neither can run the whole grid before the other has started: the work is shared."""
    storage, proxy = proxied_study(tmp_path, pg_databases, extra=NEVER_PRUNE)
    procs = [
        start_sweep("worker", "--study", "tiny", "--storage", proxy, "--no-tracking", cwd=tmp_path, env=held_env())
        for _ in range(2)
    ]

    def both_held() -> dict[int, list[int]]:
        held = held_workers(rdb_study(storage, "tiny"))
        return held if len(held) == 2 else {}

    assert set(wait_until(both_held, 120, "both workers held")) == {p.pid for p in procs}
    for proc in procs:
        os.kill(proc.pid, signal.SIGCONT)
    results = [finish(p) for p in procs]
    for code, _, err in results:
        assert code == 0 and "Traceback" not in err, err
    study = rdb_study(storage, "tiny")  # read from the database itself
    assert by_state(study) == {"COMPLETE": N_POINTS}
    check_grid_done(study, N_POINTS)
    pids = {t.user_attrs["mlp_sweep.worker"]["pid"] for t in study.trials}
    assert pids == {p.pid for p in procs}  # each worker ran trials, and no one else did


@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_killed_behind_the_proxy_has_its_trial_failed_and_retried(tmp_path, pg_databases):
    storage, proxy = proxied_study(tmp_path, pg_databases, epochs=3, extra=NEVER_PRUNE)
    common = ["--study", "tiny", "--storage", proxy, "--no-tracking"]
    victim = start_sweep("worker", *common, cwd=tmp_path, env=held_env())
    [(pid, trials)] = wait_until(lambda: held_workers(rdb_study(storage, "tiny")), 60, "a held worker").items()
    assert pid == victim.pid
    victim.send_signal(signal.SIGKILL)
    finish(victim)
    code, out, err = finish(start_sweep("worker", *common, cwd=tmp_path))  # the same machine: seen at once
    assert code == 0 and "Traceback" not in err, err

    study = rdb_study(storage, "tiny")
    assert sorted(t.number for t in check_retries(study)) == sorted(trials)
    copies = [t for t in study.trials if "mlp_sweep.retry_of" in t.user_attrs]
    assert {t.user_attrs["mlp_sweep.reason"] for t in copies} == {"worker process died"}
    assert by_state(study) == {"COMPLETE": N_POINTS, "FAIL": len(trials)}
    check_grid_done(study, N_POINTS)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_killed_on_another_host_behind_the_proxy_is_found_by_its_silent_heartbeat(
    tmp_path, pg_databases, monkeypatch
):
    need_another_host()
    monkeypatch.setenv("MLP_SWEEP_HEARTBEAT", "1")
    monkeypatch.setenv("MLP_SWEEP_GRACE", "3")
    storage, proxy = proxied_study(tmp_path, pg_databases, epochs=3, extra=NEVER_PRUNE)
    common = ["--study", "tiny", "--storage", proxy, "--no-tracking"]
    worker_b = start_sweep("worker", *common, cwd=tmp_path, hostname="machine-b", env=held_env())
    [victims] = wait_until(lambda: list(held_workers(rdb_study(storage, "tiny")).values()), 60, "machine-b held")
    os.killpg(worker_b.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    finish(worker_b)
    time.sleep(max(0.0, killed_at + 3 + 1 - time.monotonic()))  # past the grace period
    code, out, err = finish(start_sweep("worker", *common, cwd=tmp_path))
    assert code == 0 and "Traceback" not in err, err

    study = rdb_study(storage, "tiny")
    failed = check_retries(study)
    assert sorted(t.number for t in failed) == sorted(victims)
    assert all(t.user_attrs["mlp_sweep.worker"]["host"] == "machine-b" for t in failed)
    copies = [t for t in study.trials if "mlp_sweep.retry_of" in t.user_attrs]
    assert {t.user_attrs["mlp_sweep.reason"] for t in copies} == {"worker stopped sending heartbeats"}
    check_grid_done(study, N_POINTS)


def test_a_proxy_beyond_loopback_needs_expose_and_a_database(tmp_path, capsys):
    assert run_cli("proxy", "--storage", "postgresql://u@db/x", "--host", "10.1.2.3") == 2
    assert "the proxy has no authentication; add --expose" in capsys.readouterr().err
    assert run_cli("proxy", "--storage", str(tmp_path / "optuna.journal")) == 2
    assert "the proxy serves a database" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url, problem",
    [
        ("grpc://127.0.0.1:1", "no sweep proxy answers at grpc://127.0.0.1:1"),
        ("grpc://nohost", "a proxy's URL is grpc://HOST:PORT"),
    ],
)
def test_a_worker_given_a_bad_proxy_says_so_in_one_line(tmp_path, capsys, monkeypatch, url, problem):
    monkeypatch.setattr("sweep.stores.storage.CONNECT_TIMEOUT", 1)
    assert run_cli("worker", "--study", "s", "--storage", url, "--no-tracking") == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
