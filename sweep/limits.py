"""What a study may ask for, in one place: every bound with the reason for it.

A study or flag beyond one of these is refused when it is validated, before anything is
stored: it would exhaust the machine (memory, processes), run for ever, or break a store.
Stdlib only, so that the launcher can use it for its flag types without importing more.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType

#: Epochs of a trial: each is a step of every monitored curve in the trial's record and its
#: MLflow run; 10 000 full-MNIST epochs already take days.
MAX_EPOCHS = 10_000
#: Weights and biases of one network: one MNIST epoch of 50 million parameters takes about an
#: hour on a CPU core (three multiply-adds per parameter and image).
MAX_PARAMETERS = 50_000_000
#: Hidden layers of one network: each is a matrix product per batch and a logged setting; the
#: sigmoid MLPs studied here stop learning long before (vanishing gradients).
MAX_DEPTH = 100
#: Trials of a study, and trial counts of sampler and pruner options (n_startup_trials, ...):
#: a worker reads every trial of the study before claiming the next one.
MAX_TRIALS = 1_000_000
#: Points of a grid: Optuna's GridSampler holds them all in memory and every worker sorts them;
#: 100 000 trials of even a second each is more than a day.
MAX_GRID_POINTS = 100_000
#: Values of a stepped float range: beyond 2**53 steps, low + i * step no longer lands on
#: distinct floating-point values.
MAX_RANGE_STEPS = 2**53
#: Characters of a study name: it is a file name (reports/NAME, studies/NAME.toml, at most 255
#: bytes), an MLflow experiment name (at most 500) and run name (a 250-character column), and
#: refine appends "-refined-N" to it.
MAX_NAME_LENGTH = 200
#: Sampler seeds: NumPy's RandomState, which Optuna's samplers use, takes 32-bit seeds; worker
#: i of a run adds i to the seed, modulo 2**32 (see sweep.spec.samplers.build_sampler).
MAX_SEED = 2**32 - 1
#: Local worker processes per CPU: each is a process with one BLAS thread and its own copy of
#: the data; beyond a few per core they only take turns.
WORKERS_PER_CPU = 4
#: Failed trials in a row after which a worker stops: a study whose every trial fails (out of
#: memory, a bug) would otherwise spend its whole budget failing, or loop for ever on trials
#: that fail before they are given parameters (those do not count against the budget).
MAX_FAILED_IN_A_ROW = 10
#: Bytes of a study file: the largest grid or space fits in a few KiB; a file is read whole
#: into memory before it is parsed, so /dev/zero or a log passed by mistake must stop early.
MAX_STUDY_BYTES = 1 << 20
#: Levels of nested tables and arrays in a study file: a study needs four ([pruner.wrapped],
#: an inline table with a list of choices); Python's TOML parser recurses once per level and
#: would hit the interpreter's recursion limit at a few hundred.
MAX_TOML_NESTING = 32
#: Bytes per stored number: networks train in float64.
BYTES_PER_VALUE = 8
#: Images a dataset holds at most (full MNIST): each worker holds a float64 copy of them (784
#: pixels and 10 one-hot labels each), and no batch is larger.
MAX_ROWS = 70_000

#: Bounds on the numeric sampler and pruner options that make Optuna allocate or loop in
#: proportion to them: {option name: (largest value, why)}.
OPTION_BOUNDS: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        "n_ei_candidates": (10_000, "TPE draws and scores that many candidates per parameter and trial"),
        "popsize": (10_000, "CMA-ES samples and sorts a population of that many points per generation"),
        "population_size": (10_000, "NSGA-II/III sorts a generation of that many trials"),
        "dividing_parameter": (100, "NSGA-III makes every one of C(objectives + p - 1, p) reference points"),
        **dict.fromkeys(
            ("n_startup_trials", "n_min_trials", "bootstrap_count"),
            (MAX_TRIALS, "a study holds at most that many trials"),
        ),
    }
)


def max_workers() -> int:
    """The most local worker processes a run may start on this machine."""
    return WORKERS_PER_CPU * (os.cpu_count() or 1)


def machine_memory() -> int:
    """Physical memory of this machine, in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parameter_count(sizes: Sequence[int]) -> int:
    """Weights and biases of a network with these layer sizes."""
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes, sizes[1:]))


def training_bytes(sizes: Sequence[int], batch_size: int, pack: int = 1, workers: int = 1) -> int:
    """An estimate of the memory ``workers`` processes need to train ``pack`` networks each.

    Per network: its parameters three times (weights, gradients, the best weights kept)
    and three values per unit and batch row (weighted inputs, activations, errors); per
    process: a float64 copy of the data.
    """
    network = 3 * parameter_count(sizes) + 3 * min(batch_size, MAX_ROWS) * sum(sizes)
    return workers * BYTES_PER_VALUE * (MAX_ROWS * (784 + 10) + pack * network)


def show_bytes(n: int) -> str:
    """``n`` bytes for a person: 1.5 GiB, 25 TiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{n / 1024**power:.3g} {units[power]}"
