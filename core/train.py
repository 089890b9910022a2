"""Mini-batch SGD with L2 regularisation and Nielsen's chapter-3 options (momentum, dropout,
early stopping, a halving learning rate), returning the per-epoch history as data; runs that
do not learn are stopped with a reason (``LearningCheck``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from core.engine import check_engine, resolve
from core.model import NetworkSpec, Params, Workspace, evaluate, init_params, one_hot


class NotLearningError(ArithmeticError):
    """Training was stopped because the network is not learning (see ``LearningCheck``).

    ``epoch`` is the epoch after which it was stopped, ``what`` the quantity that showed
    it ("weights", "training cost", "validation accuracy", ...); the message says why.
    """

    def __init__(self, epoch: int, what: str, message: str) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.what = what


class NonFiniteError(NotLearningError):
    """Training diverged: a cost or a weight became NaN or infinite."""

    def __init__(self, epoch: int, what: str) -> None:
        super().__init__(epoch, what, f"non-finite {what} at epoch {epoch} (learning rate too large?)")


class CostGrowthError(NotLearningError):
    """Training diverged: a cost grew far above the untrained network's, yet stayed finite."""

    def __init__(self, epoch: int, what: str, cost: float, untrained: float, factor: float) -> None:
        super().__init__(
            epoch,
            what,
            f"{what} {cost:.3g} at epoch {epoch} is over {factor:g} × the "
            f"untrained network's {untrained:.3g} (learning rate too large?)",
        )
        self.cost, self.untrained = cost, untrained


class ChanceAccuracyError(NotLearningError):
    """Training is not learning: the accuracy has stayed at chance level for a few epochs."""

    def __init__(self, epoch: int, what: str, accuracy: float, classes: int, margin: float, epochs: int) -> None:
        super().__init__(
            epoch,
            what,
            f"{what} {accuracy:.3f} at epoch {epoch}, within {margin:g} of chance "
            f"(1/{classes}) for {epochs} epochs in a row: not learning",
        )
        self.accuracy = accuracy


