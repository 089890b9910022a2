"""Mini-batch SGD with L2 regularisation, Nielsen's chapter-3 options (momentum, dropout,
early stopping, a halving learning rate) and max-norm, returning the per-epoch history as data;
runs that do not learn are stopped with a reason (``LearningCheck``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from core.config import TrainConfig
from core.engine import kernels, resolve
from core.history import CURVES, LEARNING_CHECK, EpochRecord, LearningCheck, NonFiniteError, TrainResult
from core.model import NetworkSpec, Params, Workspace, evaluate, init_params, one_hot


class LabelledSet(Protocol):
    X: np.ndarray  # (n, sizes[0]) float
    y: np.ndarray  # (n,) int labels


EpochCallback = Callable[[EpochRecord], bool | None]


GATHER_ROWS = 128  # rows gathered per call: amortises the call, stays in L2 cache


KEEP_CHUNK = 4096  # rows of dropout masks drawn per call: bounds the float32 draws' memory


def hidden_units(spec: NetworkSpec) -> list[tuple[int, int]]:
    """(first column, width) of each hidden layer in a dropout mask's columns (see ``draw_keep``)."""
    starts = np.cumsum((0, *spec.sizes[1:-1]))
    return [(int(start), width) for start, width in zip(starts, spec.sizes[1:-1])]


