"""Seconds per epoch of the compiled engine with Nielsen's options on and off, in one process.

Trains on the 50000 MNIST training images, monitoring off (the SGD pass alone), one epoch
per setting in turn for a few rounds (so a shared machine's load falls on all alike), and
prints each setting's fastest s/epoch and its ratio to plain SGD at the same batch size:
momentum makes the first layer's update dense, dropout draws and applies masks.

    python benchmarks/bench_options.py [--data-dir DIR] [--rounds 3] [--sizes 784,800,10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.config import TrainConfig
from core.data import load_mnist
from core.model import NetworkSpec
from core.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
SETTINGS = [  # (label, batch size, options); each compared with the plain run of its batch size
    ("plain", 10, {}),
    ("momentum 0.9", 10, {"momentum": 0.9}),
    ("dropout 0.5", 10, {"dropout": 0.5}),
    ("plain", 50, {}),
    ("momentum 0.9", 50, {"momentum": 0.9}),
    ("dropout 0.5", 50, {"dropout": 0.5}),
]


def seconds_per_epoch(spec: NetworkSpec, data, batch_size: int, options: dict) -> float:
    config = TrainConfig(
        epochs=1,
        batch_size=batch_size,
        eta=0.1,
        lmbda=5.0,
        engine="compiled",
        monitor_training_cost=False,
        monitor_training_accuracy=False,
        monitor_validation_cost=False,
        monitor_validation_accuracy=False,
        **options,
    )
    return train(spec, config, data).history[0].seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(SHARED))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="784,800,10")
    args = parser.parse_args()
    spec = NetworkSpec(tuple(int(s) for s in args.sizes.split(",")))
    train_set = load_mnist(args.data_dir).train
    seconds_per_epoch(
        spec, type(train_set)(train_set.X[:100], train_set.y[:100]), 10, {"momentum": 0.5, "dropout": 0.5}
    )  # compile
    times = [
        [seconds_per_epoch(spec, train_set, batch_size, options) for _, batch_size, options in SETTINGS]
        for _ in range(args.rounds)
    ]
    plain = {}
    for (label, batch_size, _), s in zip(SETTINGS, map(min, zip(*times))):
        plain.setdefault(batch_size, s)
        print(f"{args.sizes} batch {batch_size:3d} {label:13s} {s:6.2f} s/epoch  {s / plain[batch_size]:5.2f} × plain")


if __name__ == "__main__":
    main()
