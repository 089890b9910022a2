"""The ``sweep`` launcher: thin commands over the library; errors converted here, once.

Exit codes: 0 ok, 2 bad input (one line, no traceback), 1 unexpected, trials that keep failing or
workers killed before the budget was spent, 130 interrupted.
Only this module prints, reads flags or picks default paths.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path

import click

from sweep import limits
from sweep.errors import (
    DamagedStore,
    FileExists,
    OptionError,
    Stopped,
    StoreError,
    TrialsKeepFailing,
    UsageError,
    WorkersDied,
)
from sweep.words import plural

DEFAULT_STORE_DIR = Path("mlruns")
REPORT_DIR, STUDY_DIR = Path("reports"), Path("studies")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHOWN_PARETO = 5  # Pareto trials `sweep run` prints; summary.txt lists them all
# The UI's server: no job runner (seven huey consumers, each importing mlflow, that serve only
# GenAI features: they doubled the start-up time on two cores), no usage telemetry, and not
# the starlette deprecation that mlflow's own import triggers.
UI_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PYTHONWARNINGS": "ignore:starlette.middleware.wsgi is deprecated",
}
UI_GRACE = 10  # seconds the UI's processes have to stop before they are killed
DEBUG_ENV = "MLP_SWEEP_DEBUG"  # =1: like --debug
STORE_FLAGS = {StoreError.STORAGE: "--storage", StoreError.TRACKING: "--tracking-uri"}  # the flag naming each store


def default_storage() -> str:
    return str((DEFAULT_STORE_DIR / "optuna.journal").resolve())


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(DEFAULT_STORE_DIR / 'mlflow.db').resolve()}"


def _stores(storage: str | None, tracking_uri: str | None, no_tracking: bool = False):
    from sweep.run.runner import Stores
    from sweep.stores.storage import StorageSpec, check_identity
    from sweep.tracking.tracker import check_tracking_uri

    spec = StorageSpec(storage or default_storage())
    if storage is not None:  # (the default journal's directory is made when the first study is)
        check_identity(spec)
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help=f"Show the traceback of an unexpected error (also ${DEBUG_ENV}=1).")
def cli(debug) -> None:
    """Hyperparameter sweeps of a NumPy MLP on MNIST: Optuna studies, tracked in MLflow."""
    from sweep.run.runner import configure_libraries

    # reports are files: matplotlib (imported later, if at all) draws without a GUI
    os.environ.setdefault("MPLBACKEND", "Agg")
    configure_libraries()  # (``main`` reads --debug itself: it handles what the command raises)


@cli.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@trial_options
@click.option(
    "--workers",
    type=WORKERS,
    default=1,
    show_default=True,
    help=f"Local worker processes (one BLAS thread each; at most {limits.WORKERS_PER_CPU} per CPU).",
)
@click.option("--no-report", is_flag=True, help="Do not write the report (reports/STUDY) at the end.")
def run(
    study_file, n_trials, timeout, storage, tracking_uri, no_tracking, no_pack, data_dir, workers, no_report
) -> None:
    """Create or resume the study in STUDY_FILE and run it to its budget, then report on it."""
    from datetime import datetime

    from tqdm import tqdm

    from sweep.run.runner import retried_since, run_study
    from sweep.spec.file import load_spec

    spec = load_spec(study_file)
    stores = _stores(storage, tracking_uri, no_tracking)
    bar = tqdm(desc=spec.name, unit="trial", dynamic_ncols=True, disable=None)

    def on_progress(p) -> None:
        bar.total = p.total
        bar.n = p.done
        post = {k.lower(): v for k, v in p.counts.items() if k in ("PRUNED", "FAIL") and v}
        if p.best is not None:
            post = {"best": f"{p.best:.4g}", **post}
        bar.set_postfix(post, refresh=True)

    start = datetime.now()  # (Optuna's trial start times are local and naive)
    try:
        study = run_study(
            spec,
            stores,
            n_trials=n_trials,
            timeout=timeout,
            workers=workers,
            data_dir=data_dir,
            pack=not no_pack,
            on_progress=on_progress,
            data_progress=_download_progress(),
        )
    finally:
        bar.close()
    click.echo(summary(study, spec, stores, None if no_report else REPORT_DIR / spec.name))
    if retried := retried_since(study, start):
        click.echo(
            f"{plural(len(retried), 'trial')} retried (their worker process died): #{', #'.join(map(str, retried))}"
        )
    if not no_report:
        _write_report(study, stores, REPORT_DIR / spec.name)


def _download_progress():
    """A progress callback for dataset downloads, one bar per file."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int | None) -> None:
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(desc=f"download {name}", total=total, unit="B", unit_scale=True, leave=False)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return progress


