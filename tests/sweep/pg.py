"""Helpers for sweeps across processes: PostgreSQL databases, an MLflow server, workers, checks.

Fixtures (import them into a test module to use them):

* ``pg_databases``: a factory of fresh PostgreSQL databases for one test, all dropped
  afterwards (``DROP DATABASE ... WITH (FORCE)``, so leftover connections do not block it).
  The server is at ``$MLP_SWEEP_TEST_PG`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``);
  where nothing listens there (connection refused) the test skips, saying so, or fails when the
  run requires the "postgres" need ($MLP_SWEEP_REQUIRE); any other error (a wrong role, a server
  still starting) fails it.
* ``mlflow_server``: a real ``mlflow server`` process on a free loopback port, with its own
  PostgreSQL database and a temporary artifact directory; one per test module.

Everything else here is plain functions: the ``sweep`` launcher as a real process, the
stores read back, and the checks that Optuna and MLflow agree.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import need

ADMIN_URL = os.environ.get("MLP_SWEEP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CURVE_NAMES = ("training_cost", "training_accuracy", "validation_cost", "validation_accuracy")
SWEEP = [str(Path(sys.executable).with_name("sweep"))]  # the installed console script, as a user runs it
QUIET = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "GIT_PYTHON_REFRESH": "quiet",
    "OPENBLAS_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore",
}


# --- PostgreSQL ---------------------------------------------------------------------------


def _admin():
    """An autocommit connection to the maintenance database (a need: see the module's docstring).

    Asked again by every test: a server that was down for one test may be up for the next."""
    where = ADMIN_URL.rsplit("@", 1)[-1]
    installed = importlib.util.find_spec("psycopg2") is not None
    need("postgres", installed, "psycopg2 is not installed (pip install '.[test]')")
    import psycopg2

    try:
        conn = psycopg2.connect(ADMIN_URL, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
    else:
        conn.autocommit = True
        return conn
    refused = "connection refused" in message.lower()  # nothing listens there: the one case that may skip
    need("postgres", not refused, f"no PostgreSQL server at {where}: {message}")
    pytest.fail(f"cannot use the PostgreSQL server at {where}: {message} (the tests need a superuser)", pytrace=False)


def database_url(name: str, password: str | None = None, driver: str = "postgresql") -> str:
    """The URL of database ``name`` on the test server, as the admin URL's user."""
    base, _ = ADMIN_URL.rsplit("/", 1)
    scheme, rest = base.split("://", 1)
    if password is not None:
        userinfo, host = rest.rsplit("@", 1)
        rest = f"{userinfo.split(':', 1)[0]}:{password}@{host}"
    return f"{driver}://{rest}/{name}"


def _admin_sql(statement: str, args: tuple = ()) -> tuple | None:
    """Run one statement on the maintenance database; its first row, if it returns rows."""
    conn = _admin()
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def create_database(prefix: str = "mlpsweep_test") -> str:
    """Create a fresh, uniquely named database; return its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_exists(name: str) -> bool:
    return _admin_sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)) is not None


@pytest.fixture
def pg_databases() -> Iterator[Callable[[], str]]:
    """``new()`` makes a fresh database and returns its name; all of them are dropped afterwards."""
    _admin().close()  # skip or fail now, before the test starts anything, if there is no server
    made: list[str] = []

    def new() -> str:
        made.append(create_database())
        return made[-1]

    yield new
    for name in made:
        drop_database(name)
    assert not [name for name in made if database_exists(name)]


def study_ready(url: str, name: str) -> bool:
    """Whether ``sweep run`` has finished creating the study (its parent run is recorded last).

    Read with plain SQL: opening an Optuna storage here would create its tables, racing the run.
    """
    import psycopg2

    try:
        conn = psycopg2.connect(url.replace("+psycopg2", ""), connect_timeout=3)
    except psycopg2.Error:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT 1 FROM studies s JOIN study_user_attributes a ON a.study_id = s.study_id "
                "WHERE s.study_name = %s AND a.key = 'mlp_sweep.parent_run_id'",
                (name,),
            )
            return cur.fetchone() is not None
    except psycopg2.Error:  # no tables yet
        return False
    finally:
        conn.close()


# --- an MLflow tracking server --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> bytes:
    """GET url until it answers 200 (the body is returned); fail if proc dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return response.read()
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a process started with start_new_session=True and every process of its group,
    waiting until all of them are gone (SIGKILL after ``timeout``)."""
    if _group_alive(proc.pid):
        os.killpg(proc.pid, sig)
    deadline = time.monotonic() + timeout
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        proc.poll()  # reap the leader, so that it does not linger as a zombie
        time.sleep(0.1)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)


class MlflowServer:
    def __init__(self, uri: str, artifacts: Path, backend_db: str) -> None:
        self.uri, self.artifacts, self.backend_db = uri, artifacts, backend_db


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """``mlflow server`` on 127.0.0.1 with a PostgreSQL backend; artifacts served from a temp dir."""
    _admin().close()
    db = create_database("mlpsweep_mlflow")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        database_url(db, driver="postgresql+psycopg2"),
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(root / "server.log", "wb")  # noqa: SIM115 (the server writes to it until stop_group)
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **QUIET, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # (as sweep ui)
    try:
        body = wait_for_http(f"http://127.0.0.1:{port}/health", proc)
        assert body.strip() == b"OK"
        yield MlflowServer(f"http://127.0.0.1:{port}", root / "artifacts", db)
    finally:
        stop_group(proc)
        log.close()
        drop_database(db)


# --- the launcher as real processes -----------------------------------------------------------


def start_sweep(*args, cwd: Path, env: dict | None = None, hostname: str | None = None) -> subprocess.Popen:
    """``sweep ARGS`` as a real process in its own session (so signals reach only it).

    ``hostname``: run it in a new UTS namespace under that host name, as if it ran on
    another machine (needs ``unshare``, i.e. root); its process id is the worker's.
    """
    cmd = [*SWEEP, *map(str, args)]
    if hostname is not None:
        cmd = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *cmd]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **QUIET, **(env or {})},
    )
    _STARTED.append(proc)
    return proc


_STARTED: list[subprocess.Popen] = []  # by start_sweep, in this test


def kill_started() -> None:
    """Kill what this test's ``start_sweep`` processes left running (a failed test may leave
    a worker held by held_env for ever; a passing one leaves nothing). Called after each test."""
    while _STARTED:
        proc = _STARTED.pop()
        if _group_alive(proc.pid):
            stop_group(proc, signal.SIGKILL)
        proc.communicate()  # (closes its pipes)


def need_another_host() -> None:
    """Go on if ``unshare --uts`` works here (it needs root), so that start_sweep can give a
    worker another host name; else skip the test, or fail it when the run requires "root"."""
    try:
        done = subprocess.run(
            ["unshare", "--uts", "sh", "-c", "hostname other-machine && hostname"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        works, why = False, f"cannot run unshare: {exc}"
    else:
        works = done.returncode == 0 and done.stdout.strip() == "other-machine"
        why = f"unshare --uts does not work here (needs root): {done.stderr.strip()}"
    need("root", works, why)


HOLD_DIR = Path(__file__).resolve().parent / "hold"
#: A pruner that never prunes: it makes every trial report each epoch to Optuna (where held_env holds).
NEVER_PRUNE = '[pruner]\nname = "threshold"\nlower = 0.0\n'


def held_env(epoch: int = 1, first: int = 0) -> dict[str, str]:
    """The environment that makes each worker process stop itself (SIGSTOP) once, right after
    it reported epoch ``epoch`` of a trial numbered ``first`` or more (see hold/sitecustomize.py)."""
    return _hold_env("MLP_SWEEP_TEST_HOLD", f"{epoch}:{first}")


def held_claim_env(sampled: bool) -> dict[str, str]:
    """The environment that makes each worker process stop itself (SIGSTOP) inside its first
    claim: after its first ask (``sampled`` False) or before it names itself in a sampled trial."""
    return _hold_env("MLP_SWEEP_TEST_HOLD_CLAIM", "sampled" if sampled else "asked")


def _hold_env(name: str, value: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(HOLD_DIR), os.environ.get("PYTHONPATH")) if p)
    return {name: value, "PYTHONPATH": path}


def _proc_state(pid: int) -> str | None:
    """The process's state letter from /proc (R, S, T, Z, ...), or None once it is reaped.

    A process being reaped can vanish between opening its stat file and reading it: the kernel
    then answers ESRCH (ProcessLookupError), not ENOENT."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def stopped(pid: int) -> bool:
    """Whether a process is stopped (by SIGSTOP): held, in held_env's words."""
    return _proc_state(pid) == "T"


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie has)."""
    return _proc_state(pid) in (None, "Z")


def signal_pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` was sent to the (stopped) process and waits to be handled."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & (1 << (sig - 1)) for mask in masks)


def held_workers(study: optuna.Study) -> dict[int, list[int]]:
    """The RUNNING trials of each held (stopped) worker process, by pid."""
    by_pid: dict[int, list[int]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("mlp_sweep.worker", {}).get("pid")
        if pid is not None and stopped(pid):
            by_pid.setdefault(pid, []).append(t.number)
    return by_pid


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    """Wait for a process; return its exit code, stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} did not finish within {timeout} s:\n{out}\n{err}") from None
    return proc.returncode, out, err


