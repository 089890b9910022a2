"""Workers that die mid-trial (SIGKILL) or are stopped (SIGTERM): nothing finished is lost.

Real ``sweep`` processes are killed while they train. Afterwards the stores must agree:
the killed trials are FAIL and queued again with the same parameters, their MLflow runs
KILLED, every completed trial and its logged epochs kept, nothing left RUNNING, and a
later run completes each grid point exactly once.

The workers are held at an epoch boundary (``held_env``: each stops itself right after
reporting an epoch of a trial), so that short trials are caught mid-way without a race, or
inside a claim (``held_claim_env``: after asking for a trial, or before naming itself in it).
The studies use a threshold pruner that never prunes (``lower = 0``): it makes every
trial report each epoch to Optuna, which is where the workers are held.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

import pytest
from optuna.trial import TrialState

from sweep import StorageSpec, Stores, create_or_resume, load_spec
from sweep.words import plural
from tests.sweep.conftest import child_runs, run_cli, tracking_client, write_study
from tests.sweep.pg import (
    NEVER_PRUNE,
    by_state,
    check_agreement,
    check_grid_done,
    check_retries,
    database_url,
    finish,
    gone,
    held_claim_env,
    held_env,
    held_workers,
    journal,
    need_another_host,
    pg_databases,
    rdb_study,
    signal_pending,
    start_sweep,
    stopped,
    trial_runs,
    wait_until,
)

pytestmark = pytest.mark.slow
__all__ = ["pg_databases"]  # a fixture, imported for pytest

EPOCHS = 3  # a held trial has reported epoch 1: two epochs to go when it is let go
N_POINTS = 6  # TINY's grid: batch size 10, 20, 30 x eta 0.1, 0.2 (packs of two, by eta)


def held_study(path):
    """TINY's grid, 3 epochs, every epoch reported to Optuna (where held_env holds a worker)."""
    return write_study(path, epochs=EPOCHS, extra=NEVER_PRUNE)


def local_held(workdir, n: int) -> dict[int, list[int]]:
    """held_workers() of the local study once ``n`` workers are held; else {}."""
    if not (workdir / "mlruns" / "optuna.journal").exists():
        return {}
    try:
        held = held_workers(journal(workdir, "tiny"))
    except KeyError:  # the journal is there, the study not yet
        return {}
    return held if len(held) == n else {}


def wait_held(workdir, n: int) -> dict[int, list[int]]:
    return wait_until(lambda: local_held(workdir, n), 120, f"{plural(n, 'worker')} held mid-trial")


def let_go(pids) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def test_a_worker_killed_mid_trial_is_retried_and_the_run_finishes(workdir):
    held_study(workdir / "tiny.toml")
    proc = start_sweep("run", "tiny.toml", "--workers", 2, cwd=workdir, env=held_env())
    by_pid = wait_held(workdir, 2)
    victim, other = sorted(by_pid)
    os.kill(victim, signal.SIGKILL)
    let_go([other])
    code, out, err = finish(proc)
    assert code == 0 and "Traceback" not in err, err
    victims = sorted(by_pid[victim])
    assert f"{plural(len(victims), 'trial')} retried (their worker process died)" in out

    study = journal(workdir, "tiny")
    assert [t.number for t in check_retries(study)] == victims
    assert by_state(study) == {"COMPLETE": N_POINTS, "FAIL": len(victims)}
    check_grid_done(study, N_POINTS)
    assert (workdir / "reports" / "tiny" / "summary.txt").exists()
    client = tracking_client(workdir)
    assert client.get_run(study.user_attrs["mlp_sweep.parent_run_id"]).info.status == "FINISHED"
    statuses = check_agreement(study, child_runs(workdir, "tiny"), EPOCHS, client)
    assert statuses == {"FINISHED": N_POINTS, "KILLED": len(victims)}


def test_when_every_worker_is_killed_the_run_says_so_and_a_later_run_continues(workdir):
    held_study(workdir / "tiny.toml")
    proc = start_sweep("run", "tiny.toml", "--workers", 2, "--no-report", cwd=workdir, env=held_env())
    by_pid = wait_held(workdir, 2)
    for pid in by_pid:
        os.kill(pid, signal.SIGKILL)
    code, out, err = finish(proc)
    assert code == 1 and "Traceback" not in err, err
    done = sum(t.state == TrialState.COMPLETE for t in journal(workdir, "tiny").trials)
    assert done == 0  # each worker was held in its first trials
    assert f"2 worker processes killed (SIGKILL) before its budget was spent (0 of {N_POINTS}" in err

    assert run_cli("run", "tiny.toml", "--no-report") == 0
    study = journal(workdir, "tiny")
    assert sorted(t.number for t in check_retries(study)) == sorted(sum(by_pid.values(), []))
    check_grid_done(study, N_POINTS)


