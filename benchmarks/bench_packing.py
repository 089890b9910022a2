"""Wall time of K trials trained one by one with ``train`` beside one ``train_packed`` pack.

The homework's grid on MNIST (5000 training, 1000 validation images), network
(784, 15, 10), 10 epochs, training and validation accuracy monitored every epoch,
one BLAS thread; K = 11 trials with η = 0.05, 0.10, …, 0.55 at batch sizes 10 and
50, and K = 1 to show what packing costs a lone trial. Each timing is the best of
``--repeat`` runs, since other processes may share the machine. Prints a table, then
the peak memory that one epoch of a K = 11 pack allocates on the full 50000 images.

    python benchmarks/bench_packing.py [--data-dir DIR] [--epochs 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

from threadpoolctl import threadpool_limits

from core.config import TrainConfig
from core.data import load_mnist
from core.model import NetworkSpec
from core.packed import train_packed
from core.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
SPEC = NetworkSpec((784, 15, 10))


def configs(k: int, batch_size: int, epochs: int) -> list[TrainConfig]:
    """k trials with η = 0.05, 0.10, … and their own seeds; accuracies monitored only."""
    return [
        TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            eta=round(0.05 * (i + 1), 2),
            seed=i,
            monitor_training_cost=False,
            monitor_validation_cost=False,
        )
        for i in range(k)
    ]


def best_of(repeat: int, *runs) -> list[float]:
    """Best wall time of each run() over ``repeat`` rounds, the runs taking turns in a round."""
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def peak_megabytes(data, k: int) -> float:
    """Peak memory (MB, as NumPy reports it to tracemalloc) of one epoch of a k-trial pack."""
    tracemalloc.start()
    train_packed(SPEC, configs(k, 10, 1), data.train, data.validation)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED if SHARED.is_dir() else None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = load_mnist(args.data_dir, n_train=5000, n_validation=1000)
    print(
        f"network {SPEC.sizes}, {data.train.n} training / {data.validation.n} validation images, "
        f"{args.epochs} epochs, accuracies monitored, 1 BLAS thread, best of {args.repeat}"
    )
    print(f"{'batch':>5} {'K':>3} {'one by one (s)':>15} {'packed (s)':>11} {'speed-up':>9}")
    with threadpool_limits(1):
        for batch_size in (10, 50):
            for k in (11, 1):
                pack = configs(k, batch_size, args.epochs)
                alone, packed = best_of(
                    args.repeat,
                    lambda pack=pack: [train(SPEC, c, data.train, data.validation) for c in pack],
                    lambda pack=pack: train_packed(SPEC, pack, data.train, data.validation),
                )
                print(f"{batch_size:>5} {k:>3} {alone:>15.3f} {packed:>11.3f} {alone / packed:>8.2f}x")
        full = load_mnist(args.data_dir)
        print(
            f"full MNIST ({full.train.n} training images), K = 11, batch 10, one epoch: "
            f"{peak_megabytes(full, 11):.1f} MB allocated at peak beyond the data"
        )


if __name__ == "__main__":
    main()
