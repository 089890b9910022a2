"""Wall time of the homework grid through ``sweep run``, beside the homework's own way.

The grid is ``studies/homework-grid-mnist.toml``: 121 trials of [784, 15, 10], 10 epochs,
5000 training and 1000 validation images of full MNIST, accuracies monitored every epoch.
It runs as a person runs it (``sweep run``, no report) with tracking on and off and packing
on and off, each in fresh stores (a new temp dir: the tracking database is created first),
and, with packing, once more in the same stores under another study name (warm stores,
as every study after a project's first finds them). The reference trains a few of the same grid
points per example (the homework's column vectors, data loaded once, training and
validation accuracy evaluated every epoch) in this process; the ratio per trial compares
it with the same trial's training time in the sweep, the overall ratio with the sweep's
wall time for the whole grid (the reference's grid time is extrapolated from its points).

Tracking's CPU per trial is measured beside MLflow's floor: N runs logged straight through
``MlflowClient`` (create_run, one log_batch with the same tags, params and metrics, set_terminated)
against N trials logged as a local worker's are (``RelayedTracker`` over a pipe to the launcher's
``Relay``, which logs through the project's ``Tracker``), both in one SQLite store, CPU seconds of
this process (both ends of the pipe), in alternating rounds.

    python benchmarks/bench_sweep.py [--workers 2] [--data-dir DIR] [--ref-points 3] [--runs 100]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

from core.data import load_mnist
from core.history import EpochRecord
from core.model import NetworkSpec, evaluate, init_params
from core.reference import ReferenceNetwork
from sweep import Tracker, load_spec
from sweep.cli.options import tracking_uri_in
from sweep.tracking import store as tracking
from sweep.tracking.relay import Relay, RelayedTracker

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "homework-grid-mnist.toml"
SHARED = ROOT.parent / "shared" / "data" / "mnist"


def run_sweep(workdir: Path, study: Path, workers: int, data_dir: Path, *flags: str) -> tuple[float, float]:
    """Wall seconds of ``sweep run`` and the peak RSS (MB) of it or any worker."""
    env = {**os.environ, "MNIST_DIR": str(data_dir.resolve())}  # (the sweep runs in workdir)
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "sweep", "run", str(study), "--workers", str(workers), "--no-report", *flags],
        cwd=workdir,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def reference_trial(spec: NetworkSpec, data, batch_size: int, eta: float, epochs: int) -> float:
    """Seconds for one grid point the homework's way: per example, accuracies every epoch."""
    rng = np.random.default_rng(0)
    net = ReferenceNetwork(spec, init_params(spec, rng))
    X, Y = data.train.X, np.eye(10, dtype=np.float32)[data.train.y]
    start = time.perf_counter()
    for _ in range(epochs):
        perm = rng.permutation(len(X))
        for k in range(0, len(X), batch_size):
            rows = perm[k : k + batch_size]
            net.update_mini_batch(X[rows], Y[rows], eta, 0.0, len(X))
        params = net.params()
        evaluate(spec, params, data.train.X, data.train.y)  # the homework monitored both accuracies
        evaluate(spec, params, data.validation.X, data.validation.y)
    return time.perf_counter() - start


EPOCHS = 10


def _epochs() -> list[EpochRecord]:
    return [EpochRecord(e, 1.0 / e, 0.5 + e / 100, 1.1 / e, 0.5 + e / 200, 0.01, 0.002) for e in range(1, EPOCHS + 1)]


PARAMS = {
    "batch_size": 10,
    "eta": 0.1,
    "sizes": "784-15-10",
    "activation": "relu",
    "cost": "cross_entropy",
    "epochs": EPOCHS,
    "lmbda": 0.0,
    "seed": 0,
    "dataset": "mnist",
    "n_train": 5000,
    "n_validation": 1000,
    "n_test": 1000,
}
SUMMARY = {
    "best_validation_accuracy": 0.9,
    "gap": 0.05,
    "test_accuracy": 0.9,
    "training_seconds": 0.3,
    "epochs_run": float(EPOCHS),
}


def floor_cpu(client, experiment_id: str, parent: str, n: int) -> float:
    """CPU seconds per run logged straight through MlflowClient: the same tags, params and metrics."""
    from mlflow.entities import Metric, Param

    start = time.process_time()
    for number in range(n):
        tags = {
            "mlflow.parentRunId": parent,
            "mlp_sweep.study": "bench",
            "mlp_sweep.trial": str(number),
            "mlp_sweep.role": "trial",
        }
        run = client.create_run(experiment_id, run_name=f"trial-{number:04d}", tags=tags)
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, getattr(r, key), now, r.epoch)
            for r in _epochs()
            for key in ("training_cost", "training_accuracy", "validation_cost", "validation_accuracy")
        ]
        metrics += [Metric("epoch_seconds", r.seconds, now, r.epoch) for r in _epochs()]
        metrics += [Metric(key, value, now, 0) for key, value in SUMMARY.items()]
        client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=[Param(k, str(v)) for k, v in PARAMS.items()],
            tags=[],
            synchronous=True,
        )
        client.set_terminated(run.info.run_id, "FINISHED")
    return (time.process_time() - start) / n