class LabelledSet(Protocol):
    X: np.ndarray  # (n, sizes[0]) float
    y: np.ndarray  # (n,) int labels


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _fraction(name: str, value: object) -> None:
    """ValueError unless ``value`` is a number in [0, 1)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def _epochs_or_off(name: str, value: object) -> None:
    """ValueError unless ``value`` is None or a non-negative integer (None and 0: off)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{name} must be a non-negative integer or None (0 and None: off), got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """What one training run does: epochs, batch size, η, λ, seed, what it monitors, which
    engine trains it ("auto", "numpy" or "compiled": see ``core.engine``) and Nielsen's
    chapter-3 options, each off by default. ``patience`` and ``eta_patience`` count epochs
    without a better validation accuracy (so they need it monitored and a validation set).
    """

    epochs: int
    batch_size: int
    eta: float
    lmbda: float = 0.0
    seed: int = 0
    monitor_training_cost: bool = True
    monitor_training_accuracy: bool = True
    monitor_validation_cost: bool = True
    monitor_validation_accuracy: bool = True
    engine: str = "auto"
    momentum: float = 0.0  # μ: velocity v ← μv − η∇C, w ← w + v (0: plain SGD)
    dropout: float = 0.0  # p: each hidden unit is dropped with probability p in training (inverted dropout)
    patience: int | None = None  # early stopping: stop after this many epochs without a better validation accuracy
    eta_patience: int | None = None  # halve η after this many epochs without a better one (since the last halving)
    eta_min_factor: float = 128.0  # with eta_patience: stop once η has fallen to η₀ / eta_min_factor

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        for name in ("eta", "lmbda"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.eta <= 0:
            raise ValueError(f"eta must be positive, got {self.eta!r}")
        if self.lmbda < 0:
            raise ValueError(f"lmbda must be zero or positive, got {self.lmbda!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        check_engine(self.engine)
        _fraction("momentum", self.momentum)
        _fraction("dropout", self.dropout)
        _epochs_or_off("patience", self.patience)
        _epochs_or_off("eta_patience", self.eta_patience)
        factor = self.eta_min_factor
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 1 < factor < math.inf:
            raise ValueError(f"eta_min_factor must be a finite number above 1, got {factor!r}")
        if (self.patience or self.eta_patience) and not self.monitor_validation_accuracy:
            what = "patience" if self.patience else "eta_patience"
            raise ValueError(f"{what} needs monitor_validation_accuracy = True")

    @property
    def watches_validation(self) -> bool:
        """Whether training reacts to the validation accuracy (early stopping or the η schedule)."""
        return bool(self.patience or self.eta_patience)


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch measured; a curve that is not monitored is None."""

    epoch: int  # 1-based
    training_cost: float | None
    training_accuracy: float | None
    validation_cost: float | None
    validation_accuracy: float | None
    seconds: float  # the SGD pass alone
    eval_seconds: float  # the monitoring that followed it
    eta: float | None = None  # the learning rate of the epoch (it changes with eta_patience)


CURVES = ("training_cost", "training_accuracy", "validation_cost", "validation_accuracy")


@dataclass(frozen=True)
class TrainResult:
    params: Params
    history: tuple[EpochRecord, ...]
    stopped_early: bool  # the callback asked to stop
    engine: str = "numpy"  # the engine that trained it: "numpy" or "compiled"
    best_epoch: int | None = None  # with patience: the epoch whose parameters ``params`` are
    ended_by: str | None = None  # why training ended before config.epochs on its own (patience, η floor)

    def curves(self) -> dict[str, list]:
        """The history as columns: {"epoch": [...], "training_cost": [...], ...}."""
        return {f.name: [getattr(r, f.name) for r in self.history] for f in fields(EpochRecord)}


def _best_accuracy(record: EpochRecord) -> tuple[str, float] | None:
    """The highest monitored accuracy of an epoch with its name ("validation accuracy"), or None."""
    accuracies = {f"{part} accuracy": getattr(record, f"{part}_accuracy") for part in ("validation", "training")}
    return max(
        ((what, value) for what, value in accuracies.items() if value is not None),
        key=lambda item: item[1],
        default=None,
    )


@dataclass(frozen=True)
class LearningCheck:
    """When a run counts as not learning and is stopped with a ``NotLearningError``.

    Non-finite weights or costs always stop it (NonFiniteError). After each epoch it is
    also stopped when
    * a monitored cost exceeds ``cost_growth`` × the untrained network's cost on the
      same set, measured before epoch 1 (CostGrowthError: diverged, yet finite); or
    * for ``chance_epochs`` epochs in a row, every monitored accuracy was at most chance
      (1 / number of classes) + ``chance_margin`` (ChanceAccuracyError).
    Learning trials with a large η have one-epoch spikes (a cost of 8.6 × the untrained,
    an accuracy of 0.34, back to 0.97 the next epoch), hence a far factor and "in a row".
    None switches a test off. The defaults never fired on a learning trial of the shipped
    studies (figures in the README, "Trials that do not learn").
    """

    # Untrained MNIST costs: 2.3–2.6 (cross-entropy), 1.2–1.3 (quadratic); learning trials
    # peaked at 8.6 ×, sigmoid + cross-entropy at η = 1e12 is at 1e12 × after one epoch.
    cost_growth: float | None = 100.0
    chance_epochs: int = 3
    # Dead networks score 0.096–0.114 on MNIST (its largest class is 11.4%); of learning
    # trials, none had 3 epochs in a row below 0.19, nor any epoch after the 2nd below 0.16.
    chance_margin: float | None = 0.05

    def __post_init__(self) -> None:
        if self.cost_growth is not None and not self.cost_growth > 1:
            raise ValueError(f"cost_growth must be above 1 or None, got {self.cost_growth!r}")
        _positive_int("chance_epochs", self.chance_epochs)
        if self.chance_margin is not None and not 0 <= self.chance_margin < 1:
            raise ValueError(f"chance_margin must be in [0, 1) or None, got {self.chance_margin!r}")

    def judge(
        self, history: Sequence[EpochRecord], untrained: EpochRecord | None, classes: int
    ) -> NotLearningError | None:
        """Why the run should stop after the last epoch of ``history`` (``untrained``: the
        costs before epoch 1; ``classes``: the number of outputs), or None."""
        record = history[-1]
        costs = [(part, getattr(record, f"{part}_cost")) for part in ("training", "validation")]
        for part, cost in costs:
            if cost is not None and not math.isfinite(cost):
                return NonFiniteError(record.epoch, f"{part} cost")
        for part, cost in costs:
            start = None if untrained is None else getattr(untrained, f"{part}_cost")
            if (
                self.cost_growth is not None
                and cost is not None
                and start is not None
                and cost > self.cost_growth * start
            ):
                return CostGrowthError(record.epoch, f"{part} cost", cost, start, self.cost_growth)
        recent = [_best_accuracy(r) for r in history[-self.chance_epochs :]]
        if self.chance_margin is None or len(recent) < self.chance_epochs or None in recent:
            return None
        if all(accuracy <= 1 / classes + self.chance_margin for _, accuracy in recent):
            return ChanceAccuracyError(record.epoch, *recent[-1], classes, self.chance_margin, self.chance_epochs)
        return None


LEARNING_CHECK = LearningCheck()  # what ``train`` and ``train_packed`` apply unless told otherwise
NO_CHECK = LearningCheck(cost_growth=None, chance_margin=None)  # non-finite values only


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


class SGD:
    """One epoch of mini-batch SGD, with every buffer allocated once.

    Each step backpropagates with δᴸ scaled by η/m and updates in place, as in the
    textbook: W ← (1 − ηλ/n) W − (η/m) Σₓ ∂Cₓ/∂W and b ← b − (η/m) Σₓ ∂Cₓ/∂b. With
    momentum μ > 0 that step goes through a velocity instead (Nielsen, ch. 3):
    v ← μv − (η/m) Σₓ ∂Cₓ/∂W − (ηλ/n) W, W ← W + v (biases alike, without the L2 term).
    With dropout the hidden units of each example are masked as ``keep`` says and the
    kept ones scaled by 1/(1 − p) (inverted dropout: evaluation uses the whole network).
    Batch rows are gathered a few mini-batches at a time into one buffer; a mini-batch
    is then a contiguous slice of it, not a copy. The buffer has no ones column (the
    first layer adds its bias apart): gathering whole rows takes half the time.
    """

    def __init__(self, spec: NetworkSpec, params: Params, X: np.ndarray, Y: np.ndarray, config: TrainConfig) -> None:
        self.params, self.X, self.Y = params, X, Y  # X (n, d), one-hot Y (n, k)
        n = len(X)
        self.m = m = min(config.batch_size, n)
        self.lmbda, self.momentum = config.lmbda, config.momentum
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
            return
        for block, grad in zip(self.params.layers, ws.grads):
            if decay != 1.0:
                # Decay the whole contiguous block (fast), then give the bias column back
                # what it lost through the gradient: biases are not decayed.
                grad[:, -1] -= (1.0 - decay) * block[:, -1]
                block *= decay
            block -= grad


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
        from core.compiled import CompiledSGD

        sgd = CompiledSGD(spec, [params], X, training.y, [config])
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
        from core.compiled import evaluate_compiled

        costs, accuracies = evaluate_compiled(
            spec, [params], data.X, data.y, [lmbda], n_train or len(data.y), want_cost
        )
        return None if costs is None else costs[0], accuracies[0]
    return evaluate(spec, params, data.X, data.y, lmbda, n_train)