def summary(study, spec, stores, report_dir: Path | None = None) -> str:
    """A few lines on how the study stands and where its results are.

    Of a multi-objective study's Pareto front it shows the first SHOWN_PARETO trials (best on
    the first objective first) and says how many more there are and where they all are: the
    summary.txt in ``report_dir``, or the one ``sweep report`` writes.
    """
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from sweep.schema import BEST_VALIDATION_ACCURACY, GAP, TEST_ACCURACY, TRAINING_SECONDS, TrialRecord
    from sweep.spec.study import used
    from sweep.stores.urls import redact

    trials = study.get_trials(deepcopy=False)
    by_state = {s: sum(t.state == s for t in trials) for s in TrialState}
    lines = [
        f"Study {study.study_name}: {plural(len(trials), 'trial')} "
        f"({by_state[TrialState.COMPLETE]} complete, {by_state[TrialState.PRUNED]} pruned, "
        f"{by_state[TrialState.FAIL]} failed)"
    ]
    if by_state[TrialState.COMPLETE]:
        multi = len(study.directions) > 1
        if multi:
            sign = 1 if study.directions[0] == StudyDirection.MINIMIZE else -1
            best = sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))
            lines.append(f"Pareto front: {len(best)} trials (values in objective order)")
        else:
            best = [study.best_trial]
        for t in best[:SHOWN_PARETO]:
            metrics = TrialRecord.of(t).metrics or {}
            values = ", ".join(f"{v:.4g}" for v in t.values)
            lines.append(
                f"{'Pareto' if multi else 'Best'} trial #{t.number}: {values}   "
                + " ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in used(spec, t.params).items()
                )
            )
            shown = (TEST_ACCURACY, BEST_VALIDATION_ACCURACY, GAP, TRAINING_SECONDS)
            lines.append("  " + "  ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics))
        if len(best) > SHOWN_PARETO:
            where = (
                f"see {report_dir / 'summary.txt'}"
                if report_dir is not None
                else f"`sweep report {study.study_name}` lists them all in summary.txt"
            )
            lines.append(f"... and {len(best) - SHOWN_PARETO} more, {where}")
    if stores.tracking_uri:
        lines.append(f"Runs: {redact(stores.tracking_uri)} (browse with `sweep ui`)")
    return "\n".join(lines)


def _write_report(study, stores, out_dir: Path, **options) -> None:
    """Write the report, print its summary, log it to the study's MLflow parent run."""
    from sweep.report.tables import write_report
    from sweep.schema import PARENT_ATTR
    from sweep.tracking.tracker import Tracker, check_reachable

    parent = study.user_attrs.get(PARENT_ATTR)
    if stores.tracking_uri and parent:
        check_reachable(stores.tracking_uri)  # before any report file is written
    result = write_report(study, out_dir, **options)
    if result.region is not None:
        click.echo(result.region.summary())
    for name, why in result.skipped.items():
        click.echo(f"left out {name}: {why}")
    if stores.tracking_uri and parent:
        Tracker(stores.tracking_uri, study.study_name).log_artifacts(parent, result.out_dir)
    click.echo(
        f"Reports: {plural(len(result.files), 'file')} in {result.out_dir}"
        + (" (also artifacts of the study's MLflow run)" if stores.tracking_uri and parent else "")
    )


@cli.command()
@click.argument("study_name", metavar="STUDY")
@storage_option
@tracking_option
@no_tracking_option("Do not log the report to MLflow.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Directory for the report files [default: reports/STUDY].",
)
@click.option(
    "--quantile",
    type=FRACTION,
    default=0.10,
    show_default=True,
    help="Fraction of the completed trials that makes the best region (single objective; "
    "a multi-objective study's is its Pareto front).",
)
@click.option(
    "--gap-threshold",
    type=FiniteFloatRange(min=0),
    default=0.05,
    show_default=True,
    help="Training minus validation accuracy above which a trial is flagged as over-fitting.",
)
@click.option(
    "--heatmap", nargs=2, metavar="X Y", help="Parameters on the heat map's axes [default: the first two numeric ones]."
)
def report(study_name, storage, tracking_uri, no_tracking, out, quantile, gap_threshold, heatmap) -> None:
    """Write STUDY's report (CSVs, summary, plots) and log it to the study's MLflow parent run."""
    from sweep.run.runner import load_stored_study

    stores = _stores(storage, tracking_uri, no_tracking)
    study, _ = load_stored_study(study_name, stores, read_only=True)
    _write_report(
        study,
        stores,
        Path(out) if out else REPORT_DIR / study_name,
        quantile=quantile,
        gap_threshold=gap_threshold,
        heatmap_params=heatmap or None,
    )


@cli.command()
@click.argument("study_name", metavar="STUDY")
@storage_option
@tracking_option
@no_tracking_option("With --run: do not log to MLflow.")
@click.option(
    "--quantile",
    type=FRACTION,
    default=0.10,
    show_default=True,
    help="Fraction of the completed trials whose region the new study searches (single "
    "objective; a multi-objective study's region is its Pareto front).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Study file to write, never overwritten [default: studies/NEW_NAME.toml].",
)
@click.option("--run", "run_it", is_flag=True, help="Run the refined study right away.")
@click.option("--workers", type=WORKERS, default=1, show_default=True, help="With --run: local worker processes.")
@click.pass_context
def refine(ctx, study_name, storage, tracking_uri, no_tracking, quantile, out, run_it, workers) -> None:
    """Write a study file searching the best region of STUDY (narrower ranges, finer grid, best point first)."""
    import optuna

    from sweep.report.refine import refine as refine_study
    from sweep.report.refine import write_refined
    from sweep.run.runner import load_stored_study
    from sweep.spec.space import Fixed
    from sweep.stores.storage import open_storage

    stores = _stores(storage, tracking_uri, no_tracking)
    study, spec = load_stored_study(study_name, stores, read_only=True)
    taken = set(optuna.get_all_study_names(open_storage(stores.storage, read_only=True)))
    taken |= {path.stem for path in STUDY_DIR.glob("*.toml")}
    refined = refine_study(study, spec, quantile, taken=taken)
    path = write_refined(refined, Path(out) if out else STUDY_DIR / f"{refined.name}.toml")
    click.echo(f"wrote {path}: {refined.description}")
    for name, param in refined.space.items():
        click.echo(f"  {name}: {f'fixed at {param.value!r}' if isinstance(param, Fixed) else param.describe()}")
    if run_it:
        ctx.invoke(
            run,
            study_file=str(path),
            n_trials=None,
            timeout=None,
            workers=workers,
            storage=storage,
            tracking_uri=tracking_uri,
            no_tracking=no_tracking,
            no_report=False,
            no_pack=False,
            data_dir=None,
        )


@cli.command()
@click.argument("study_name", metavar="STUDY")
@storage_option
@tracking_option
@click.option(
    "--export",
    type=click.Path(),
    metavar="PATH",
    help="Write the best trial's weights to PATH, a new .npz file (core.model.load_params reads it).",
)
def best(study_name, storage, tracking_uri, export) -> None:
    """Show STUDY's best trial (single objective) and, with --export, write its weights."""
    from sweep.run.runner import load_stored_study
    from sweep.schema import RUN_ATTR
    from sweep.spec.study import all_params, used
    from sweep.tracking.registry import SHOWN_METRICS, best_trial, check_export_path, export_weights, trial_metrics
    from sweep.tracking.tracker import Tracker, short

    if export:
        check_export_path(export)  # (before anything is read)
    stores = _stores(storage, tracking_uri)
    study, spec = load_stored_study(study_name, stores, read_only=True)
    trial = best_trial(study, spec)
    objective = spec.objectives[0]
    metrics = trial_metrics(trial)
    click.echo(
        f"Best trial #{trial.number} of {study_name}: {objective.metric} {trial.value:.6g} ({objective.direction})"
    )
    click.echo("  " + "  ".join(f"{name} {metrics[name]:.6g}" for name in SHOWN_METRICS if name in metrics))
    click.echo("  params: " + " ".join(f"{k}={short(v)}" for k, v in used(spec, trial.params).items()))
    click.echo(f"  network: {all_params(spec, trial.params)['sizes']}")
    if export:
        tracker = Tracker(stores.tracking_uri, study_name) if RUN_ATTR in trial.user_attrs else None
        click.echo(f"Weights: {export_weights(study, trial, tracker, export)}")


@cli.command()
@click.option("--study", "study_name", required=True, help="Name of an existing study.")
@trial_options
def worker(study_name, n_trials, timeout, storage, tracking_uri, no_tracking, no_pack, data_dir) -> None:
    """Join an existing study (from any machine) and run trials until its budget is spent."""
    from threadpoolctl import threadpool_limits

    from sweep.run.runner import Budget, Worker, join_stored_study, load_data, stop_on_signals

    stores = _stores(storage, tracking_uri, no_tracking)
    opened = join_stored_study(study_name, stores)
    budget = Budget.start(opened.spec, n_trials, timeout)
    data = load_data(opened.spec, data_dir)
    with threadpool_limits(1), stop_on_signals():  # SIGTERM, like Ctrl-C: stop at the next epoch's end
        ran = Worker(opened, budget, data, pack=not no_pack).run()
    click.echo(f"worker ran {plural(ran, 'trial')} of {study_name}")


@cli.command(name="list")
@storage_option
def list_studies(storage) -> None:
    """List the studies in the storage with trial counts by state and best value."""
    import optuna

    from sweep.stores.storage import StorageSpec, check_identity, open_storage
    from sweep.tracking.summary import state_counts

    spec = StorageSpec(storage or default_storage())
    if storage is not None:
        check_identity(spec)
    if not spec.is_rdb and not spec.journal_path.exists():
        click.echo("no studies yet")
        return
    storage = open_storage(spec, read_only=True)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=True)
    if not summaries:
        click.echo("no studies yet")
        return
    click.echo(f"{'study':32} {'trials':>6} {'complete':>8} {'pruned':>6} {'failed':>6} {'running':>7}  best")
    for s in sorted(summaries, key=lambda s: s.study_name):
        trials = optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
        count = state_counts(trials)
        best = "-"
        if s.best_trial is not None:
            best = ", ".join(f"{v:.4g}" for v in s.best_trial.values)
        click.echo(
            f"{s.study_name:32} {len(trials):6} {count['COMPLETE']:8} {count['PRUNED']:6} "
            f"{count['FAIL']:6} {count['RUNNING']:7}  {best}"
        )


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


