"""The memory estimate (sweep.limits.worker_bytes) against what training really allocates: its copies
of core's constants, the compiled engine's layout, and the peak of real training runs."""

import importlib.util
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from core.config import TrainConfig
from core.model import EVAL_CHUNK, NetworkSpec, init_params
from core.train import KEEP_CHUNK
from sweep import limits

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")


def test_the_copies_of_core_constants_agree():
    assert (limits.EVAL_CHUNK, limits.KEEP_CHUNK) == (EVAL_CHUNK, KEEP_CHUNK)
    assert set(limits.MEMORY_OPTIONS) <= {f.name for f in fields(TrainConfig)}
    assert limits.ROW_BYTES == 784 * 4 + 8  # a float32 image and its int64 label, as core.data stores them


@needs_numba
@pytest.mark.parametrize("sizes", [(784, 30, 10), (784, 100, 10), (784, 4000, 10), (784, 70, 18, 10), (20, 4)])
def test_kernel_values_count_the_compiled_layout(sizes):
    from core import compiled

    assert (limits.LANES, limits.HUGE_PAGE) == (compiled.LANES, compiled.HUGE_PAGE)
    spec = NetworkSpec(sizes)
    layout = compiled._kernel_layout(spec, [init_params(spec, np.random.default_rng(0))])
    assert limits.kernel_values(sizes) == sum(a.size for a in layout)


def test_the_data_counts_once_per_machine_and_each_worker_its_own_peak():
    sizes, on = (784, 100, 10), ("momentum",)
    one, two = (limits.training_bytes(sizes, 10, 1, workers, on) for workers in (1, 2))
    assert one == limits.MAX_ROWS * limits.ROW_BYTES + limits.worker_bytes(sizes, 10, 1, on)
    assert two - one == limits.worker_bytes(sizes, 10, 1, on)
    assert limits.worker_bytes(sizes, 10, 1, on) > limits.worker_bytes(sizes, 10)  # a velocity
    assert limits.worker_bytes(sizes, 10, 1, ("patience",)) > limits.worker_bytes(sizes, 10)  # the best weights


# Trains in a fresh process and prints how far its peak resident memory (VmHWM) rose above the
# resident memory before training: the compiled code loaded and the data made first (a warm-up run
# on other data), freed heap memory given back (malloc_trim), the peak reset (clear_refs 5).
PEAK = """
import ctypes, gc, sys
import numpy as np
from core.config import TrainConfig
from core.history import NO_CHECK
from core.model import NetworkSpec
from core.packed import train_packed
from core.train import train

def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

class Set:
    def __init__(self, X, y):
        self.X, self.y = X, y

def data(n, seed):  # MNIST-like: a fifth of the pixels lit, at grey levels k/255
    rng = np.random.default_rng(seed)
    X = np.where(rng.random((n, 784)) < 0.19, rng.integers(1, 256, (n, 784)), 0).astype(np.float32)
    X, y = np.divide(X, np.float32(255), dtype=np.float32), rng.integers(0, 10, n)
    return Set(X[: n * 4 // 5], y[: n * 4 // 5]), Set(X[n * 4 // 5 :], y[n * 4 // 5 :])

def run(sizes, pack, epochs, training, validation):  # one network alone, or a pack one trial leaves
    configs = [TrainConfig(epochs=epochs, batch_size=10, eta=0.01 * (k + 1), lmbda=1.0, **options) for k in range(pack)]
    if pack == 1:
        return train(NetworkSpec(sizes), configs[0], training, validation, check=NO_CHECK)
    leaves = [lambda record: record.epoch == 1] + [None] * (pack - 1)  # after it, the pack is built anew
    return train_packed(NetworkSpec(sizes), configs, training, validation, callbacks=leaves, check=NO_CHECK)

sizes, pack, options, rows, epochs = eval(sys.argv[1])
run((784, 3, 10), pack, 2, *data(60, 1))
training, validation = data(rows, 0)
gc.collect()
ctypes.CDLL(None).malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
run(sizes, pack, epochs, training, validation)
print(status("VmHWM:") - before)
"""


@needs_numba
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize(
    "sizes, pack, options",
    [
        ((784, 4000, 10), 1, {"momentum": 0.9, "patience": 30}),  # the network dominates; heap holes
        ((784, 1000, 1000, 10), 1, {"momentum": 0.9, "patience": 30}),  # a dense layer laid out padded
        ((784, 4000, 10), 1, {}),
        ((784, 1500, 10), 4, {}),  # a pack, and one of its trials leaving it
    ],
    ids=["wide-momentum-patience", "deep-momentum-patience", "wide-plain", "pack"],
)
def test_the_estimate_bounds_a_measured_peak(sizes, pack, options):
    """Not below the measured growth of a worker's resident memory while it trains, nor far above
    it: at most 1.5 times it and 8 MiB (small allocations of the process, not estimated)."""
    rows, epochs = 600, 5  # enough epochs for the heap's holes to settle (they stop growing by the fourth)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLP_SWEEP_ENGINE": "compiled"}
    out = subprocess.run(
        [sys.executable, "-c", PEAK, repr((sizes, pack, options, rows, epochs))],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    measured = int(out.stdout)
    estimate = limits.worker_bytes(sizes, 10, pack, list(options), rows=rows)
    print(f"{sizes} x{pack} {options}: measured {measured / MiB:.1f} MiB, estimated {estimate / MiB:.1f} MiB")
    assert measured <= estimate <= 1.5 * measured + 8 * MiB, (measured / MiB, estimate / MiB)
