"""The parts of a study: its objectives, its data, and its sampler and pruner by name with their options.

Each part checks itself when made and raises ``InvalidValue`` naming the key at fault;
``sweep.spec.study.StudySpec`` holds them and checks how they fit together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import optuna

from core.data import DATASETS
from sweep import limits
from sweep.errors import InvalidValue
from sweep.schema import METRICS
from sweep.spec import samplers
from sweep.spec.samplers import PRUNERS, SAMPLERS, Option
from sweep.spec.space import TABLE, at_key, at_most, did_you_mean, int_at_least, is_int, one_of, show

DIRECTIONS = ("maximize", "minimize")


def default_direction(metric: str) -> str:
    """Accuracies are maximised, everything else (costs, seconds, the gap) minimised."""
    return "maximize" if metric.endswith("accuracy") else "minimize"


@dataclass(frozen=True)
class Objective:
    """A metric (one of ``METRICS``) and whether to maximize or minimize it."""

    metric: str
    direction: str

    def __post_init__(self) -> None:
        with at_key("metric"):
            one_of("metric", METRICS)(self.metric)
        with at_key("direction"):
            one_of("direction", DIRECTIONS)(self.direction)


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, and how many of the first examples of each part to use (None: all)."""

    dataset: str = "mnist-5k"
    n_train: int | None = None
    n_validation: int | None = None
    n_test: int | None = None

    def __post_init__(self) -> None:
        with at_key("dataset"):
            one_of("dataset", DATASETS)(self.dataset)
        for key in ("n_train", "n_validation", "n_test"):
            if getattr(self, key) is not None:
                with at_key(key):
                    int_at_least(1)(getattr(self, key))


def _checked_options(options: Mapping[str, Any], allowed: Mapping[str, Option], owner: str) -> Mapping[str, Any]:
    """Constructor options checked by name and TOML type against ``allowed``."""
    TABLE.check(options)
    for key, value in options.items():
        option = allowed.get(key)
        if option is None:
            known = ", ".join(allowed) or "none"
            raise InvalidValue(key, f"unknown option of {owner}{did_you_mean(key, allowed)}; options: {known}")
        if not option.accepts(value):
            raise InvalidValue(key, f"must be {option.type_names}, got {show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidValue(key, f"must be a finite number, got {show(value)}")
        if key in limits.OPTION_BOUNDS and is_int(value):  # (Optuna checks the lower bound)
            with at_key(key):
                at_most(value, *limits.OPTION_BOUNDS[key])
    for key, option in allowed.items():
        if option.required and key not in options:
            raise InvalidValue(key, f"required by {owner}")
    return MappingProxyType(dict(options))


@dataclass(frozen=True)
class SamplerSpec:
    """An Optuna sampler by name (one of ``SAMPLERS``), its seed, and other constructor options."""

    name: str = "tpe"
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        with at_key("name"):
            one_of("sampler", SAMPLERS)(self.name)
        with at_key("seed"):
            int_at_least(0, limits.MAX_SEED, "NumPy's seeds are 32-bit")(self.seed)
        options = _checked_options(self.options, samplers.sampler_options(self.name), f"the {self.name} sampler")
        object.__setattr__(self, "options", options)
        self.build()  # Optuna's own checks of the values (the grid's points are checked by StudySpec)

    def build(self, grid: Mapping[str, list] | None = None, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """The Optuna sampler (``grid``: the grid sampler's points; see samplers.build_sampler)."""
        return samplers.build_sampler(self.name, self.seed, self.options, grid, seed_offset)


@dataclass(frozen=True)
class PrunerSpec:
    """An Optuna pruner by name (one of ``PRUNERS``) and its constructor options.

    ``wrapped`` is the pruner a "patient" pruner wraps (``[pruner.wrapped]``).
    """

    name: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)
    wrapped: PrunerSpec | None = None

    def __post_init__(self) -> None:
        with at_key("name"):
            one_of("pruner", PRUNERS)(self.name)
        options = _checked_options(self.options, samplers.pruner_options(self.name), f"the {self.name} pruner")
        object.__setattr__(self, "options", options)
        if self.wrapped is not None and self.name != "patient":
            raise InvalidValue("wrapped", f"only the patient pruner wraps another, not the {self.name} pruner")
        self.build()  # Optuna's own checks of the values

    def build(self) -> optuna.pruners.BasePruner:
        """The Optuna pruner (a patient pruner wraps the one built from ``wrapped``)."""
        with at_key("wrapped"):
            wrapped = None if self.wrapped is None else self.wrapped.build()
        return samplers.build_pruner(self.name, self.options, wrapped)