# --- reading the stores back --------------------------------------------------------------------

_READERS: dict[str, optuna.storages.RDBStorage] = {}


def rdb_study(url: str, name: str) -> optuna.Study:
    """A study on an RDB storage, opened without heartbeats (a reader, not a worker)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    if url not in _READERS:  # one engine per database, however often a test polls
        _READERS[url] = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": _null_pool()})
    return optuna.load_study(study_name=name, storage=_READERS[url])


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool  # no connection outlives a call, so the database can be dropped at once


_JOURNALS: dict[Path, optuna.storages.JournalStorage] = {}


def journal(workdir: Path, name: str) -> optuna.Study:
    """A study in workdir's default journal, read incrementally (cheap to poll)."""
    path = workdir / "mlruns" / "optuna.journal"
    if path not in _JOURNALS:
        _JOURNALS[path] = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=_JOURNALS[path])


def trial_runs(tracking_uri: str, name: str) -> list:
    """The study's child runs (one per trial), all statuses."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    return [r for r in runs if r.data.tags.get("mlp_sweep.role") == "trial"]


def grid_point(trial) -> tuple:
    return tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in trial.params.items()))


def by_state(study: optuna.Study) -> dict[str, int]:
    return dict(Counter(t.state.name for t in study.get_trials(deepcopy=False)))


def check_grid_done(study: optuna.Study, n_points: int) -> None:
    """Every grid point COMPLETE exactly once; nothing left RUNNING or WAITING."""
    trials = study.get_trials(deepcopy=False)
    complete = Counter(grid_point(t) for t in trials if t.state == TrialState.COMPLETE)
    assert len(complete) == n_points, f"{len(complete)} of {n_points} points complete"
    assert set(complete.values()) == {1}, f"repeated points: {[p for p, n in complete.items() if n > 1]}"
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def check_retries(study: optuna.Study) -> list:
    """Every FAIL trial was queued again once, with the same parameters, and that copy ran.

    Returns the failed trials.
    """
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # a trial that died before it was sampled, and was not queued with parameters, has nothing to run again
    failed = [t for t in failed if t.params or "fixed_params" in t.system_attrs]
    copies = {}
    for t in trials:
        if "mlp_sweep.retry_of" in t.user_attrs:
            assert t.user_attrs["mlp_sweep.retry_of"] not in copies, "a trial was queued again twice"
            copies[t.user_attrs["mlp_sweep.retry_of"]] = t
    assert set(copies) == {t.number for t in failed}
    for t in failed:
        copy = copies[t.number]
        point = {**t.system_attrs.get("fixed_params", {}), **t.params}  # whole, even if it died while sampling
        assert point, (t.number, t.state, t.system_attrs, t.params)
        assert copy.system_attrs["fixed_params"] == point, (t.number, copy.number, copy.system_attrs, point)
        assert point.items() <= copy.params.items(), (t.number, copy.number, copy.state, copy.params, point)
        assert copy.number > t.number
        assert copy.state in (TrialState.COMPLETE, TrialState.FAIL)
    return failed


def check_agreement(study: optuna.Study, runs: list, epochs: int, client=None) -> Counter:
    """Optuna and MLflow agree: one run per started trial, its status from the trial's state.

    COMPLETE -> FINISHED with every epoch of every curve (when ``client`` is given),
    PRUNED -> FINISHED (not drawn as a crash), FAIL -> KILLED when it was interrupted and queued again
    (else FAILED), nothing RUNNING; the Optuna state in the run's state tag. Returns the run statuses counted.
    """
    retried = {
        t.user_attrs["mlp_sweep.retry_of"]
        for t in study.get_trials(deepcopy=False)
        if "mlp_sweep.retry_of" in t.user_attrs
    }
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    trials = [t for t in trials if not (t.state == TrialState.FAIL and "mlp_sweep.run_id" not in t.user_attrs)]
    run_of = {r.info.run_id: r for r in runs}  # (a FAIL trial without a run died before the run was made)
    assert len(runs) == len(run_of) == len(trials), f"{len(runs)} runs for {len(trials)} trials"
    assert sorted(int(r.data.tags["mlp_sweep.trial"]) for r in runs) == sorted(t.number for t in trials)
    for t in trials:
        run = run_of[t.user_attrs["mlp_sweep.run_id"]]
        assert int(run.data.tags["mlp_sweep.trial"]) == t.number
        expected = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED"}.get(
            t.state.name, "KILLED" if t.number in retried else "FAILED"
        )
        assert run.info.status == expected, (t.number, t.state, run.info.status)
        assert run.data.tags["mlp_sweep.state"] == t.state.name, (t.number, run.data.tags)
        if t.state == TrialState.COMPLETE:
            logged = {k: float(run.data.params[k]) for k in t.params}  # to 4 significant digits
            assert logged == pytest.approx({k: float(v) for k, v in t.params.items()}, rel=1e-3)
            if client is not None:
                for curve in CURVE_NAMES:
                    steps = [m.step for m in client.get_metric_history(run.info.run_id, curve)]
                    assert sorted(steps) == list(range(1, epochs + 1)), (t.number, curve, steps)
            assert len(t.user_attrs["mlp_sweep.result"]["history"]["epoch"]) == epochs
    return Counter(r.info.status for r in runs)


def wait_until(condition: Callable[[], object], timeout: float, what: str, every: float = 0.05):
    """Poll until condition() is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
