"""Seconds per epoch of the compiled engine with Nielsen's options on and off, in one process.

Trains on the 50000 MNIST training images, monitoring off (the SGD pass alone), and
prints each setting's median s/epoch and its ratio to plain SGD at the same batch size:
momentum makes the first layer's update dense, dropout draws and applies masks.

    python benchmarks/bench_options.py [--data-dir DIR] [--epochs 2] [--sizes 784,800,10]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from core.data import load_mnist
from core.model import NetworkSpec
from core.train import TrainConfig, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
SETTINGS = [  # (label, batch size, options); each compared with the plain run of its batch size
    ("plain", 10, {}), ("momentum 0.9", 10, {"momentum": 0.9}), ("dropout 0.5", 10, {"dropout": 0.5}),
    ("plain", 50, {}), ("momentum 0.9", 50, {"momentum": 0.9}), ("dropout 0.5", 50, {"dropout": 0.5}),
]


def seconds_per_epoch(spec: NetworkSpec, data, epochs: int, batch_size: int, options: dict) -> float:
    config = TrainConfig(epochs=epochs, batch_size=batch_size, eta=0.1, lmbda=5.0, engine="compiled",
                         monitor_training_cost=False, monitor_training_accuracy=False,
                         monitor_validation_cost=False, monitor_validation_accuracy=False, **options)
    return statistics.median(r.seconds for r in train(spec, config, data).history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(SHARED))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sizes", default="784,800,10")
    args = parser.parse_args()
    spec = NetworkSpec(tuple(int(s) for s in args.sizes.split(",")))
    train_set = load_mnist(args.data_dir).train
    seconds_per_epoch(spec, type(train_set)(train_set.X[:100], train_set.y[:100]), 1, 10, {"momentum": 0.5,
                                                                                         "dropout": 0.5})  # compile
    plain = {}
    for label, batch_size, options in SETTINGS:
        s = seconds_per_epoch(spec, train_set, args.epochs, batch_size, options)
        plain.setdefault(batch_size, s)
        print(f"{args.sizes} batch {batch_size:3d} {label:13s} {s:6.2f} s/epoch  {s / plain[batch_size]:5.2f} × plain",
              flush=True)


if __name__ == "__main__":
    main()
