"""Train trials that share their structure together, in one vectorised pass.

At batch size 10 a NumPy SGD step costs mostly per-call overhead, not arithmetic. Trials
of a sweep with the same network, batch size, epochs and monitoring can share every
call: their parameters are stacked as blocks (K, fan_out, fan_in + 1) and each step
pushes each trial's own mini-batch through its own network by batched matmul. Each
trial keeps its own η, λ and seed (so its own initial weights and permutations), and
comes out as ``train`` would have trained it alone: np.matmul makes, slice by slice,
the same BLAS calls as the lone run, so in practice the weights agree bit for bit.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.config import Pack, TrainConfig, packed
from core.engine import kernels, resolve
from core.functions import ACTIVATIONS, COSTS
from core.history import (
    CURVES,
    LEARNING_CHECK,
    EpochRecord,
    LearningCheck,
    NonFiniteError,
    NotLearningError,
    TrainResult,
)
from core.model import EVAL_CHUNK, NetworkSpec, Params, Workspace, init_params, one_hot
from core.train import GATHER_ROWS, EpochCallback, LabelledSet, monitored

PACKED_FIELDS = packed(Pack.AGREE)  # the options every trial of a pack has the same value of
#: Options a pack does not train (their rows in core.config.OPTIONS say so): a config with any on trains alone.
UNPACKED_OPTIONS = packed(Pack.OFF)


def packs(config: TrainConfig) -> bool:
    """Whether ``config`` can train in a pack at all: plain SGD, every UNPACKED_OPTIONS off."""
    return _unpacked(config) is None


def _unpacked(config: TrainConfig) -> str | None:
    """The first of UNPACKED_OPTIONS that ``config`` turns on, or None."""
    return next((f for f in UNPACKED_OPTIONS if getattr(config, f)), None)


def _differing(a: TrainConfig, b: TrainConfig) -> str | None:
    """The first field that keeps a and b from training in one pack, or None."""
    return next((f for f in PACKED_FIELDS if getattr(a, f) != getattr(b, f)), None)


def can_pack(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether a and b can train in one pack: they agree in every PACKED_FIELDS (only eta,
    lmbda and seed may differ) and neither turns on one of UNPACKED_OPTIONS (momentum,
    dropout, early stopping, the η schedule)."""
    return packs(a) and packs(b) and _differing(a, b) is None


@dataclass(frozen=True)
class Stack:
    """K networks' parameters, layer by layer as stacked blocks (K, fan_out, fan_in + 1)."""

    layers: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, params: Sequence[Params]) -> Stack:
        """Stack networks of the same sizes and dtype (a copy)."""
        return cls(tuple(np.stack(blocks) for blocks in zip(*(p.layers for p in params))))

    def trial(self, k: int) -> Params:
        """Network k as Params viewing its (contiguous) slices."""
        return Params(tuple(block[k] for block in self.layers))

    def select(self, ks: list[int]) -> Stack:
        """A new stack of networks ks (copies: the old stack is left as it is)."""
        return Stack(tuple(block[ks] for block in self.layers))

    def finite(self) -> np.ndarray:
        """(K,) bool: which networks have only finite parameters."""
        return np.logical_and.reduce([np.isfinite(block).all(axis=(1, 2)) for block in self.layers])