def test_sigterm_reaches_the_workers_at_once_and_no_trial_starts_after_it(workdir, capsys):
    """The launcher passes the signal on when it lands, not at its next poll: it is pending in
    both held workers; let go, they stop at their next epoch's end. Prints how long the signal
    took to reach them and the workers to end (measured, not asserted)."""
    held_study(workdir / "tiny.toml")
    proc = start_sweep("run", "tiny.toml", "--workers", 2, "--no-report", cwd=workdir, env=held_env())
    by_pid = wait_held(workdir, 2)
    seen = journal(workdir, "tiny").get_trials()
    sent, start = datetime.now(), time.monotonic()
    proc.send_signal(signal.SIGTERM)
    wait_until(
        lambda: all(signal_pending(pid, signal.SIGTERM) for pid in by_pid),
        60,
        "the launcher to pass SIGTERM on",
        every=0.002,
    )
    passed_on = time.monotonic() - start
    let_go(by_pid)
    start = time.monotonic()
    wait_until(lambda: all(gone(pid) for pid in by_pid), 60, "the workers to end", every=0.002)
    latency = time.monotonic() - start
    code, out, err = finish(proc, timeout=60)
    assert code == 130, err

    study = journal(workdir, "tiny")
    assert not [t.number for t in study.trials if t.state != TrialState.WAITING and t.datetime_start > sent]
    stopped = [t for t in study.trials if t.state == TrialState.FAIL]
    assert sorted(t.number for t in stopped) == sorted(sum(by_pid.values(), []))
    after = [len(t.intermediate_values) - len(seen[t.number].intermediate_values) for t in stopped]
    assert all(n <= 1 for n in after), after  # stopped at the next epoch's end, not at the trial's
    with capsys.disabled():
        print(
            f"\nSIGTERM passed on in {passed_on * 1000:.0f} ms; workers gone {latency * 1000:.0f} ms after "
            f"they were let go; epochs after the signal: {after}"
        )


def test_sigkill_mid_trial_on_the_journal_a_later_run_retries_it(workdir):
    held_study(workdir / "tiny.toml")
    proc = start_sweep("run", "tiny.toml", cwd=workdir, env=held_env(first=2))  # after the first pack (0, 1)
    [(pid, victims)] = wait_held(workdir, 1).items()
    assert pid == proc.pid  # one worker: the launcher itself
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    killed = journal(workdir, "tiny")  # as the dead worker left it
    assert [t.number for t in killed.trials if t.state == TrialState.RUNNING] == victims == [2, 3]
    kept = {t.number: t.values for t in killed.trials if t.state == TrialState.COMPLETE}
    assert sorted(kept) == [0, 1]
    assert sorted(r.info.status for r in child_runs(workdir, "tiny")) == sorted(
        ["FINISHED"] * len(kept) + ["RUNNING"] * len(victims)
    )

    assert run_cli("run", "tiny.toml", "--no-report") == 0  # finds the dead worker's trials, retries them

    study = journal(workdir, "tiny")
    failed = check_retries(study)
    assert [t.number for t in failed] == victims
    assert by_state(study) == {"COMPLETE": N_POINTS, "FAIL": len(victims)}
    check_grid_done(study, N_POINTS)
    assert {n: study.trials[n].values for n in kept} == kept  # completed trials kept, not re-run
    runs = child_runs(workdir, "tiny")
    statuses = check_agreement(study, runs, EPOCHS, tracking_client(workdir))
    assert statuses == {"FINISHED": N_POINTS, "KILLED": len(victims)}
    killed_runs = [r for r in runs if r.info.status == "KILLED"]
    assert {r.data.tags["mlp_sweep.reason"] for r in killed_runs} == {"worker process died"}