def draw_keep(spec: NetworkSpec, n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """An epoch's dropout masks (n, Σ hidden widths) bool: row t says which hidden units the
    t-th example of the epoch keeps (each with probability 1 − p); hidden layer l's columns
    are ``hidden_units(spec)[l]``. Drawn here once per epoch, so every engine sees the same."""
    keep = np.empty((n, sum(spec.sizes[1:-1])), bool)
    for start in range(0, n, KEEP_CHUNK):
        rows = keep[start : start + KEEP_CHUNK]
        np.greater_equal(rng.random(rows.shape, np.float32), p, out=rows)
    return keep


def limit_norms(weights: np.ndarray, c: float) -> None:
    """Max-norm (Srivastava et al. 2014): each row of ``weights`` (fan_out, fan_in), one unit's
    incoming weights, scaled in place to norm c if it is longer (a projection after the step)."""
    norms = np.sqrt(np.einsum("ij,ij->i", weights, weights))  # (fan_out,), without a squared copy
    weights *= (c / np.maximum(norms, c))[:, None]


class SGD:
    """One epoch of mini-batch SGD, with every buffer allocated once.

    Each step backpropagates with δᴸ scaled by η/m and updates in place, as in the
    textbook: W ← (1 − ηλ/n) W − (η/m) Σₓ ∂Cₓ/∂W and b ← b − (η/m) Σₓ ∂Cₓ/∂b. With
    momentum μ > 0 that step goes through a velocity instead (Nielsen, ch. 3):
    v ← μv − (η/m) Σₓ ∂Cₓ/∂W − (ηλ/n) W, W ← W + v (biases alike, without the L2 term).
    With dropout the hidden units of each example are masked as ``keep`` says and the
    kept ones scaled by 1/(1 − p) (inverted dropout: evaluation uses the whole network).
    With max-norm c each hidden unit's incoming weights are then scaled back to norm c if
    longer (``limit_norms``; biases and the output layer are not).
    Batch rows are gathered a few mini-batches at a time into one buffer; a mini-batch
    is then a contiguous slice of it, not a copy. The buffer has no ones column (the
    first layer adds its bias apart): gathering whole rows takes half the time.
    """

    def __init__(self, spec: NetworkSpec, params: Params, X: np.ndarray, Y: np.ndarray, config: TrainConfig) -> None:
        self.params, self.X, self.Y = params, X, Y  # X (n, d), one-hot Y (n, k)
        n = len(X)
        self.m = m = min(config.batch_size, n)
        self.lmbda, self.momentum, self.max_norm = config.lmbda, config.momentum, config.max_norm
        self.velocity = [np.zeros_like(block) for block in params.layers] if config.momentum else None
        self.units = hidden_units(spec)
        self.keep_scale = params.dtype.type(1.0 / (1.0 - config.dropout))
        self.masks = [np.empty((m, width), params.dtype) for _, width in self.units] if config.dropout else None
        self.full = Workspace(spec, m, params.dtype)
        self.tail = Workspace(spec, n % m, params.dtype) if n % m else None
        self.group = max(1, GATHER_ROWS // m) * m  # rows per gather, whole mini-batches
        self.x = np.empty((self.group, spec.sizes[0]), params.dtype)  # (rows, d)

    def epoch(self, perm: np.ndarray, eta: float, keep: np.ndarray | None = None) -> None:
        """One pass over the training set in the order ``perm`` (n,) at learning rate ``eta``,
        the t-th example keeping the hidden units ``keep[t]`` (``draw_keep``; None: all)."""
        m, n, x, X = self.m, len(perm), self.x, self.X
        self.decay = 1.0 - eta * self.lmbda / n
        Y = self.Y.take(perm, axis=0)  # (n, k): targets in epoch order, so batches are slices
        scale = eta / m
        n_full = n - n % m
        for start in range(0, n_full, self.group):
            rows = perm[start : min(start + self.group, n_full)]
            X.take(rows, axis=0, out=x[: len(rows)], mode="clip")
            for k in range(0, len(rows), m):
                at = slice(start + k, start + k + m)
                self._step(self.full, x[k : k + m], Y[at], scale, None if keep is None else keep[at])
        if self.tail is not None:
            x_tail = x[: n - n_full]
            X.take(perm[n_full:], axis=0, out=x_tail, mode="clip")
            self._step(self.tail, x_tail, Y[n_full:], eta / (n - n_full), None if keep is None else keep[n_full:])

    def _step(self, ws: Workspace, x: np.ndarray, y: np.ndarray, scale: float, keep: np.ndarray | None) -> None:
        masks = None
        if keep is not None:  # (rows, Σ widths) bool → each hidden layer's 0 or 1/(1 − p)
            masks = [
                np.multiply(keep[:, start : start + width], self.keep_scale, out=mask[: len(keep)])
                for (start, width), mask in zip(self.units, self.masks)
            ]
        ws.forward(self.params, x, masks)
        ws.backward(self.params, y, scale)
        decay = self.decay
        if self.velocity is not None:
            for block, grad, velocity in zip(self.params.layers, ws.grads, self.velocity):
                if decay != 1.0:
                    grad[:, :-1] += (1.0 - decay) * block[:, :-1]  # the L2 term, weights only
                velocity *= self.momentum
                velocity -= grad
                block += velocity
        else:
            for block, grad in zip(self.params.layers, ws.grads):
                if decay != 1.0:
                    # Decay the whole contiguous block (fast), then give the bias column back
                    # what it lost through the gradient: biases are not decayed.
                    grad[:, -1] -= (1.0 - decay) * block[:, -1]
                    block *= decay
                block -= grad
        if self.max_norm:
            for block in self.params.layers[:-1]:  # the hidden layers'
                limit_norms(block[:, :-1], self.max_norm)


def train(
    spec: NetworkSpec,
    config: TrainConfig,
    training: LabelledSet,
    validation: LabelledSet | None = None,
    *,
    params: Params | None = None,
    callback: EpochCallback | None = None,
    check: LearningCheck = LEARNING_CHECK,
) -> TrainResult:
    """Train by mini-batch SGD and return the parameters and per-epoch history.

    All randomness comes from ``np.random.default_rng(config.seed)``: the initial weights
    (unless ``params`` is given; it is then copied, not changed), then per epoch one
    permutation of the training set and, with dropout, its masks (``draw_keep``). Same
    seed, same data → identical history.
    ``callback(record)`` runs after every epoch; returning True stops training.
    Raises a NotLearningError naming the epoch when ``check`` judges that the network
    does not learn (with NO_CHECK: only when a cost or weight stops being finite),
    before the callback sees that epoch. ``config.engine`` picks the engine (``core.engine.resolve``);
    both draw the same numbers and train the same mini-batches.
    Early stopping and the η schedule (``Schedule``) take in each epoch before the callback
    sees it, and end training after it; with ``config.patience`` the result holds the
    parameters of its best epoch, also when the callback stops it (a run's deadline).
    """
    if config.watches_validation and validation is None:
        raise ValueError("patience and eta_patience need a validation set")
    rng = np.random.default_rng(config.seed)
    params = init_params(spec, rng) if params is None else params.copy()
    X = np.asarray(training.X, dtype=params.dtype)
    n = len(X)
    engine = resolve(config.engine, params.dtype)
    if engine == "compiled":
        sgd = kernels().CompiledSGD(spec, [params], X, training.y, [config])
    else:
        sgd = SGD(spec, params, X, one_hot(training.y, spec.sizes[-1], params.dtype), config)
    untrained = (
        _monitor(spec, config, params, training, validation, n, 0, 0.0, config.eta, engine)
        if check.cost_growth is not None
        else None
    )
    history: list[EpochRecord] = []
    schedule = Schedule(config)
    best = None  # with patience: a copy of the best epoch's parameters
    for epoch in range(1, config.epochs + 1):
        eta = schedule.eta
        start = time.perf_counter()
        perm = rng.permutation(n)
        keep = draw_keep(spec, n, config.dropout, rng) if config.dropout else None
        with np.errstate(all="ignore"):  # divergence is detected below, once per epoch
            sgd.epoch(perm, eta, keep)
        seconds = time.perf_counter() - start
        if not params.is_finite():
            raise NonFiniteError(epoch, "weights")
        record = _monitor(spec, config, params, training, validation, n, epoch, seconds, eta, engine)
        stop = check.judge([*history, record], untrained, spec.sizes[-1])
        if stop is not None:
            raise stop
        history.append(record)
        ended_by = schedule.after(record)
        if config.patience and schedule.best_epoch == epoch:
            best = params.copy()
        if callback is not None and callback(record):
            return schedule.result(params, best, history, True, engine)
        if ended_by is not None:
            return schedule.result(params, best, history, False, engine, ended_by)
    return schedule.result(params, best, history, False, engine)


class Schedule:
    """Early stopping and the halving learning rate, from the validation accuracy of each epoch.

    Nielsen's rules (ch. 3): stop after ``patience`` epochs without a better validation
    accuracy than the best so far (no-improvement-in-n); halve η after ``eta_patience``
    such epochs counted since the best or the last halving, and stop once η has fallen to
    η₀ / ``eta_min_factor`` (with 128, after the seventh halving: η₀/64 is the last η used).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config, self.eta = config, config.eta
        self.best_accuracy, self.best_epoch = -math.inf, 0
        self.stalled = 0  # epochs since the best or the last halving

    def after(self, record: EpochRecord) -> str | None:
        """Take in an epoch's record; return why training ends now, or None."""
        config = self.config
        if not config.watches_validation:
            return None
        if record.validation_accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch, self.stalled = record.validation_accuracy, record.epoch, 0
            return None
        self.stalled += 1
        if config.patience and record.epoch - self.best_epoch >= config.patience:
            return f"no better validation accuracy in {config.patience} epochs"
        if config.eta_patience and self.stalled >= config.eta_patience:
            self.eta, self.stalled = self.eta / 2, 0
            if self.eta * config.eta_min_factor <= config.eta:
                return f"η fell to η₀/{config.eta / self.eta:g}"
        return None

    def result(
        self,
        params: Params,
        best: Params | None,
        history: list[EpochRecord],
        stopped: bool,
        engine: str,
        ended_by: str | None = None,
    ) -> TrainResult:
        """The run's result: with patience, the best epoch's parameters (``best``)."""
        if best is None:
            return TrainResult(params, tuple(history), stopped, engine, ended_by=ended_by)
        return TrainResult(best, tuple(history), stopped, engine, self.best_epoch, ended_by)


def monitored(config: TrainConfig, training: LabelledSet, validation: LabelledSet | None):
    """(part, data, want_cost, want_accuracy) for each part that the config monitors."""
    for part, data in (("training", training), ("validation", validation)):
        want_cost = getattr(config, f"monitor_{part}_cost")
        want_acc = getattr(config, f"monitor_{part}_accuracy")
        if data is not None and (want_cost or want_acc):
            yield part, data, want_cost, want_acc


def _monitor(
    spec: NetworkSpec,
    config: TrainConfig,
    params: Params,
    training: LabelledSet,
    validation: LabelledSet | None,
    n: int,
    epoch: int,
    seconds: float,
    eta: float,
    engine: str = "numpy",
) -> EpochRecord:
    """Evaluate what the config monitors after an epoch, on ``engine`` (``evaluate`` or its
    compiled twin, ``core.compiled.evaluate_compiled``)."""
    start = time.perf_counter()
    values: dict[str, float | None] = dict.fromkeys(CURVES)
    for part, data, want_cost, want_acc in monitored(config, training, validation):
        with np.errstate(all="ignore"):
            cost, accuracy = evaluate_on(engine, spec, params, data, config.lmbda, n, want_cost)
        if want_cost:
            values[f"{part}_cost"] = cost
        if want_acc:
            values[f"{part}_accuracy"] = accuracy
    return EpochRecord(epoch=epoch, seconds=seconds, eval_seconds=time.perf_counter() - start, eta=eta, **values)


def evaluate_on(
    engine: str,
    spec: NetworkSpec,
    params: Params,
    data: LabelledSet,
    lmbda: float = 0.0,
    n_train: int | None = None,
    want_cost: bool = True,
) -> tuple[float | None, float]:
    """``evaluate`` of one network on ``data``, by the NumPy reference or the compiled engine
    (which skips the cost unless ``want_cost``): (cost or None, accuracy)."""
    if engine == "compiled":
        costs, accuracies = kernels().evaluate_compiled(
            spec, [params], data.X, data.y, [lmbda], n_train or len(data.y), want_cost
        )
        return None if costs is None else costs[0], accuracies[0]
    return evaluate(spec, params, data.X, data.y, lmbda, n_train)
