"""The compiled engine beside every reference, measured in one process (ratios, then absolute times).

SGD epochs (CPU s/epoch, medians of rounds, monitoring off, one BLAS thread, one torch thread)
on the 50000 full-MNIST training images, batch 10, η 0.1, for [784, 30, 10] and
[784, 100, 10]: the per-example way (``core.reference``, extrapolated from some batches),
a plain vectorised NumPy loop written here (a mini-batch as a matrix, nothing
preallocated), PyTorch CPU (``nn.Sequential`` + SGD, extrapolated), the NumPy engine and
the compiled engine; and the arithmetic floor: the two GEMMs and the update of the first
layer alone (10×784 @ 784×30, its transpose product, W −= G), 5000 times. Then the
homework grid's η axis (11 trials, one seed, [784, 15, 10], batch 10, 10 epochs, 5000/1000
images, accuracies monitored) as one pack against one by one on the compiled engine; the
first compile (empty cache) and a cached start, each in a fresh process; and the peak
memory (RSS) of a process that trains one monitored epoch on full MNIST.

    python benchmarks/bench_engine.py [--data-dir DIR] [--repeat 5] [--only eta]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy and torch: no idle pools spinning on the cores
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_core import SHARED, reference_epoch
from threadpoolctl import threadpool_limits

from core.config import TrainConfig
from core.data import load_mnist
from core.model import NetworkSpec, init_params, one_hot
from core.packed import train_packed
from core.train import train

OFF = {f"monitor_{part}_{what}": False for part in ("training", "validation") for what in ("cost", "accuracy")}
ROOT = Path(__file__).resolve().parents[1]


def median_of(repeat: int, *runs) -> list[float]:
    """Median CPU seconds of each run over ``repeat`` rounds, the runs taking turns in a round.

    Every run is single-threaded, so this process's CPU time is its work, whatever other
    processes on the shared cores take of the wall time; the turns spread the rest of
    their disturbance (caches, a busy sibling core) over every run alike. A run's seconds
    are what it returns if that is a number (an extrapolation), else its CPU time."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeat):
        for run, spent in zip(runs, times):
            start = time.process_time()
            seconds = run()
            spent.append(seconds if isinstance(seconds, float) else time.process_time() - start)
    return [statistics.median(spent) for spent in times]


def engine_epoch(spec: NetworkSpec, data, engine: str) -> None:
    """One epoch of ``train`` on ``engine``, monitoring off."""
    train(spec, TrainConfig(epochs=1, batch_size=10, eta=0.1, engine=engine, **OFF), data)


def per_example_epoch(spec: NetworkSpec, data, batches: int) -> float:
    """CPU seconds per epoch of the per-example way, extrapolated from ``batches`` mini-batches."""
    start = time.process_time()
    reference_epoch(spec, data, batches)
    return (time.process_time() - start) * (len(data.X) / 10) / batches


def plain_numpy_epoch(spec: NetworkSpec, data) -> None:
    """One epoch as anyone would write it in NumPy: a mini-batch is a matrix; nothing is preallocated."""
    rng = np.random.default_rng(0)
    params = init_params(spec, rng)
    W1, W2 = (np.array(w) for w in params.weights)
    b1, b2 = (np.array(b) for b in params.biases)
    X, Y = data.X, one_hot(data.y, 10)
    eta, m = np.float32(0.1), 10
    perm = rng.permutation(len(X))
    for k in range(0, len(X), m):
        rows = perm[k : k + m]
        x, y = X[rows], Y[rows]
        z1 = x @ W1 + b1
        a1 = np.maximum(z1, 0)
        z2 = a1 @ W2 + b2
        e = np.exp(z2 - z2.max(axis=1, keepdims=True))
        d2 = e / e.sum(axis=1, keepdims=True) - y
        d1 = (d2 @ W2.T) * (z1 > 0)
        W2 -= eta / m * (a1.T @ d2)
        b2 -= eta / m * d2.sum(axis=0)
        W1 -= eta / m * (x.T @ d1)
        b1 -= eta / m * d1.sum(axis=0)