@pytest.mark.postgres
def test_sigkill_of_a_worker_on_another_host_is_found_by_its_heartbeat(tmp_path, pg_databases, monkeypatch):
    """PostgreSQL: the dead worker ran on "machine-b", so only its silent heartbeat can tell."""
    need_another_host()
    monkeypatch.setenv("MLP_SWEEP_HEARTBEAT", "1")
    monkeypatch.setenv("MLP_SWEEP_GRACE", "4")
    storage = database_url(pg_databases())
    tracking = database_url(pg_databases(), driver="postgresql+psycopg2")
    common = ["--study", "tiny", "--storage", storage, "--tracking-uri", tracking]
    spec = load_spec(held_study(tmp_path / "tiny.toml"))
    create_or_resume(spec, Stores(StorageSpec(storage), tracking))

    on_b = lambda t: t.user_attrs.get("mlp_sweep.worker", {}).get("host") == "machine-b"  # noqa: E731
    worker_b = start_sweep("worker", *common, cwd=tmp_path, hostname="machine-b", env=held_env())
    [victims] = wait_until(lambda: list(held_workers(rdb_study(storage, "tiny")).values()), 60, "machine-b held")
    # works beside machine-b, then without it; too patient to find machine-b silent, so that the
    # later run finds it at its first claim, with nothing else to run but the retry it queues
    worker_a = start_sweep("worker", *common, cwd=tmp_path, env={"MLP_SWEEP_GRACE": "600"})
    os.killpg(worker_b.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    finish(worker_b)
    code, out_a, err_a = finish(worker_a)
    assert code == 0 and "Traceback" not in err_a, err_a

    time.sleep(max(0.0, killed_at + 4 + 1 - time.monotonic()))  # past the grace period
    code, out_c, err_c = finish(start_sweep("worker", *common, cwd=tmp_path))  # the later run
    assert code == 0 and "Traceback" not in err_c, err_c

    study = rdb_study(storage, "tiny")
    failed = check_retries(study)
    assert sorted(t.number for t in failed) == sorted(victims)
    assert all(on_b(t) and t.user_attrs["mlp_sweep.worker"]["pid"] == worker_b.pid for t in failed)
    copies = [t for t in study.trials if "mlp_sweep.retry_of" in t.user_attrs]
    assert {t.user_attrs["mlp_sweep.reason"] for t in copies} == {"worker stopped sending heartbeats"}
    assert by_state(study) == {"COMPLETE": N_POINTS, "FAIL": len(victims)}
    check_grid_done(study, N_POINTS)
    from mlflow.tracking import MlflowClient

    runs = trial_runs(tracking, "tiny")
    assert check_agreement(study, runs, EPOCHS, MlflowClient(tracking)) == {
        "FINISHED": N_POINTS,
        "KILLED": len(victims),
    }


def test_sigterm_stops_a_two_worker_run_and_a_later_run_continues(workdir):
    held_study(workdir / "tiny.toml")
    # each worker is held in its first trial numbered 2 or more: one of them after it completed 0 and 1
    proc = start_sweep("run", "tiny.toml", "--workers", 2, "--no-report", cwd=workdir, env=held_env(first=2))
    by_pid = wait_held(workdir, 2)
    seen = journal(workdir, "tiny").get_trials(deepcopy=False)
    done_before = {t.number for t in seen if t.state == TrialState.COMPLETE}
    running = sorted(sum(by_pid.values(), []))
    assert done_before == {0, 1} and running == [t.number for t in seen if t.state == TrialState.RUNNING]
    proc.send_signal(signal.SIGTERM)  # as `kill PID` or a service manager would: to the launcher only
    wait_until(lambda: all(signal_pending(pid, signal.SIGTERM) for pid in by_pid), 60, "SIGTERM passed on")
    let_go(by_pid)
    code, out, err = finish(proc, timeout=60)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err

    study = journal(workdir, "tiny")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [t.number for t in failed] == running  # the held trials were stopped, no other trial started
    assert by_state(study) == {"COMPLETE": len(done_before), "FAIL": len(running), "WAITING": len(running)}
    assert {t.number for t in study.trials if t.state == TrialState.COMPLETE} == done_before
    assert all(t.user_attrs["mlp_sweep.result"]["reason"] == "interrupted" for t in failed)
    assert sorted(w.user_attrs["mlp_sweep.retry_of"] for w in waiting) == running
    assert all(
        w.system_attrs["fixed_params"] == study.trials[w.user_attrs["mlp_sweep.retry_of"]].params for w in waiting
    )
    statuses = check_agreement(study, child_runs(workdir, "tiny"), EPOCHS, tracking_client(workdir))
    assert statuses == {"FINISHED": len(done_before), "KILLED": len(running)}

    assert run_cli("run", "tiny.toml", "--workers", 2, "--no-report") == 0
    study = journal(workdir, "tiny")
    check_retries(study)
    check_grid_done(study, N_POINTS)
    assert by_state(study) == {"COMPLETE": N_POINTS, "FAIL": len(failed)}
    statuses = check_agreement(study, child_runs(workdir, "tiny"), EPOCHS, tracking_client(workdir))
    assert statuses == {"FINISHED": N_POINTS, "KILLED": len(failed)}


def test_sigterm_stops_a_sweep_worker_at_a_safe_point(workdir):
    """A worker on another machine stopped by its service manager: no heartbeat wait needed."""
    spec = load_spec(held_study(workdir / "tiny.toml"))
    create_or_resume(
        spec,
        Stores(
            StorageSpec(str(workdir / "mlruns" / "optuna.journal")), f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
        ),
    )
    proc = start_sweep("worker", "--study", "tiny", cwd=workdir, env=held_env(first=2))
    [(pid, victims)] = wait_held(workdir, 1).items()
    assert pid == proc.pid and victims == [2, 3]
    complete = sum(t.state == TrialState.COMPLETE for t in journal(workdir, "tiny").trials)
    proc.send_signal(signal.SIGTERM)
    let_go([pid])
    code, out, err = finish(proc, timeout=60)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err

    study = journal(workdir, "tiny")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == victims
    assert all(t.user_attrs["mlp_sweep.result"]["reason"] == "interrupted" for t in failed)
    assert by_state(study) == {"COMPLETE": complete, "FAIL": len(victims), "WAITING": len(victims)}
    runs = child_runs(workdir, "tiny")
    statuses = check_agreement(study, runs, EPOCHS, tracking_client(workdir))
    assert statuses == {"FINISHED": complete, "KILLED": len(victims)}


@pytest.mark.parametrize("sampled", [False, True])
def test_sigkill_between_claiming_a_trial_and_starting_it(workdir, sampled):
    """The narrowest window: the trial is claimed (RUNNING, with the grid point the worker
    enqueued for it), but does not yet say who runs it; before or after its parameters were
    sampled. Its point must not be lost either way."""
    write_study(workdir / "tiny.toml", epochs=2)
    proc = start_sweep("run", "tiny.toml", "--no-report", cwd=workdir, env=held_claim_env(sampled))
    wait_until(lambda: proc.poll() is not None or stopped(proc.pid), 120, "the worker held in its claim")
    assert nameless(workdir, sampled) == [0], proc.poll()  # held in the window: RUNNING, not named
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert nameless(workdir, sampled) == [0]  # still RUNNING, nameless
    dead = [t.number for t in journal(workdir, "tiny").trials if t.state == TrialState.RUNNING]
    # held after its first ask the claim holds trial 0 alone; before naming itself, its whole pack
    assert len(dead) > 1 if sampled else dead == [0]

    assert run_cli("run", "tiny.toml", "--no-report") == 0
    study = journal(workdir, "tiny")
    check_grid_done(study, N_POINTS)  # the claimed trials' grid points were not lost
    retried = check_retries(study)  # queued again with their points
    assert [study.trials[n].state for n in dead] == [TrialState.FAIL] * len(dead)
    assert all("fixed_params" in study.trials[n].system_attrs for n in dead)  # its point, from the claim on
    assert [t.number for t in retried] == dead
    assert by_state(study) == {"COMPLETE": N_POINTS, "FAIL": len(dead)}
    statuses = check_agreement(study, child_runs(workdir, "tiny"), 2, tracking_client(workdir))
    assert statuses["FINISHED"] == N_POINTS and "RUNNING" not in statuses


def nameless(workdir, sampled: bool | None = None) -> list[int]:
    """RUNNING trials that do not name their worker (a worker died, or is about to name itself),
    and have (or have not yet) sampled their parameters (None: either)."""
    if not (workdir / "mlruns" / "optuna.journal").exists():
        return []
    try:
        trials = journal(workdir, "tiny").get_trials(deepcopy=False)
    except KeyError:
        return []
    return [
        t.number
        for t in trials
        if t.state == TrialState.RUNNING
        and "mlp_sweep.worker" not in t.user_attrs
        and sampled in (None, bool(t.params))
    ]