@cli.command()
@tracking_option
@click.option("--host", help="Interface to bind [default: 127.0.0.1; with --expose: 0.0.0.0].")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port to listen on.")
@click.option(
    "--expose",
    is_flag=True,
    help="Listen beyond loopback (on 0.0.0.0 unless --host says where): anyone who can reach it "
    "can read and change every run.",
)
def ui(tracking_uri, host, port, expose) -> None:
    """Open the MLflow UI over the project's tracking store (loopback only unless --expose)."""
    from sweep.tracking.tracker import check_tracking_uri, study_views

    check_tracking_uri(tracking_uri or default_tracking_uri())
    argv, env = ui_command(tracking_uri or default_tracking_uri(), host, port, expose)
    address = f"http://{argv[argv.index('--host') + 1]}:{port}"
    click.echo(f"MLflow UI on {address} (Ctrl-C to stop)")
    for name, path in sorted(study_views(tracking_uri or default_tracking_uri()).items()):
        click.echo(f"  {name}: {address}/{path}")
    raise SystemExit(serve(argv, {**os.environ, **env}))


@cli.command()
@click.option(
    "--storage",
    metavar="URL",
    required=True,
    help="The study database the proxy serves: postgresql://... (or sqlite:///FILE).",
)
@click.option("--host", help="Interface to bind [default: 127.0.0.1; with --expose: 0.0.0.0].")
@click.option("--port", type=click.IntRange(1, 65535), default=13000, show_default=True, help="Port to listen on.")
@click.option(
    "--expose",
    is_flag=True,
    help="Listen beyond loopback (on 0.0.0.0 unless --host says where): anyone who can reach it "
    "can read and change every study in the database.",
)
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


