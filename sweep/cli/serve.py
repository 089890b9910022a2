"""The servers: ``sweep ui`` (MLflow's UI) and ``sweep proxy`` (Optuna's gRPC storage proxy).

Both listen on loopback unless --expose; the UI runs in a process group of its own, stopped whole.
"""

from __future__ import annotations

import os
import subprocess
import sys

import click

from sweep.cli.options import PORT, default_tracking_uri, expose_option, host_option, tracking_option
from sweep.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The UI's server: no job runner (seven huey consumers, each importing mlflow, that serve only
# GenAI features: they doubled the start-up time on two cores), no usage telemetry, and not
# the starlette deprecation that mlflow's own import triggers.
UI_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PYTHONWARNINGS": "ignore:starlette.middleware.wsgi is deprecated",
}
UI_GRACE = 10  # seconds the UI's processes have to stop before they are killed


def bind_host(host: str | None, expose: bool, what: str) -> str:
    """Where a server of ours listens: loopback unless ``expose`` (then every interface if no host is given).
    A host beyond loopback without ``expose`` is refused: none of them has authentication."""
    host = host or ("0.0.0.0" if expose else "127.0.0.1")
    if host not in LOOPBACK and not expose:
        raise UsageError(f"--host {host}: {what} has no authentication; add --expose to bind beyond loopback")
    return host


def ui_command(
    tracking_uri: str, host: str | None = None, port: int = 5000, expose: bool = False
) -> tuple[list[str], dict[str, str]]:
    """The command ``sweep ui`` runs and the environment variables it adds.

    It binds to loopback unless ``expose`` (then to every interface if no host is given).
    The store's URI goes through the environment, not the command line that ``ps`` shows
    to every local user, so that a password in it stays private. See UI_ENV for the rest.
    """
    host = bind_host(host, expose, "the UI")
    argv = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--workers", "1"]
    return argv, {"MLFLOW_BACKEND_STORE_URI": tracking_uri, **UI_ENV}


@click.command()
@tracking_option
@host_option
@click.option("--port", type=PORT, default=5000, show_default=True, help="Port to listen on.")
@expose_option("every run")
def ui(tracking_uri, host, port, expose) -> None:
    """Open the MLflow UI over the project's tracking store (loopback only unless --expose)."""
    from sweep.tracking.store import check_tracking_uri
    from sweep.tracking.tracker import study_views

    check_tracking_uri(tracking_uri or default_tracking_uri())
    argv, env = ui_command(tracking_uri or default_tracking_uri(), host, port, expose)
    address = f"http://{argv[argv.index('--host') + 1]}:{port}"
    click.echo(f"MLflow UI on {address} (Ctrl-C to stop)")
    for name, path in sorted(study_views(tracking_uri or default_tracking_uri()).items()):
        click.echo(f"  {name}: {address}/{path}")
    raise SystemExit(serve(argv, {**os.environ, **env}))


@click.command()
@click.option(
    "--storage",
    metavar="URL",
    required=True,
    help="The study database the proxy serves: postgresql://... (or sqlite:///FILE).",
)
@host_option
@click.option("--port", type=PORT, default=13000, show_default=True, help="Port to listen on.")
@expose_option("every study in the database")
@click.option(
    "--threads",
    type=click.IntRange(8, 10_000),
    default=128,
    show_default=True,
    help="Calls served at once; each worker waiting for a study's lock takes one, so give more "
    "than the workers that use the proxy.",
)
def proxy(storage, host, port, expose, threads) -> None:
    """Serve a study database to many workers through Optuna's gRPC storage proxy (workers: --storage grpc://HOST:PORT)."""
    import signal
    import threading

    from sweep.stores.proxy import make_server
    from sweep.stores.storage import StorageSpec, check_identity
    from sweep.stores.urls import redact

    spec = StorageSpec(storage)
    host = bind_host(host, expose, "the proxy")
    if spec.is_rdb and not spec.is_proxy:
        check_identity(spec)
    server = make_server(spec, host, port, threads)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    server.start()
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"sweep proxy on grpc://{shown}:{port} over {redact(storage)} (Ctrl-C to stop)", err=True)
    try:
        while not stop.wait(1):
            pass
    finally:
        server.stop(grace=UI_GRACE).wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(argv: list[str], env: dict[str, str], grace: float = UI_GRACE) -> int:
    """Run a server in a session of its own, for as long as it runs; return its exit code.

    SIGINT, SIGTERM and SIGHUP (Ctrl-C, ``kill``, a service manager, a closed terminal) are
    passed on to the session's whole process group, which is then waited for: processes
    still there after ``grace`` seconds are killed. Stopped that way, the exit code is 0.
    """
    import signal
    import time

    asked: list[int] = []
    group: list[int] = []

    def forward(signum, frame) -> None:
        asked.append(signum)
        if group:
            _signal_group(group[0], signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        proc = subprocess.Popen(argv, env=env, start_new_session=True)  # its pid is its group's id
        group.append(proc.pid)
        if asked:  # a signal came while it started
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = None
        while proc.poll() is None or _group_alive(proc.pid):
            if deadline is None and (asked or proc.returncode is not None):
                if proc.returncode is not None:  # the server ended by itself: what it started goes too
                    _signal_group(proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() >= deadline:
                _signal_group(proc.pid, signal.SIGKILL)
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if asked else proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # all gone already
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
