"""What each training option contributed to a study's best network: an ablation.

Retrains the study's best trial as it ran, then with one option at a time turned off
(momentum, dropout, early stopping, the η schedule, L2, the second hidden layer), on the
study's own data and seed, and prints validation and test accuracy of each beside the found
configuration's. Options the best trial did not use are left out. Runs ``--jobs`` trainings
at once (one per core).

    python benchmarks/ablate_best.py STUDY [--storage PATH_OR_URL] [--data-dir DIR] [--jobs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from core.config import TrainConfig
from core.model import NetworkSpec, evaluate
from core.train import train
from sweep import best_trial, load_data, load_stored_study, trial_config
from sweep.cli.options import stores_from_flags  # the storage as `sweep best --storage` reads it


def variants(network: NetworkSpec, config: TrainConfig) -> dict[str, tuple[NetworkSpec, TrainConfig]]:
    """The found configuration and each option it uses switched off, by label."""
    off = {
        "momentum": {"momentum": 0.0},
        "dropout": {"dropout": 0.0},
        "early stopping": {"patience": None},
        "η schedule": {"eta_patience": None},
        "L2": {"lmbda": 0.0},
    }
    found = {"found": (network, config)}
    for label, change in off.items():
        name, value = next(iter(change.items()))
        if getattr(config, name) not in (None, 0, 0.0):
            found[f"no {label}"] = (network, dataclasses.replace(config, **change))
    if network.n_layers > 2:
        found["one hidden layer"] = (
            dataclasses.replace(network, sizes=(*network.sizes[:2], network.sizes[-1])),
            config,
        )
    return found


_DATA = None  # the study's dataset, loaded once before the pool forks


def _run(job: tuple[str, NetworkSpec, TrainConfig]) -> tuple[str, float, float, int, float]:
    label, network, config = job
    data = _DATA
    start = time.perf_counter()
    result = train(network, config, data.train, data.validation)
    epoch = result.best_epoch or len(result.history)
    validation = result.history[epoch - 1].validation_accuracy
    test = evaluate(network, result.params, data.test.X, data.test.y)[1]
    return label, validation, test, len(result.history), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--storage")
    parser.add_argument("--data-dir")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    study, spec = load_stored_study(args.study, stores_from_flags(args.storage, None, no_tracking=True), read_only=True)
    trial = best_trial(study, spec)
    network, config = trial_config(spec, trial.params)
    print(f"study {args.study}: best trial #{trial.number}, {'-'.join(map(str, network.sizes))}, {config}")
    global _DATA
    _DATA = load_data(spec, args.data_dir)
    jobs = [(label, net, cfg) for label, (net, cfg) in variants(network, config).items()]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        rows = list(pool.map(_run, jobs))
    base = rows[0][2]
    print(f"{'variant':<18} {'validation':>10} {'test':>8} {'Δ test':>8} {'epochs':>6} {'seconds':>8}")
    for label, validation, test, epochs, seconds in rows:
        print(f"{label:<18} {validation:>10.4f} {test:>8.4f} {test - base:>+8.4f} {epochs:>6} {seconds:>8.0f}")


if __name__ == "__main__":
    main()