def torch_epoch(spec: NetworkSpec, data, batches: int) -> float:
    """Seconds per epoch of PyTorch CPU SGD, extrapolated from ``batches`` mini-batches."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers = []
    for fan_in, fan_out in zip(spec.sizes[:-1], spec.sizes[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    X, y = torch.from_numpy(np.array(data.X)), torch.from_numpy(data.y.astype(np.int64))  # a writable copy
    perm = torch.randperm(len(X))
    start = time.process_time()
    for k in range(0, batches * 10, 10):
        rows = perm[k : k + 10]
        opt.zero_grad()
        loss_fn(net(X[rows]), y[rows]).backward()
        opt.step()
    return (time.process_time() - start) * (len(X) / 10) / batches


def floor_epoch() -> None:
    """The first layer's arithmetic at batch 10, 5000 times: forward GEMM, gradient GEMM, update."""
    rng = np.random.default_rng(0)
    x = rng.random((10, 784), dtype=np.float32)
    d = rng.random((10, 30), dtype=np.float32)
    W = rng.random((784, 30), dtype=np.float32)
    z, G = np.empty((10, 30), np.float32), np.empty((784, 30), np.float32)
    for _ in range(5000):
        np.dot(x, W, out=z)
        np.dot(x.T, d, out=G)
        W -= G


def profile(data, rep: int, whole: float) -> None:
    """Where the compiled [784, 30, 10] epoch spends its time: the sparse first layer (the
    kernel's own product and update steps, run alone over the epoch's mini-batches of 10 in a
    random order, as the kernel runs them: width 32, the next batch's pixels prefetched), the
    rest; and the first layer's arithmetic rate (2 · non-zero pixels · 30 multiply-adds)."""
    from numba import njit

    from core.compiled import _first_layer, _prefetch_rows, sparse_rows

    @njit
    def first_layer(flat, indptr, indices, codes, table, perm, z, step):
        for start in range(0, perm.shape[0], 10):
            _prefetch_rows(perm[start + 10 : start + 20], indptr, indices, codes)
            for e in perm[start : start + 10]:
                _first_layer(z, flat, z.shape[0], indices, codes, table, indptr[e], indptr[e + 1], False)
            for e in perm[start : start + 10]:
                _first_layer(step, flat, z.shape[0], indices, codes, table, indptr[e], indptr[e + 1], True)

    rows = sparse_rows(np.asarray(data.X, np.float32))
    rng = np.random.default_rng(0)
    flat = rng.normal(0, 0.1, 784 * 32).astype(np.float32)
    z, step = np.zeros(32, np.float32), np.full(32, 1e-9, np.float32)

    def run():
        return first_layer(
            flat, rows.indptr, rows.indices, rows.codes, rows.table, rng.permutation(len(data.X)), z, step
        )

    run()  # compile
    (first,) = median_of(rep, run)
    nnz = int(rows.indptr[-1])
    print(f"\nprofile of the compiled [784, 30, 10] epoch ({whole:.3f} s):")
    print(
        f"  first layer, sparse product + update (width 32)    {first:8.3f} s  {100 * first / whole:5.1f} %  "
        f"({2 * nnz * 30 / first / 1e9:.2f} G multiply-adds/s over {nnz / len(data.X):.0f} non-zero "
        f"pixels per image, {100 * nnz / data.X.size:.0f} % of them)"
    )
    print(
        f"  the rest: second layer, output, errors, bookkeeping  {whole - first:8.3f} s  "
        f"{100 * (whole - first) / whole:5.1f} %"
    )


def eta_axis(k: int, engine: str) -> list[TrainConfig]:
    """The homework grid's η axis at batch 10 (η 0.08 … 0.18), one seed, accuracies monitored."""
    return [
        TrainConfig(
            epochs=10,
            batch_size=10,
            eta=round(0.08 + 0.01 * i, 2),
            seed=0,
            engine=engine,
            monitor_training_cost=False,
            monitor_validation_cost=False,
        )
        for i in range(k)
    ]


def compare_eta_axis(data_dir: Path | None, rep: int) -> None:
    """The η axis (``eta_axis``) as one pack against one by one on the compiled engine, and as a NumPy pack."""
    small = load_mnist(data_dir, n_train=5000, n_validation=1000)
    spec = NetworkSpec((784, 15, 10))
    one_by_one, packed, numpy_packed = median_of(
        2 * rep - 1,
        lambda: [train(spec, c, small.train, small.validation) for c in eta_axis(11, "compiled")],
        lambda: train_packed(spec, eta_axis(11, "compiled"), small.train, small.validation),
        lambda: train_packed(spec, eta_axis(11, "numpy"), small.train, small.validation),
    )
    print(
        "\neta axis: 11 trials of [784, 15, 10], one seed, batch 10, 10 epochs, 5000/1000 images, "
        "accuracies monitored (CPU s)"
    )
    print(f"  compiled, one by one     {one_by_one:8.3f} s")
    print(f"  compiled, one pack       {packed:8.3f} s   {one_by_one / packed:5.2f}x one by one")
    print(f"  NumPy engine, one pack   {numpy_packed:8.3f} s   compiled pack is {numpy_packed / packed:5.2f}x faster")


