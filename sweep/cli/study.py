"""The commands on a study: ``run`` and ``worker`` run its trials; ``report``, ``refine``, ``best``
and ``list`` read what they stored."""

from __future__ import annotations

from pathlib import Path

import click

from sweep import limits
from sweep.cli.options import (
    REPORT_DIR,
    STUDY_DIR,
    WORKERS,
    FiniteFloatRange,
    no_tracking_option,
    quantile_option,
    storage_from_flag,
    storage_option,
    stores_from_flags,
    tracking_option,
    trial_options,
)
from sweep.words import plural, show_number

SHOWN_PARETO = 5  # Pareto trials `sweep run` prints; summary.txt lists them all


@click.command()
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

    from sweep.run.runner import run_study
    from sweep.run.study import retried_since
    from sweep.spec.file import load_spec

    spec = load_spec(study_file)
    stores = stores_from_flags(storage, tracking_uri, no_tracking)
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
    from sweep.schema import BEST_VALIDATION_ACCURACY, GAP, TEST_ACCURACY, TRAINING_SECONDS, TrialRecord
    from sweep.spec.study import used
    from sweep.stores.urls import redact
    from sweep.tracking.summary import best_trials, state_counts

    trials = study.get_trials(deepcopy=False)
    count = state_counts(trials)
    lines = [
        f"Study {study.study_name}: {plural(len(trials), 'trial')} "
        f"({count['COMPLETE']} complete, {count['PRUNED']} pruned, {count['FAIL']} failed)"
    ]
    best = best_trials(study)
    if best:
        multi = len(study.directions) > 1
        if multi:
            lines.append(f"Pareto front: {len(best)} trials (values in objective order)")
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
    from sweep.report.files import write_report
    from sweep.schema import PARENT_ATTR
    from sweep.tracking.store import check_reachable
    from sweep.tracking.tracker import Tracker

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


@click.command()
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
@quantile_option(
    "Fraction of the completed trials that makes the best region (single objective; "
    "a multi-objective study's is its Pareto front)."
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
    from sweep.run.study import load_stored_study

    stores = stores_from_flags(storage, tracking_uri, no_tracking)
    study, _ = load_stored_study(study_name, stores, read_only=True)
    _write_report(
        study,
        stores,
        Path(out) if out else REPORT_DIR / study_name,
        quantile=quantile,
        gap_threshold=gap_threshold,
        heatmap_params=heatmap or None,
    )


@click.command()
@click.argument("study_name", metavar="STUDY")
@storage_option
@tracking_option
@no_tracking_option("With --run: do not log to MLflow.")
@quantile_option(
    "Fraction of the completed trials whose region the new study searches (single "
    "objective; a multi-objective study's region is its Pareto front)."
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
    from sweep.run.study import load_stored_study
    from sweep.spec.space import Fixed
    from sweep.stores.storage import open_storage

    stores = stores_from_flags(storage, tracking_uri, no_tracking)
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


@click.command()
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
    from sweep.run.study import load_stored_study
    from sweep.schema import RUN_ATTR
    from sweep.spec.study import all_params, used
    from sweep.tracking.registry import SHOWN_METRICS, best_trial, check_export_path, export_weights, trial_metrics
    from sweep.tracking.tracker import Tracker

    if export:
        check_export_path(export)  # (before anything is read)
    stores = stores_from_flags(storage, tracking_uri)
    study, spec = load_stored_study(study_name, stores, read_only=True)
    trial = best_trial(study, spec)
    objective = spec.objectives[0]
    metrics = trial_metrics(trial)
    click.echo(
        f"Best trial #{trial.number} of {study_name}: {objective.metric} {trial.value:.6g} ({objective.direction})"
    )
    click.echo("  " + "  ".join(f"{name} {metrics[name]:.6g}" for name in SHOWN_METRICS if name in metrics))
    click.echo("  params: " + " ".join(f"{k}={show_number(v)}" for k, v in used(spec, trial.params).items()))
    click.echo(f"  network: {all_params(spec, trial.params)['sizes']}")
    if export:
        tracker = Tracker(stores.tracking_uri, study_name) if RUN_ATTR in trial.user_attrs else None
        click.echo(f"Weights: {export_weights(study, trial, tracker, export)}")


@click.command()
@click.option("--study", "study_name", required=True, help="Name of an existing study.")
@trial_options
def worker(study_name, n_trials, timeout, storage, tracking_uri, no_tracking, no_pack, data_dir) -> None:
    """Join an existing study (from any machine) and run trials until its budget is spent."""
    from threadpoolctl import threadpool_limits

    from sweep.run.study import Budget, join_stored_study, load_data
    from sweep.run.worker import Worker, stop_on_signals

    stores = stores_from_flags(storage, tracking_uri, no_tracking)
    opened = join_stored_study(study_name, stores)
    budget = Budget.start(opened.spec, n_trials, timeout)
    data = load_data(opened.spec, data_dir)
    with threadpool_limits(1), stop_on_signals():  # SIGTERM, like Ctrl-C: stop at the next epoch's end
        ran = Worker(opened, budget, data, pack=not no_pack).run()
    click.echo(f"worker ran {plural(ran, 'trial')} of {study_name}")


@click.command(name="list")
@storage_option
def list_studies(storage) -> None:
    """List the studies in the storage with trial counts by state and best value."""
    import optuna

    from sweep.stores.storage import open_storage
    from sweep.tracking.summary import state_counts

    spec = storage_from_flag(storage)
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