def relayed_cpu(tracker: Tracker, parent: str, n: int) -> float:
    """CPU seconds per trial logged as a local worker's: over a pipe to the launcher's Relay."""
    ours, theirs = multiprocessing.Pipe()
    relay = Relay(tracker, [ours])
    worker = RelayedTracker(theirs)
    start = time.process_time()
    relay.start()
    for number in range(n):
        run = worker.start_trial(parent, number, PARAMS)
        for record in _epochs():
            run.log_epoch(record)
        assert run.run_id  # (what the trial stores)
        run.finish("COMPLETE", SUMMARY)
    theirs.close()
    relay.join()
    assert relay.error is None, relay.error
    return (time.process_time() - start) / n


def tracking_overhead(n: int, rounds: int = 3) -> None:
    """Print the project's tracking CPU per trial beside MLflow's floor (medians of ``rounds``)."""
    tracking.configure()
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        uri = tracking_uri_in(Path(tmp))
        tracker = Tracker(uri, "bench")
        parent = tracker.parent_run(None, "bench")
        client = MlflowClient(uri)
        floor_experiment = client.create_experiment("floor", artifact_location=tracking.artifact_root_for(uri))
        floor_cpu(client, floor_experiment, parent, 5)  # warm both paths up
        relayed_cpu(tracker, parent, 5)
        floors, ours = [], []
        for _ in range(rounds):
            floors.append(floor_cpu(client, floor_experiment, parent, n))
            ours.append(relayed_cpu(tracker, parent, n))
    floor, mine = float(np.median(floors)), float(np.median(ours))
    print(f"tracking, CPU per trial ({n} runs x {rounds} rounds, {EPOCHS} epochs each, SQLite):")
    print(f"  MLflow's floor (MlflowClient: create_run, log_batch, set_terminated) {1000 * floor:6.1f} ms")
    print(
        f"  the project's (worker -> pipe -> launcher's Relay -> Tracker)        {1000 * mine:6.1f} ms"
        f"   -> {mine / floor:.2f}x the floor"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--ref-points", type=int, default=3, help="grid points trained the reference way")
    parser.add_argument("--runs", type=int, default=100, help="runs per round of the tracking measurement")
    parser.add_argument("--tracking-only", action="store_true", help="only the tracking measurement")
    args = parser.parse_args()
    tracking_overhead(args.runs)
    if args.tracking_only:
        return
    spec = load_spec(STUDY)
    print(f"{spec.name}: 121 trials, [784, 15, 10], 10 epochs, 5000/1000 images, {args.workers} workers")

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in [
            ("tracking, packing", ()),
            ("no tracking, packing", ("--no-tracking",)),
            ("tracking, no packing", ("--no-pack",)),
            ("no tracking, no packing", ("--no-tracking", "--no-pack")),
        ]:
            workdir = Path(tmp) / label.replace(", ", "-").replace(" ", "_")
            workdir.mkdir()
            wall, rss = run_sweep(workdir, STUDY, args.workers, args.data_dir, *flags)
            runs[label] = (wall, workdir)
            print(f"  sweep run, {label:28} {wall:6.2f} s wall   (peak RSS so far {rss:.0f} MB)")
            if "no packing" not in label:  # the same grid again, as a second study in these stores
                again = workdir / "again.toml"
                again.write_text(STUDY.read_text().replace(f'name = "{spec.name}"', f'name = "{spec.name}-again"'))
                wall, rss = run_sweep(workdir, again, args.workers, args.data_dir, *flags)
                runs[f"{label}, warm"] = (wall, workdir)
                print(f"  sweep run, {label + ', warm':28} {wall:6.2f} s wall   (peak RSS so far {rss:.0f} MB)")
        for stores in ("", ", warm"):
            tracked, untracked = runs[f"tracking, packing{stores}"][0], runs[f"no tracking, packing{stores}"][0]
            print(
                f"  tracking overhead{stores or ', fresh'}: {tracked - untracked:+.2f} s = "
                f"{100 * (tracked - untracked) / tracked:.1f} % of the sweep's wall time"
            )

        journal = runs["tracking, packing"][1] / "mlruns" / "optuna.journal"
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        trials = optuna.load_study(study_name=spec.name, storage=storage).trials
        data = load_mnist(args.data_dir, n_train=5000, n_validation=1000, n_test=1000)
        network = NetworkSpec((784, 15, 10))
        picks = [trials[i] for i in np.linspace(0, len(trials) - 1, args.ref_points).astype(int)]
        print(f"\n  {'grid point':22} {'reference s':>12} {'sweep trial s':>14} {'ratio':>7}")
        ref_times = []
        for t in picks:
            b, eta = t.params["batch_size"], t.params["eta"]
            ref = reference_trial(network, data, b, eta, 10)
            ours = t.user_attrs["mlp_sweep.result"]["metrics"]["training_seconds"]
            ref_times.append(ref)
            print(f"  batch {b:3} eta {eta:4.2f}       {ref:12.2f} {ours:14.3f} {ref / ours:6.0f}x")
        ref_grid = float(np.mean(ref_times)) * 121
        print(
            f"\n  reference grid (121 x mean of {len(picks)} points): {ref_grid:7.1f} s  "
            f"(the homework's own run took 432 s)"
        )
        for label in ("tracking, packing", "tracking, packing, warm"):
            wall = runs[label][0]
            print(f"  sweep run, {label + ':':32} {wall:7.2f} s  -> {ref_grid / wall:5.0f}x overall (target 60x)")


if __name__ == "__main__":
    main()
