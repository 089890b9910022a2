"""What one training run does (``TrainConfig``), and the rule of each of its options (``OPTIONS``).

``OPTIONS`` is the one table of training options: per option its type and range, whether a
study may search it, how trials trained together in one pack (``core.packed``) treat it, and
the option it needs. ``TrainConfig`` checks its fields against it; sweep/ derives from it what a
study file may set and search. Adding an option: a field here, its row, and its use by the
trainers (``core.train``, ``core.compiled``; ``core.packed`` if packs train it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from types import MappingProxyType
from typing import Any

ENGINES = ("auto", "numpy", "compiled")  # which engine trains: see core.engine


class Pack(Enum):
    """What the trials of one pack (``core.packed``) may do with an option."""

    AGREE = "agree"  # all have the same value
    DIFFER = "differ"  # each has its own value
    OFF = "off"  # none has it on: a config with it on trains alone
    IGNORED = "ignored"  # packs never read it (it acts only with an OFF option on)


_KINDS = {int: "an integer", float: "a finite number", bool: "true or false"}  # what a value of each type must be


def _has_kind(kind: type, value: object) -> bool:
    """Whether ``value`` is of ``kind``: bool is no number, an int is a fine float, a float is finite."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


@dataclass(frozen=True)
class Rule:
    """The values one training option takes, whether a study may search it, and how packs treat it."""

    kind: type  # int, float (any finite number), bool, or str (one of ``choices``)
    at_least: float | None = None  # the least value (None: no such bound)
    above: float | None = None  # a bound the value must exceed (None: no such bound)
    below: float | None = None  # a bound the value must stay under (None: no such bound)
    choices: tuple[str, ...] = ()  # the values of a str option
    off: bool = False  # None is a value too, meaning off (as 0 does where the range holds it)
    search: bool = False  # a study may search it in [space]
    pack: Pack = Pack.AGREE  # what the trials of one pack may do with it
    needs: str | None = None  # the bool option that must be on while this one is on (non-zero)

    def check(self, name: str, value: object) -> None:
        """OptionError unless ``value`` keeps the rule (``name``: the option's, for the error)."""
        requirement = self.unmet(value)
        if requirement is not None:
            raise OptionError(name, value, requirement)

    def unmet(self, value: object) -> str | None:
        """What ``value`` must be and is not ("an integer", "at least 1", "one of ..."), or None."""
        if value is None and self.off:
            return None
        if self.choices:
            return None if value in self.choices else f"one of {', '.join(self.choices)}"
        if not _has_kind(self.kind, value):
            return _KINDS[self.kind]
        if (
            (self.at_least is not None and value < self.at_least)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
        ):
            return self.bounds()
        return None

    def bounds(self) -> str:
        """The bounds in words: "at least 1", "positive", "at least 0 and below 1"."""
        low = f"at least {self.at_least:g}" if self.at_least is not None else None
        if self.above is not None:
            low = f"above {self.above:g}"
        high = f"below {self.below:g}" if self.below is not None else None
        words = " and ".join(part for part in (low, high) if part)
        if self.kind is float:  # as one says of numbers
            return {"above 0": "positive", "at least 0": "zero or positive"}.get(words, words)
        return words


class OptionError(ValueError):
    """A training option's value breaks its rule: ``name``, ``value`` and what it must be (``requirement``)."""

    def __init__(self, name: str, value: object, requirement: str) -> None:
        super().__init__(f"{name} must be {requirement}, got {value!r}")
        self.name, self.value, self.requirement = name, value, requirement


class UnmetNeed(ValueError):
    """Option ``name`` is on while ``needed``, which it needs (``Rule.needs``), is off."""

    def __init__(self, name: str, needed: str) -> None:
        super().__init__(f"{name} needs {needed} = True")
        self.name, self.needed = name, needed


_WATCH = "monitor_validation_accuracy"  # what early stopping and the η schedule watch