class PackedSGD:
    """One epoch of mini-batch SGD for K stacked networks, each on its own permutation.

    The steps are ``core.train.SGD``'s on stacked arrays: η/m and the weight decay
    1 − ηλ/n are per-trial (K, 1, 1) arrays in the parameters' dtype, as SGD's scalars
    are rounded to it, so every slice follows its lone run's arithmetic. Each trial's
    rows are gathered a group of mini-batches at a time into one buffer (K, group, d),
    without a ones column as in SGD; a step's K batches are then a view of it, not a copy.
    """

    def __init__(
        self, spec: NetworkSpec, stack: Stack, X: np.ndarray, Y: np.ndarray, configs: Sequence[TrainConfig]
    ) -> None:
        self.stack, self.X, self.Y = stack, X, Y  # X (n, d), one-hot Y (n, k)
        n = len(X)
        trials, dtype = len(configs), stack.layers[0].dtype
        self.m = m = min(configs[0].batch_size, n)
        eta = np.array([c.eta for c in configs])
        lmbda = np.array([c.lmbda for c in configs])
        decay = 1.0 - eta * lmbda / n  # float64, as SGD computes it
        self.scale = (eta / m).astype(dtype)[:, None, None]
        self.tail_scale = (eta / (n % m)).astype(dtype)[:, None, None] if n % m else None
        self.decay = decay.astype(dtype)[:, None, None] if lmbda.any() else None
        self.shrink = (1.0 - decay).astype(dtype)[:, None]  # what a bias gives back: (K, 1)
        self.full = Workspace(spec, m, dtype, trials)
        self.tail = Workspace(spec, n % m, dtype, trials) if n % m else None
        self.group = max(1, GATHER_ROWS // (trials * m)) * m  # rows per trial per gather
        self.x = np.empty((trials, self.group, spec.sizes[0]), dtype)  # (K, rows, d), no ones column
        self.y = np.empty((trials, self.group, spec.sizes[-1]), dtype)  # (K, rows, k) one-hot

    def epoch(self, perms: np.ndarray) -> None:
        """One pass over the training set; trial k visits rows perms[k] (K, n)."""
        m, n, x, X, Y = self.m, perms.shape[1], self.x, self.X, self.Y
        n_full = n - n % m
        for start in range(0, n_full, self.group):
            rows = perms[:, start : min(start + self.group, n_full)]  # (K, r)
            r = rows.shape[1]
            X.take(rows, axis=0, out=x[:, :r], mode="clip")
            Y.take(rows, axis=0, out=self.y[:, :r], mode="clip")
            for k in range(0, r, m):
                self._step(self.full, x[:, k : k + m], self.y[:, k : k + m], self.scale)
        if self.tail is not None:
            r = n - n_full
            X.take(perms[:, n_full:], axis=0, out=x[:, :r], mode="clip")
            Y.take(perms[:, n_full:], axis=0, out=self.y[:, :r], mode="clip")
            self._step(self.tail, x[:, :r], self.y[:, :r], self.tail_scale)

    def _step(self, ws: Workspace, x: np.ndarray, y: np.ndarray, scale: np.ndarray) -> None:
        ws.forward(self.stack, x)
        ws.backward(self.stack, y, scale)
        for block, grad in zip(self.stack.layers, ws.grads):
            if self.decay is not None:  # as SGD: decay all, give the biases back their part
                grad[..., -1] -= self.shrink * block[..., -1]
                block *= self.decay
            block -= grad


def evaluate_stack(
    spec: NetworkSpec,
    stack: Stack,
    X: np.ndarray,
    y: np.ndarray,
    lmbda: np.ndarray,
    n_train: int,
    want_cost: bool = True,
    engine: str = "numpy",
) -> tuple[list[float] | None, list[float]]:
    """``core.model.evaluate`` for every network of the stack: (costs or None, accuracies).

    On the compiled engine, ``core.compiled.evaluate_compiled`` runs every network in one
    pass over X's non-zero pixels; the NumPy way below is the reference it is tested against.

    All first layers act as one block (K·fan_out, d + 1), so the one large product of
    evaluation is a single wide matmul instead of K narrow ones (about 3× the
    throughput); the other layers run stacked. Rows go in chunks of EVAL_CHUNK / K, so
    memory stays that of one ``evaluate``. ``lmbda`` (K,) and n_train give the L2 term.
    """
    trials, dtype = len(stack.layers[0]), stack.layers[0].dtype
    if engine == "compiled":
        return kernels().evaluate_compiled(
            spec, [stack.trial(k) for k in range(trials)], X, y, lmbda.tolist(), n_train, want_cost
        )
    first = stack.layers[0].reshape(-1, spec.sizes[0] + 1)  # (K·fan_out, d + 1)
    rest = Stack(stack.layers[1:])
    rest_spec = NetworkSpec(spec.sizes[1:], spec.activation, spec.cost) if rest.layers else None
    cost = COSTS[spec.cost]
    totals, correct = np.zeros(trials), np.zeros(trials, np.int64)
    chunk = max(1, EVAL_CHUNK // trials)
    for start in range(0, len(X), chunk):
        x, labels = np.asarray(X[start : start + chunk], dtype), y[start : start + chunk]
        z = np.dot(x, first[:, :-1].T)  # (rows, K·fan_out)
        z += first[:, -1]
        z = z.reshape(len(x), trials, -1).swapaxes(0, 1)  # (K, rows, fan_out)
        if rest.layers:
            ACTIVATIONS[spec.activation].forward(z, z)
            ws = Workspace(rest_spec, len(x), dtype, trials)
            a = ws.forward(rest, z)
            z = ws.z[-1]
        else:
            a = cost.output(z, np.empty_like(z))
        correct += (a.argmax(axis=-1) == labels).sum(axis=-1)
        if want_cost:
            totals += cost.value(z, a, labels)  # (K,)
    costs = None
    if want_cost:
        costs = [
            total / len(X) + (0.5 * l / n_train * stack.trial(k).l2() if l else 0.0)
            for k, (total, l) in enumerate(zip(totals.tolist(), lmbda.tolist()))
        ]
    return costs, [int(c) / len(X) for c in correct]


def train_packed(
    spec: NetworkSpec,
    configs: Sequence[TrainConfig],
    training: LabelledSet,
    validation: LabelledSet | None = None,
    *,
    params: Sequence[Params] | None = None,
    callbacks: Sequence[EpochCallback | None] | None = None,
    check: LearningCheck = LEARNING_CHECK,
) -> list[TrainResult | NotLearningError]:
    """Train every config in one pack; result i is what ``train`` would return or raise.

    That is ``train(spec, configs[i], training, validation, params=params[i],
    callback=callbacks[i], check=check)``: the same initial weights and permutations from
    ``default_rng(configs[i].seed)``, the same weights, the same history up to the
    rounding of the fused evaluation (``evaluate_stack``: costs to about 1e-7 in
    float32), or the NotLearningError it would raise, at the same epoch. A trial
    whose callback returns True, or that ``check`` stops, leaves the pack at the end of
    that epoch; the others go on undisturbed. The configs must pack together (``can_pack``):
    ValueError names the field that differs, or the option a config turns on that a pack
    does not train (UNPACKED_OPTIONS: train those with ``train``). The pack's SGD and monitoring times are
    shared equally: a record's ``seconds`` and ``eval_seconds`` are the pack's for that
    epoch divided by the number of trials in it.
    """
    configs = list(configs)
    callbacks = [None] * len(configs) if callbacks is None else list(callbacks)
    _check(spec, configs, params, callbacks)
    if not configs:
        return []
    rngs = [np.random.default_rng(c.seed) for c in configs]
    stack = Stack.of([init_params(spec, rng) for rng in rngs] if params is None else params)
    # trials of a seed draw the same permutations: their generators are in one state (nothing
    # else draws per trial in an epoch: packs refuse dropout, UNPACKED_OPTIONS)
    shuffles = {c.seed: rng for c, rng in zip(configs, rngs)}
    X = np.asarray(training.X, dtype=stack.layers[0].dtype)
    n = len(X)
    engine = resolve(configs[0].engine, X.dtype)
    lmbda = np.array([c.lmbda for c in configs])
    classes = spec.sizes[-1]
    etas = [c.eta for c in configs]
    monitor = functools.partial(_monitor, spec, configs[0], training, validation, n, engine)
    untrained = (
        _records(monitor(stack, lmbda), etas, 0, 0.0, 0.0) if check.cost_growth is not None else [None] * len(configs)
    )
    histories: list[list[EpochRecord]] = [[] for _ in configs]
    results: list[TrainResult | NotLearningError | None] = [None] * len(configs)
    active = list(range(len(configs)))  # the trial of each slice of the stack
    sgd = _sgd(engine, spec, stack, X, training.y, configs)
    for epoch in range(1, configs[0].epochs + 1):
        drawn = {seed: shuffles[seed].permutation(n) for seed in {configs[i].seed for i in active}}
        perms = np.stack([drawn[configs[i].seed] for i in active])  # (K, n)
        records, finite = _epoch(sgd, perms, monitor, lmbda[active], [etas[i] for i in active], epoch)
        for k, (i, record) in enumerate(zip(active, records)):
            stopped = (
                NonFiniteError(epoch, "weights")
                if not finite[k]  # as train: weights first
                else check.judge([*histories[i], record], untrained[i], classes)
            )
            if stopped is not None:
                results[i] = stopped
                continue
            histories[i].append(record)
            stop = callbacks[i] is not None and bool(callbacks[i](record))
            if stop or epoch == configs[0].epochs:
                results[i] = TrainResult(sgd.stack.trial(k).copy(), tuple(histories[i]), stop, engine)
        keep = [k for k, i in enumerate(active) if results[i] is None]
        if not keep:
            break
        if len(keep) < len(active):
            active = [active[k] for k in keep]
            sgd = _sgd(engine, spec, sgd.stack.select(keep), X, training.y, [configs[i] for i in active])
    return results


def _sgd(
    engine: str, spec: NetworkSpec, stack: Stack, X: np.ndarray, y: np.ndarray, configs: Sequence[TrainConfig]
) -> PackedSGD:
    """The pack's SGD on ``engine`` over X (n, d) with labels y (n,): ``PackedSGD`` or its compiled twin."""
    if engine == "compiled":
        return kernels().PackedCompiledSGD(spec, stack, X, y, configs)
    return PackedSGD(spec, stack, X, one_hot(y, spec.sizes[-1], X.dtype), configs)


def _epoch(
    sgd: PackedSGD, perms: np.ndarray, monitor: Callable, lmbda: np.ndarray, etas: list[float], epoch: int
) -> tuple[list[EpochRecord], np.ndarray]:
    """One epoch of the pack's SGD, trial k visiting rows perms[k] (K, n), then what ``monitor``
    (``_monitor`` bound to the pack's data) measures: the K records, each with its share of the
    pack's times, and which networks stayed finite (K,) bool (divergence is judged by the caller)."""
    start = time.perf_counter()
    with np.errstate(all="ignore"):
        sgd.epoch(perms)
    seconds = (time.perf_counter() - start) / len(perms)
    start = time.perf_counter()
    finite = sgd.stack.finite()
    with np.errstate(all="ignore"):
        values = monitor(sgd.stack, lmbda)
    eval_seconds = (time.perf_counter() - start) / len(perms)
    return _records(values, etas, epoch, seconds, eval_seconds), finite


def _monitor(
    spec: NetworkSpec,
    config: TrainConfig,
    training: LabelledSet,
    validation: LabelledSet | None,
    n: int,
    engine: str,
    stack: Stack,
    lmbda: np.ndarray,
) -> dict[str, list | None]:
    """What the (shared) config monitors after an epoch, for every network (on ``engine``): curve → K values."""
    values: dict[str, list | None] = dict.fromkeys(CURVES)
    for part, data, want_cost, want_acc in monitored(config, training, validation):
        costs, accuracies = evaluate_stack(spec, stack, data.X, data.y, lmbda, n, want_cost, engine)
        values[f"{part}_cost"] = costs
        if want_acc:
            values[f"{part}_accuracy"] = accuracies
    return values


def _records(
    values: dict[str, list | None], etas: list[float], epoch: int, seconds: float, eval_seconds: float
) -> list[EpochRecord]:
    """The K networks' EpochRecords from ``_monitor``'s curve → K values, and their η (K,)."""
    return [
        EpochRecord(
            epoch=epoch,
            seconds=seconds,
            eval_seconds=eval_seconds,
            eta=eta,
            **{curve: v if v is None else v[k] for curve, v in values.items()},
        )
        for k, eta in enumerate(etas)
    ]


def _check(spec: NetworkSpec, configs: list[TrainConfig], params: Sequence[Params] | None, callbacks: list) -> None:
    """ValueError unless the configs pack together and params and callbacks pair with them."""
    for i, config in enumerate(configs):
        option = _unpacked(config)
        if option is not None:
            raise ValueError(
                f"configs[{i}] cannot be packed: {option} is {getattr(config, option)!r} "
                f"(packs train plain SGD; train it alone)"
            )
    for i, config in enumerate(configs[1:], 1):
        field = _differing(configs[0], config)
        if field is not None:
            raise ValueError(
                f"configs[{i}] cannot be packed with configs[0]: {field} is "
                f"{getattr(config, field)!r}, not {getattr(configs[0], field)!r}"
            )
    if len(callbacks) != len(configs):
        raise ValueError(f"callbacks must pair with configs: got {len(callbacks)} for {len(configs)}")
    if params is None:
        return
    if len(params) != len(configs):
        raise ValueError(f"params must pair with configs: got {len(params)} for {len(configs)}")
    for i, p in enumerate(params):
        if p.sizes != spec.sizes or p.dtype != params[0].dtype:
            raise ValueError(
                f"params[{i}] has sizes {p.sizes} and dtype {p.dtype}; the pack needs "
                f"{spec.sizes} and {params[0].dtype}"
            )