def damaged_store_message(exc: DamagedStore) -> str:
    """What is wrong with a damaged store file and how to recover it (it is never repaired here)."""
    if exc.line is None:
        return (
            f"{exc.path} is damaged: {exc.problem}; nothing was written to it; restore it from a backup "
            "or move it aside to start afresh"
        )
    tail = exc.lines - exc.line + 1
    if exc.readable:
        how = (
            f"copy it aside and remove its last {plural(tail, 'line')}; until then `sweep list`, "
            "`report` and `refine` still read the lines before it"
        )
    else:
        how = (
            f"copy it aside and remove or mend line {exc.line} and any later line that is not JSON "
            "(Optuna cannot read past it, so no command can use it until then)"
        )
    return f"{exc.path} is damaged: line {exc.line} of {exc.lines} is {exc.problem}; nothing was written to it; {how}"


def _debug(args: list[str]) -> bool:
    """Whether --debug (an option of ``sweep`` itself, before the command) or $MLP_SWEEP_DEBUG=1 asks for tracebacks."""
    leading = list(itertools.takewhile(lambda arg: arg.startswith("-"), args))
    return "--debug" in leading or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: the one place where errors become messages and exit codes."""
    debug = _debug(sys.argv[1:] if argv is None else list(argv))
    try:
        code = cli.main(args=argv, prog_name="sweep", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        code = 2
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "sweep"
        click.echo(f"{command}: error: {exc.format_message()}", err=True)
        code = 2
    except DamagedStore as exc:
        click.echo(f"sweep: error: {damaged_store_message(exc)}", err=True)
        code = 2
    except StoreError as exc:
        where = f"{STORE_FLAGS[exc.store]} {exc.url}" if exc.url else STORE_FLAGS[exc.store]
        click.echo(f"sweep: error: {where}: {exc.problem}", err=True)
        code = 2
    except OptionError as exc:
        click.echo(f"sweep: error: --{exc.option} {exc.value}: {exc.problem}", err=True)
        code = 2
    except FileExists as exc:  # (refine's study file)
        click.echo(f"sweep: error: {exc.path} already exists; choose another --out or remove it", err=True)
        code = 2
    except UsageError as exc:
        click.echo(f"sweep: error: {exc}", err=True)
        code = 2
    except TrialsKeepFailing as exc:
        click.echo(
            f"sweep: error: stopped study {exc.study}: its last {exc.count} trials failed, the last with "
            f"{exc.reason.splitlines()[0] if exc.reason else 'no reason'}; "
            f"`sweep report {exc.study}` lists every trial's reason",
            err=True,
        )
        code = 1
    except WorkersDied as exc:
        import signal

        how = ", ".join(sorted({signal.Signals(n).name for n in exc.signals}))
        click.echo(
            f"sweep: error: study {exc.study}: {plural(len(exc.signals), 'worker process', 'worker processes')} "
            f"killed ({how}) before its budget was spent ({exc.done} of {exc.budget} trials ended); "
            "run the same command again to continue",
            err=True,
        )
        code = 1
    except (Stopped, KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted: finished trials are kept; run the same command again to continue", err=True)
        code = 130
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except Exception as exc:
        if debug:
            traceback.print_exc()
        where = "the traceback above says where" if debug else f"--debug or {DEBUG_ENV}=1 shows where"
        first = str(exc).strip().splitlines()
        click.echo(
            f"sweep: unexpected error: {type(exc).__name__}{': ' + first[0] if first else ''} ({where}); "
            "please report it",
            err=True,
        )
        code = 1
    if argv is None:  # the process's own command line: it ends here
        # Everything is written and closed. The interpreter's teardown would walk every object
        # that mlflow, SQLAlchemy and pandas made (about a second); frozen, they are left alone.
        gc.freeze()
    sys.exit(code or 0)