def in_fresh_process(code: str, env: dict[str, str]) -> str:
    """stdout of ``python -c code`` in a new process with this repository first on its path."""
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


START = (
    "import time; t, c = time.perf_counter(), time.process_time(); import core.compiled; "
    "core.compiled.warm_up(); print(time.perf_counter() - t, time.process_time() - c)"
)
PEAK = (
    "import resource; from core.data import load_mnist; from core.model import NetworkSpec;"
    "from core import TrainConfig, train; data = load_mnist({!r});"
    "train(NetworkSpec((784, 30, 10)), TrainConfig(epochs=1, batch_size=10, eta=0.1, engine={!r}),"
    " data.train, data.validation); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED if SHARED.is_dir() else None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=("eta",), help="run one part alone: eta, the η axis pack against one by one")
    args = parser.parse_args()
    rep = args.repeat
    sys.stdout.reconfigure(line_buffering=True)  # every row reaches a pipe as printed, even if the run is cut short
    if args.only == "eta":
        with threadpool_limits(1):
            compare_eta_axis(args.data_dir, rep)
        return
    with tempfile.TemporaryDirectory() as cache:  # compile times first, in fresh processes
        first = [float(t) for t in in_fresh_process(START, {"NUMBA_CACHE_DIR": cache}).split()]
        start = time.perf_counter()
        cached = [float(t) for t in in_fresh_process(START, {"NUMBA_CACHE_DIR": cache}).split()]
        cached_process = time.perf_counter() - start
        peaks = {
            engine: float(in_fresh_process(PEAK.format(str(args.data_dir), engine), {"NUMBA_CACHE_DIR": cache}))
            for engine in ("numpy", "compiled")
        }
    mnist = load_mnist(args.data_dir)
    data = mnist.train
    print(
        f"training set {data.X.shape}, batch 10, eta 0.1, float32, 1 BLAS thread; CPU seconds, medians of {rep} rounds"
    )
    compiled_at: dict[str, float] = {}
    with threadpool_limits(1):
        for sizes in ((784, 30, 10), (784, 100, 10)):
            spec = NetworkSpec(sizes)
            runs = {
                "per-example (core.reference)": lambda spec=spec: per_example_epoch(spec, data, 200),
                "PyTorch CPU, 1 thread": lambda spec=spec: torch_epoch(spec, data, 500),
                "plain vectorised NumPy loop": lambda spec=spec: plain_numpy_epoch(spec, data),
                "NumPy engine": lambda spec=spec: engine_epoch(spec, data, "numpy"),
                "compiled engine": lambda spec=spec: engine_epoch(spec, data, "compiled"),
            }
            times = dict(zip(runs, median_of(rep, *runs.values())))
            compiled = times["compiled engine"]
            compiled_at.setdefault("floor", compiled)  # [784, 30, 10]'s, for the floor
            print(f"\n{list(sizes)}: s/epoch, and the compiled engine's speed-up over each")
            for label, seconds in times.items():
                print(f"  {label:30} {seconds:8.3f} s   compiled is {seconds / compiled:6.1f}x faster")
        (floor,) = median_of(rep, floor_epoch)
        print(
            f"\nfloor: 2 GEMMs + W -= G of [784, 30] x 5000  {floor:8.3f} s   "
            f"compiled [784, 30, 10] takes {compiled_at['floor'] / floor:5.2f}x of it"
        )

        profile(data, rep, compiled_at["floor"])

        compare_eta_axis(args.data_dir, rep)
    print(f"\nfirst compile (empty cache, import + compile): {first[0]:6.2f} s wall, {first[1]:.2f} s CPU")
    print(
        f"cached start (fresh process, warm cache: import + load): {cached[0]:6.2f} s wall, {cached[1]:.2f} s CPU "
        f"({cached_process:.2f} s wall for the whole process)"
    )
    for engine, peak in peaks.items():
        print(
            f"peak RSS, one monitored epoch of [784, 30, 10] on full MNIST, {engine} engine "
            f"(warm cache): {peak:6.0f} MB"
        )


if __name__ == "__main__":
    main()
