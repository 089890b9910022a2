"""What a study may ask for, in one place: every bound with the reason for it.

A study or flag beyond one of these is refused when it is validated, before anything is
stored: it would exhaust the machine (memory, processes), run for ever, or break a store.
Stdlib only, so that the launcher can use it for its flag types without importing more.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
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
#: Local worker processes per CPU: each is a process with one BLAS thread (the data they share,
#: memory-mapped); beyond a few per core they only take turns.
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
#: Images a dataset holds at most (full MNIST: 70 000 of 28 x 28 pixels): the decoded dataset is
#: a float32 .npy file that every worker memory-maps (core.data), so the machine holds it once.
MAX_ROWS = 70_000
#: Bytes of one image in that file: 784 float32 pixels and an int64 label.
ROW_BYTES = 784 * 4 + 8
#: Non-zero pixels of an image, on average: MNIST's light about 150 of their 784. Each worker of
#: the compiled engine lists them for every set it reads (core.compiled.SparseRows): a uint16
#: column and a uint8 grey level each, and an int64 row start per image.
LIT_PIXELS = 160
#: Bytes per trained number: networks train in float32.
BYTES_PER_VALUE = 4
#: Copies of the compiled engine's constants, kept here so that this module stays stdlib only
#: (tests/sweep/test_limits.py holds them equal): the kernels pad the first layer's width and the
#: dense layers' fan-out to whole vectors of LANES floats (core.compiled.LANES); the NumPy engine
#: evaluates EVAL_CHUNK rows at a time (core.model.EVAL_CHUNK); dropout's masks are drawn as
#: float32 KEEP_CHUNK rows at a time (core.train.KEEP_CHUNK).
LANES, EVAL_CHUNK, KEEP_CHUNK = 16, 8192, 4096
#: Bytes of the pages the compiled engine's first layer sits on (core.compiled.HUGE_PAGE).
HUGE_PAGE = 2 << 20
#: How much more than its largest simultaneous allocation a worker's peak may reach: glibc keeps
#: freed blocks below 32 MiB in its heap for reuse (its mmap threshold rises to the largest block
#: freed), so the copies made and dropped every epoch (the best weights, the L2 term's squares)
#: leave holes: peaks measured up to 1.36 times the allocations (784-2400-10 with patience; see
#: tests/sweep/test_limits.py).
HEAP_SLACK = 1.4
#: Training options that make a worker hold more (see worker_bytes): a velocity per weight, the
#: best epoch's weights, an epoch's dropout masks.
MEMORY_OPTIONS = ("momentum", "patience", "dropout")

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


def _padded(n: int) -> int:
    """n floats rounded up to whole vectors of LANES."""
    return -(-n // LANES) * LANES


def kernel_values(sizes: Sequence[int]) -> int:
    """Floats of one network as the compiled kernels lay it out (core.compiled's _kernel_layout):
    the first layer with its width padded to whole vectors, then every other layer as large as the
    widest fan-in by the widest fan-out (padded), with its biases."""
    fan_in, fan_out = max(sizes[1:-1], default=1), max(sizes[2:], default=1)
    return (sizes[0] + 1) * _padded(sizes[1]) + (len(sizes) - 2) * (fan_in * _padded(fan_out) + fan_out)


def worker_bytes(
    sizes: Sequence[int],
    batch_size: int,
    pack: int = 1,
    options: Collection[str] = (),
    engine: str = "compiled",
    rows: int = MAX_ROWS,
) -> int:
    """The peak memory one worker allocates to train ``pack`` networks at once on ``engine``
    ("compiled" or "numpy"), beyond the process itself and the memory-mapped data: float32
    networks, ``options`` the MEMORY_OPTIONS that may be on, ``rows`` the images it reads.

    The larger of two moments. Drawing the initial weights: float64 normal draws, scaled and
    stacked with the biases before their float32 copy (20 bytes per parameter at most), beside
    the pack's networks drawn before (then stacked: a second copy). Training: the pack's
    parameters; the compiled engine's copy of them in its layout (``kernel_values``), or the
    NumPy engine's gradients (one set for full batches, one for the last); the velocity
    (momentum); the best epoch's parameters (patience); the batch's buffers; an epoch's dropout
    masks (two while the next is drawn, and the float32 draws); and the largest of: a second
    layout while a set is evaluated (compiled) or a chunk of activations (NumPy), the L2 term's
    float64 squares of the largest weight matrix, and a pack that lost a trial built anew beside
    the old one and the results. Each worker also lists the lit pixels of every set it reads
    (compiled) or holds one-hot labels in two orders (NumPy). All of it but those lists times
    HEAP_SLACK, for the allocator's holes.
    """
    parameters, units, hidden = parameter_count(sizes), sum(sizes[1:]), sum(sizes[1:-1])
    networks = pack * parameters  # floats of the pack's parameters
    batch = min(batch_size, rows)
    if engine == "compiled":
        velocity = pack * kernel_values(sizes)
        copy = velocity + HUGE_PAGE // BYTES_PER_VALUE  # its first layer on 2 MiB pages: up to one more
        widest = max(pack * max(sizes[1:]), _padded(pack * sizes[1])) + LANES
        buffers = 3 * len(sizes) * batch * widest  # z, a, δ of a batch
        evaluation = copy
        per_set = rows * (8 + 3 * LIT_PIXELS)
    else:
        copy, velocity = 2 * networks, networks
        buffers = pack * batch * (5 * units + sizes[0] + hidden)  # a batch's inputs, activations, errors
        evaluation = min(rows, EVAL_CHUNK) * (2 * units + hidden)  # activations (with a column of 1s), z
        per_set = rows * 2 * BYTES_PER_VALUE * sizes[-1]
    held = networks + copy + buffers
    held += velocity if "momentum" in options else 0
    held += parameters if "patience" in options else 0  # (a network with patience trains alone)
    biggest = max(n_in * n_out for n_in, n_out in zip(sizes, sizes[1:]))
    moment = max(evaluation, 2 * biggest, networks + copy if pack > 1 else 0)
    masks = 2 * rows * hidden + BYTES_PER_VALUE * min(rows, KEEP_CHUNK) * hidden if "dropout" in options else 0
    drawing = BYTES_PER_VALUE * max(networks + 4 * parameters, 2 * networks)
    return int(HEAP_SLACK * max(drawing, BYTES_PER_VALUE * (held + moment) + masks)) + per_set


def training_bytes(
    sizes: Sequence[int],
    batch_size: int,
    pack: int = 1,
    workers: int = 1,
    options: Collection[str] = (),
    engine: str = "compiled",
) -> int:
    """An estimate of the memory ``workers`` processes need to train ``pack`` networks each: the
    decoded dataset once (every worker maps the same file: the page cache holds it once), then
    each worker's own peak (``worker_bytes``; the processes' interpreter and libraries, much of
    them shared after the fork server's fork, are not counted)."""
    return MAX_ROWS * ROW_BYTES + workers * worker_bytes(sizes, batch_size, pack, options, engine)


def show_bytes(n: int) -> str:
    """``n`` bytes for a person: 1.5 GiB, 25 TiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{n / 1024**power:.3g} {units[power]}"
