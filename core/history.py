"""What a training run measured, epoch by epoch (``EpochRecord``, ``TrainResult``), and when
that history shows it is not learning (``LearningCheck``, and the ``NotLearningError`` it raises)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

from core.config import Rule
from core.model import Params


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


_CHECK_RULES = {  # LearningCheck's fields (None: that test is off)
    "cost_growth": Rule(float, above=1, off=True),
    "chance_epochs": Rule(int, at_least=1),
    "chance_margin": Rule(float, at_least=0, below=1, off=True),
}


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
    studies (figures in docs/training.md, "Trials that do not learn").
    """

    # Untrained MNIST costs: 2.3–2.6 (cross-entropy), 1.2–1.3 (quadratic); learning trials
    # peaked at 8.6 ×, sigmoid + cross-entropy at η = 1e12 is at 1e12 × after one epoch.
    cost_growth: float | None = 100.0
    chance_epochs: int = 3
    # Dead networks score 0.096–0.114 on MNIST (its largest class is 11.4%); of learning
    # trials, none had 3 epochs in a row below 0.19, nor any epoch after the 2nd below 0.16.
    chance_margin: float | None = 0.05

    def __post_init__(self) -> None:
        for name, rule in _CHECK_RULES.items():
            rule.check(name, getattr(self, name))

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
