"""Optuna samplers and pruners by name, built from plain values; a grid's order.

A study file names a sampler and a pruner and may pass them any constructor argument
a TOML scalar can express: the options a class accepts are read from its signature
(``sampler_options``, ``pruner_options``), so they follow the installed Optuna.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import ExperimentalWarning

from core.config import Pack, packed
from sweep.errors import InvalidValue
from sweep.spec.space import significant

if TYPE_CHECKING:
    from sweep.spec.space import Param

__all__ = [
    "GRID_SAMPLERS",
    "PACKABLE",
    "PRUNERS",
    "SAMPLERS",
    "SINGLE_OBJECTIVE_SAMPLERS",
    "Option",
    "build_pruner",
    "build_sampler",
    "grid_key",
    "grid_order",
    "grid_points",
    "grid_size",
    "pruner_options",
    "sampler_options",
]


class _BudgetStops:
    """Mixin: no ``study.stop()`` after the last point.

    Optuna's grid and brute-force samplers stop the study once every point has been
    tried, which only works inside ``Study.optimize``. A sweep asks and tells trials
    itself and stops when the study's budget (the grid's size) is spent, checked under
    a lock shared by all workers (see sweep.run.worker).
    """

    def after_trial(self, study, trial, state, values) -> None:
        return None


PACKABLE = packed(Pack.DIFFER)  # parameters that trials trained in one pack may differ in (core.packed.can_pack)


class GridSampler(_BudgetStops, optuna.samplers.GridSampler):
    """Optuna's grid sampler, ended by the sweep's budget.

    A sweep does not let it choose points: workers enqueue every grid point themselves,
    in ``grid_order`` (see sweep.run.worker), so each trial arrives with its point fixed;
    the sampler only checks that point against the grid and records it as Optuna does.
    """


class BruteForceSampler(_BudgetStops, optuna.samplers.BruteForceSampler):
    """Optuna's brute-force sampler, ended by the sweep's budget."""


_SAMPLER_CLASSES: Mapping[str, type[optuna.samplers.BaseSampler]] = MappingProxyType(
    {
        "grid": GridSampler,
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "nsga3": optuna.samplers.NSGAIIISampler,
        "gp": optuna.samplers.GPSampler,
        "bruteforce": BruteForceSampler,
    }
)
_PRUNER_CLASSES: Mapping[str, type[optuna.pruners.BasePruner]] = MappingProxyType(
    {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "patient": optuna.pruners.PatientPruner,
        "threshold": optuna.pruners.ThresholdPruner,
    }
)

SAMPLERS: tuple[str, ...] = tuple(_SAMPLER_CLASSES)
PRUNERS: tuple[str, ...] = tuple(_PRUNER_CLASSES)
#: Samplers that enumerate a discrete space: its size is their natural budget.
GRID_SAMPLERS = ("grid", "bruteforce")
#: Samplers that refuse a multi-objective study (Optuna 5.0: CMA-ES only).
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)

# Constructor arguments a study file never sets: the spec supplies them
# (sampler.seed, the grid from [space], the pruner from [pruner.wrapped]).
_FROM_SPEC = frozenset({"seed", "search_space", "wrapped_pruner"})
# Annotation words a TOML value can satisfy; an argument annotated with any other word
# (a callable, a sampler, an array, a dict, ...) cannot be set from a study file.
_TOML_TYPES: Mapping[str, type] = MappingProxyType({"int": int, "float": float, "str": str, "bool": bool})


@dataclass(frozen=True)
class Option:
    """A constructor argument a study file may set: the TOML types it takes, and whether it is required."""

    types: tuple[type, ...]
    required: bool

    def accepts(self, value: object) -> bool:
        """Whether ``value`` fits the annotation (bool is not int; an int is a fine float)."""
        if isinstance(value, bool):
            return bool in self.types
        if isinstance(value, int) and float in self.types:
            return True
        return isinstance(value, tuple(t for t in self.types if t is not bool))

    @property
    def type_names(self) -> str:
        return " or ".join(t.__name__ for t in self.types)


def sampler_options(name: str) -> Mapping[str, Option]:
    """The options [sampler] may give the sampler ``name`` (one of ``SAMPLERS``)."""
    return _options(_SAMPLER_CLASSES[name])


def pruner_options(name: str) -> Mapping[str, Option]:
    """The options [pruner] may give the pruner ``name`` (one of ``PRUNERS``)."""
    return _options(_PRUNER_CLASSES[name])


@functools.cache
def _options(cls: type) -> Mapping[str, Option]:
    options = {}
    for name, parameter in inspect.signature(cls).parameters.items():
        annotation = parameter.annotation
        if annotation is parameter.empty:
            annotation = ""
        elif not isinstance(annotation, str):  # a class or a union, not a string annotation
            annotation = getattr(annotation, "__name__", str(annotation))
        words = set(re.findall(r"\w+", annotation)) - {"None"}
        if name in _FROM_SPEC or not words or not words <= _TOML_TYPES.keys():
            continue
        types = tuple(t for word, t in _TOML_TYPES.items() if word in words)
        options[name] = Option(types, required=parameter.default is parameter.empty)
    return MappingProxyType(options)


def grid_points(space: Mapping[str, Param]) -> dict[str, list]:
    """Every value of every parameter of ``space`` (a study's searched parameters), for
    ``GridSampler(search_space=...)``.

    Float steps are rounded to 12 significant digits (0.15, not 0.15000000000000002).
    Raises ValueError for a continuous range, which has no grid.
    """
    points = {}
    for name, param in space.items():
        values = param.grid_values()
        if values is None:
            raise ValueError(f"{name}: a continuous range has no grid points")
        points[name] = values
    return points


def grid_size(space: Mapping[str, Param]) -> int:
    """How many points ``grid_points(space)`` spans: the product of the value counts, not listed."""
    return math.prod(param.n_values() for param in space.values())


def grid_order(space: Mapping[str, Param]) -> list[dict[str, Any]]:
    """Every grid point, η, λ and the seed varying fastest: consecutive points that differ only in
    PACKABLE parameters share their structure and train together (core.packed).

    This order, not the sampler's, decides which point a sweep's next trial runs: workers
    enqueue the points themselves (see sweep.run.worker), so each trial arrives with its point fixed.
    """
    points = grid_points(space)
    names = sorted(points, key=lambda name: name in PACKABLE)  # (stable: file order otherwise)
    return [dict(zip(names, values)) for values in itertools.product(*(points[name] for name in names))]


def grid_key(params: Mapping[str, Any]) -> tuple:
    """A point's values by name, floats to 9 significant digits: equal for equal grid points
    whether they come from ``grid_order``, a study file or a trial's stored parameters."""
    return tuple(sorted((name, significant(value, 9)) for name, value in params.items()))


def build_sampler(
    name: str, seed: int, options: Mapping[str, Any], grid: Mapping[str, list] | None = None, seed_offset: int = 0
) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` (one of ``SAMPLERS``) with ``options``, seeded with ``seed + seed_offset``
    modulo 2**32 (NumPy's seeds are 32-bit: the seeds of a run's workers stay distinct and valid).

    ``grid`` is the grid sampler's search space (``grid_points``). Parallel workers pass
    distinct offsets so they do not draw the same points; grid and brute-force samplers
    ignore it: they enumerate one space, which all workers share.
    Raises InvalidValue naming the option (None: the sampler) when Optuna rejects a value.
    """
    if isinstance(seed_offset, bool) or not isinstance(seed_offset, int) or seed_offset < 0:
        raise ValueError(f"seed_offset must be a non-negative integer, got {seed_offset!r}")
    if name in GRID_SAMPLERS:
        seed_offset = 0
    given: dict[str, Any] = {"seed": (seed + seed_offset) % 2**32}
    if name == "grid":
        given["search_space"] = dict(grid or {})
    return _construct(_SAMPLER_CLASSES[name], given, options)


def build_pruner(
    name: str, options: Mapping[str, Any], wrapped: optuna.pruners.BasePruner | None = None
) -> optuna.pruners.BasePruner:
    """The pruner ``name`` (one of ``PRUNERS``) with ``options``; a patient pruner wraps ``wrapped``.

    Raises InvalidValue naming the option (None: the pruner) when Optuna rejects a value.
    """
    given = {"wrapped_pruner": wrapped} if name == "patient" else {}
    return _construct(_PRUNER_CLASSES[name], given, options)


def _construct(cls: type, given: dict[str, Any], options: Mapping[str, Any]) -> Any:
    """``cls(**given, **options)``, without the ExperimentalWarning of the classes we choose to use.

    Optuna's TypeError or ValueError becomes an InvalidValue naming the option at fault.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return cls(**given, **options)
    except (TypeError, ValueError) as exc:
        problem = f"rejected by optuna.{cls.__name__}: {exc}"
    raise InvalidValue(_culprit(cls, given, options), problem)


def _culprit(cls: type, given: dict[str, Any], options: Mapping[str, Any]) -> str | None:
    """The first option the class rejects on its own (with the required ones), else None."""
    required = {name: value for name, value in options.items() if _options(cls)[name].required}
    for name in sorted(options, key=lambda name: name not in required):  # required ones first
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # already shown by the attempt that failed
                cls(**given, **required, **{name: options[name]})
        except (TypeError, ValueError):
            return name
    return None
