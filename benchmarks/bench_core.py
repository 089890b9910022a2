"""Seconds per epoch of the fast trainer beside the per-example reference, in one process.

Trains (784, 30, 10), batch size 10, η = 0.1, on the 50000 MNIST training images,
monitoring off (the SGD pass alone), with one BLAS thread: at these matrix sizes a
second thread only adds synchronisation. Prints both timings and their ratio.

    python benchmarks/bench_core.py [--data-dir DIR] [--epochs 3] [--ref-batches 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from core.config import TrainConfig
from core.data import load_mnist
from core.model import NetworkSpec, init_params
from core.reference import ReferenceNetwork
from core.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def fast_epochs(spec: NetworkSpec, data, epochs: int, lmbda: float) -> list[float]:
    config = TrainConfig(
        epochs=epochs,
        batch_size=10,
        eta=0.1,
        lmbda=lmbda,
        seed=0,
        monitor_training_cost=False,
        monitor_training_accuracy=False,
        monitor_validation_cost=False,
        monitor_validation_accuracy=False,
    )
    return [r.seconds for r in train(spec, config, data).history]


def reference_epoch(spec: NetworkSpec, data, batches: int) -> float:
    """Seconds for one epoch of the column-vector reference, extrapolated from ``batches`` batches."""
    rng = np.random.default_rng(0)
    net = ReferenceNetwork(spec, init_params(spec, rng))
    Y = np.eye(10, dtype=np.float32)[data.y]
    perm = rng.permutation(len(data.X))
    start = time.perf_counter()
    for k in range(0, batches * 10, 10):
        rows = perm[k : k + 10]
        net.update_mini_batch(data.X[rows], Y[rows], 0.1, 0.0, len(data.X))
    return (time.perf_counter() - start) * (len(data.X) / 10) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED if SHARED.is_dir() else None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ref-batches", type=int, default=1000, help="reference batches timed (of 5000)")
    args = parser.parse_args()
    data = load_mnist(args.data_dir).train
    spec = NetworkSpec((784, 30, 10))
    print(f"training set {data.X.shape}, network {spec.sizes}, batch 10, float32")
    with threadpool_limits(1):
        ref = reference_epoch(spec, data, args.ref_batches)
        print(f"per-example reference   {ref:8.3f} s/epoch  (from {args.ref_batches} of 5000 batches)")
        for lmbda in (0.0, 5.0):
            times = fast_epochs(spec, data, args.epochs, lmbda)
            best, med = min(times), statistics.median(times)
            print(
                f"fast, lambda={lmbda:<4}       {med:8.3f} s/epoch median, {best:.3f} best "
                f"of {args.epochs}  ->  {ref / med:5.1f}x the reference (best {ref / best:.1f}x)"
            )
    with threadpool_limits(2):
        med = statistics.median(fast_epochs(spec, data, args.epochs, 0.0))
        print(f"fast, 2 BLAS threads    {med:8.3f} s/epoch median  ->  {ref / med:5.1f}x")


if __name__ == "__main__":
    main()