#: The rule of every field of ``TrainConfig``, in its order.
OPTIONS: Mapping[str, Rule] = MappingProxyType(
    {
        "epochs": Rule(int, at_least=1, search=True),
        "batch_size": Rule(int, at_least=1, search=True),
        "eta": Rule(float, above=0, search=True, pack=Pack.DIFFER),
        "lmbda": Rule(float, at_least=0, search=True, pack=Pack.DIFFER),
        "seed": Rule(int, at_least=0, pack=Pack.DIFFER),  # NumPy's generator takes any non-negative int
        "monitor_training_cost": Rule(bool),
        "monitor_training_accuracy": Rule(bool),
        "monitor_validation_cost": Rule(bool),
        "monitor_validation_accuracy": Rule(bool),
        "engine": Rule(str, choices=ENGINES),
        "momentum": Rule(float, at_least=0, below=1, search=True, pack=Pack.OFF),  # μ = 1 would never forget
        "dropout": Rule(float, at_least=0, below=1, search=True, pack=Pack.OFF),  # p = 1 would drop every unit
        "max_norm": Rule(float, above=0, off=True, search=True, pack=Pack.OFF),  # None: off; 0 would zero every unit
        "patience": Rule(int, at_least=0, off=True, search=True, pack=Pack.OFF, needs=_WATCH),  # 0, None: off
        "eta_patience": Rule(int, at_least=0, off=True, search=True, pack=Pack.OFF, needs=_WATCH),  # 0, None: off
        "eta_min_factor": Rule(float, above=1, search=True, pack=Pack.IGNORED),  # read with eta_patience alone
    }
)


def unmet_need(values: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first option that is on (truthy) in ``values`` while the option it needs is not:
    (option, needed), or None. Options missing from ``values`` count as off."""
    return next(
        (
            (name, rule.needs)
            for name, rule in OPTIONS.items()
            if rule.needs and values.get(name) and not values.get(rule.needs)
        ),
        None,
    )


def packed(how: Pack) -> tuple[str, ...]:
    """The options packs treat as ``how`` says, in table order."""
    return tuple(name for name, rule in OPTIONS.items() if rule.pack is how)


@dataclass(frozen=True)
class TrainConfig:
    """What one training run does: epochs, batch size, η, λ, seed, what it monitors, which
    engine trains it, Nielsen's chapter-3 options and max-norm, each off by default. Each field keeps
    its rule in ``OPTIONS``, checked when the config is made.
    """

    epochs: int  # passes over the training set
    batch_size: int  # m: examples per SGD step (the last step of an epoch takes what is left)
    eta: float  # η: the learning rate
    lmbda: float = 0.0  # λ: L2 regularisation, W ← (1 − ηλ/n) W at every step (biases are not decayed)
    seed: int = 0  # of the initial weights, each epoch's permutation and dropout masks
    monitor_training_cost: bool = True  # measure the cost on the training set after each epoch
    monitor_training_accuracy: bool = True  # ... the accuracy on the training set
    monitor_validation_cost: bool = True  # ... the cost on the validation set
    monitor_validation_accuracy: bool = True  # ... the accuracy on the validation set
    engine: str = "auto"  # "auto", "numpy" or "compiled": see core.engine
    momentum: float = 0.0  # μ: velocity v ← μv − η∇C, w ← w + v (0: plain SGD)
    dropout: float = 0.0  # p: each hidden unit is dropped with probability p in training (inverted dropout)
    max_norm: float | None = None  # c: after each step, a hidden unit's incoming weights longer than c are scaled to c
    patience: int | None = None  # early stopping: stop after this many epochs without a better validation accuracy
    eta_patience: int | None = None  # halve η after this many epochs without a better one (since the last halving)
    eta_min_factor: float = 128.0  # with eta_patience: stop once η has fallen to η₀ / eta_min_factor

    def __post_init__(self) -> None:
        for field in fields(self):
            OPTIONS[field.name].check(field.name, getattr(self, field.name))
        unmet = unmet_need({field.name: getattr(self, field.name) for field in fields(self)})
        if unmet is not None:
            raise UnmetNeed(*unmet)

    @property
    def watches_validation(self) -> bool:
        """Whether training reacts to the validation accuracy (early stopping or the η schedule)."""
        return bool(self.patience or self.eta_patience)
