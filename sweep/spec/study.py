"""A study, validated: ``StudySpec`` (its parts are in ``sweep.spec.parts``), and what one trial of it needs.

Mappings inside a spec are ``types.MappingProxyType`` (read-only) and sequences are
tuples, so a spec cannot change after validation (it compares by value but is not hashable).
``suggest``, ``trial_config`` and ``all_params`` are what one trial needs: its sampled
parameters, its core configs, and every setting to log. Study files are read and written
by ``sweep.spec.file``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import optuna

from core.config import OPTIONS, TrainConfig, unmet_need
from core.history import CURVES
from core.model import NetworkSpec
from sweep import limits
from sweep.errors import InvalidValue, SpecError
from sweep.schema import BEST_VALIDATION_ACCURACY, GAP, PER_EPOCH_METRICS, VALIDATION_ACCURACY
from sweep.spec import samplers
from sweep.spec.parts import DataSpec, Objective, PrunerSpec, SamplerSpec
from sweep.spec.samplers import GRID_SAMPLERS, SINGLE_OBJECTIVE_SAMPLERS
from sweep.spec.settings import DEFAULTS, LAYER_NAMES, SETTINGS, checked_space, checked_train
from sweep.spec.space import (
    STR,
    TABLE,
    Categorical,
    Fixed,
    Param,
    at_key,
    check_study_name,
    int_at_least,
    join_key,
    one_of,
    positive,
    show,
)

AT_TIMEOUT = ("finish", "stop")  # [budget] at_timeout: what trials still running at the timeout do
_REQUIRED_SETTINGS = ("batch_size", "eta")  # training settings with no default

# The monitor flags a metric needs; test_accuracy and training_seconds need none.
_MONITORS_NEEDED = {
    **{curve: (f"monitor_{curve}",) for curve in CURVES},
    BEST_VALIDATION_ACCURACY: ("monitor_validation_accuracy",),
    GAP: ("monitor_training_accuracy", "monitor_validation_accuracy"),
}

# ---------------------------------------------------------------------------
# The study


@dataclass(frozen=True)
class StudySpec:
    """A whole study file, validated: what to search, how, for how long, and on which data.

    ``train`` holds the fixed training settings as given (see ``fixed`` for them with
    the defaults); ``space`` maps each [space] name to its range, choices or fixed value.
    ``source`` (the file, or where the spec came from) names it in errors and is not
    compared: two specs with the same content are equal.
    """

    name: str
    description: str | None = None
    parent: str | None = None
    data: DataSpec = field(default_factory=DataSpec)
    objectives: tuple[Objective, ...] = (Objective(VALIDATION_ACCURACY, "maximize"),)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    n_trials: int | None = None
    timeout: float | None = None
    at_timeout: str = "finish"  # trials running at the timeout: "finish", or "stop" at their next epoch
    train: Mapping[str, Any] = field(default_factory=dict)
    space: Mapping[str, Param] = field(default_factory=dict)
    enqueue: tuple[Mapping[str, Any], ...] = ()
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", os.fspath(self.source))
        try:
            self._validate()
        except InvalidValue as exc:
            raise SpecError(self.source, exc.key, exc.problem) from None

    def make_sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """The study's Optuna sampler; workers of one run pass distinct ``seed_offset``s."""
        grid = samplers.grid_points(self.searched) if self.sampler.name == "grid" else None
        return self.sampler.build(grid, seed_offset)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return self.pruner.build()

    @property
    def grid_size(self) -> int:
        """Points of the grid of the searched parameters (a grid or brute-force study's natural budget)."""
        return samplers.grid_size(self.searched)

    def _validate(self) -> None:
        set_ = object.__setattr__
        with at_key("name"):
            check_study_name(self.name)
        if self.parent is not None:
            with at_key("parent"):
                check_study_name(self.parent)
        if self.description is not None:
            with at_key("description"):
                STR.check(self.description)
        set_(self, "train", checked_train(self.train))
        set_(self, "space", checked_space(self.space, self.train))
        self._check_network()
        set_(self, "objectives", tuple(self.objectives))
        self._check_objectives()
        self._check_sampling()
        self._check_budget()
        set_(self, "enqueue", self._checked_enqueue())

    def _check_network(self) -> None:
        for name in _REQUIRED_SETTINGS:
            if name not in self.train and name not in self.space:
                raise InvalidValue(name, "must be given in [train] or [space]")
        if len(self.fixed["sizes"]) <= 2:
            for name, other in (("hidden", "depth"), ("depth", "hidden")):
                if name in self.space and other not in self.space:
                    raise InvalidValue(f"space.{name}", f"train.sizes has no hidden layer; add {other} to [space]")
        if "hidden2" in self.space and _max_depth(self) < 2:
            where = "space.depth is at most 1" if "depth" in self.space else "train.sizes has one hidden layer at most"
            raise InvalidValue("space.hidden2", f"never used: {where} (hidden2 is the width of the second one)")
        self._check_size(pack=1, workers=1)

    def largest_network(self) -> tuple[tuple[int, ...], int]:
        """The layer sizes of the largest network a trial may train, and the largest batch size."""
        largest = {
            name: _highest(param) for name, param in self.searched.items() if name in (*LAYER_NAMES, "batch_size")
        }
        settings = {**self.fixed, **largest}
        return _sizes(settings), settings["batch_size"]

    def check_memory(self, pack: int = 1, workers: int = 1) -> None:
        """Raise SpecError (with the estimate) if ``workers`` processes training ``pack`` of the
        largest networks each would not fit in this machine's memory (see limits.training_bytes)."""
        try:
            self._check_size(pack, workers)
        except InvalidValue as exc:
            raise SpecError(self.source, exc.key, exc.problem) from None

    def _check_size(self, pack: int, workers: int) -> None:
        sizes, batch_size = self.largest_network()
        widths = {name: _highest(self.space[name]) for name in ("hidden", "hidden2") if name in self.space}
        key = (
            f"space.{max(widths, key=widths.get)}"
            if widths  # (the widest layer's key)
            else "space.depth"
            if "depth" in self.space
            else "train.sizes"
        )
        shown = (
            "-".join(map(str, sizes))
            if len(sizes) <= 6
            else f"{len(sizes) - 2} hidden layers, the widest {max(sizes[1:-1])}"
        )
        network = f"the largest network ({shown}, {limits.parameter_count(sizes):,} parameters)"
        on = [name for name in limits.MEMORY_OPTIONS if name in self.searched or self.fixed[name]]
        engine = "numpy" if self.fixed["engine"] == "numpy" else "compiled"
        need, have = limits.training_bytes(sizes, batch_size, pack, workers, on, engine), limits.machine_memory()
        if need > have:
            many = f", {pack} at once in each of {workers} workers," if (pack, workers) != (1, 1) else ""
            raise InvalidValue(
                key,
                f"{network}{many} with batches of {batch_size} needs about "
                f"{limits.show_bytes(need)} to train, more than this machine's "
                f"{limits.show_bytes(have)}",
            )
        if limits.parameter_count(sizes) > limits.MAX_PARAMETERS:
            raise InvalidValue(
                key, f"{network} is larger than {limits.MAX_PARAMETERS:,} parameters (one MNIST epoch would take hours)"
            )

    def _check_objectives(self) -> None:
        if not self.objectives:
            raise InvalidValue("objective", "at least one objective is needed")
        fixed = self.fixed
        for i, objective in enumerate(self.objectives):
            key = f"objective[{i}].metric"
            if objective.metric in (o.metric for o in self.objectives[:i]):
                raise InvalidValue(key, f"duplicate metric {objective.metric!r}")
            for monitor in _MONITORS_NEEDED.get(objective.metric, ()):
                if not fixed[monitor]:
                    raise InvalidValue(key, f"{objective.metric} needs train.{monitor} = true")
        need = unmet_need({**fixed, **dict.fromkeys(self.searched, True)})  # (a searched option may be on)
        if need is not None:
            name, needed = need
            where = "space" if name in self.space else "train"
            raise InvalidValue(f"{where}.{name}", f"needs train.{needed} = true")

    def _check_sampling(self) -> None:
        sampler, pruner = self.sampler.name, self.pruner.name
        if self.is_multi_objective and sampler in SINGLE_OBJECTIVE_SAMPLERS:
            raise InvalidValue(
                "sampler.name", f"the {sampler} sampler handles a single objective, not {len(self.objectives)}"
            )
        if pruner != "none" and self.is_multi_objective:
            raise InvalidValue("pruner", f"pruning needs a single objective, not {len(self.objectives)}")
        metric = self.objectives[0].metric
        if pruner != "none" and metric not in PER_EPOCH_METRICS:
            raise InvalidValue(
                "pruner",
                f"pruning needs a per-epoch metric; {metric} is only known at "
                f"the end (per-epoch: {', '.join(PER_EPOCH_METRICS)})",
            )
        if sampler in GRID_SAMPLERS:
            size = 1
            for name, param in self.searched.items():
                if param.n_values() is None:
                    raise InvalidValue(f"space.{name}", f"the {sampler} sampler needs a step or choices")
                size *= param.n_values()
            if size > limits.MAX_GRID_POINTS:
                raise InvalidValue(
                    "space",
                    f"the grid has {size:,} points, more than {limits.MAX_GRID_POINTS:,} "
                    "(every worker holds them all; it would run for days)",
                )

    def _check_budget(self) -> None:
        if self.n_trials is not None:
            with at_key("budget.n_trials"):
                int_at_least(1, limits.MAX_TRIALS, "every claim reads all trials")(self.n_trials)
        if self.timeout is not None:
            with at_key("budget.timeout"):
                object.__setattr__(self, "timeout", positive(self.timeout))
        with at_key("budget.at_timeout"):
            one_of("at_timeout", AT_TIMEOUT)(self.at_timeout)
        if self.n_trials is None and self.timeout is None and self.sampler.name not in GRID_SAMPLERS:
            raise InvalidValue(
                "budget",
                f"n_trials or timeout is needed (only {' and '.join(GRID_SAMPLERS)} "
                "end by themselves, when the grid is done)",
            )

    def _checked_enqueue(self) -> tuple[Mapping[str, Any], ...]:
        searched, entries = self.searched, []
        for i, entry in enumerate(self.enqueue):
            key = f"enqueue[{i}]"
            with at_key(key):
                TABLE.check(entry)
            if not entry:
                raise InvalidValue(key, "empty: name at least one searched parameter")
            values = {}
            for name, value in entry.items():
                with at_key(join_key(key, name)):
                    param = searched.get(name)
                    if param is None:
                        names = ", ".join(searched) or "none"
                        raise InvalidValue(None, f"not a searched parameter; searched: {names}")
                    values[name] = SETTINGS[name](value)
                    if not param.contains(values[name]):
                        raise InvalidValue(None, f"{show(value)} is outside the space: {param.describe()}")
            entries.append(MappingProxyType(values))
        return tuple(entries)

    @property
    def directions(self) -> list[str]:
        return [objective.direction for objective in self.objectives]

    @property
    def is_multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def searched(self) -> dict[str, Param]:
        """The space without its fixed values: what the sampler chooses."""
        return {name: param for name, param in self.space.items() if not isinstance(param, Fixed)}

    @property
    def fixed(self) -> dict[str, Any]:
        """Every setting no trial changes: DEFAULTS, then [train], then the fixed values of [space]."""
        fixed_space = {name: p.value for name, p in self.space.items() if isinstance(p, Fixed)}
        defaults = {name: value for name, value in DEFAULTS.items() if name not in self.space}
        return {**defaults, **self.train, **fixed_space}


# ---------------------------------------------------------------------------
# One trial


def suggest(spec: StudySpec, trial: Any) -> dict[str, Any]:
    """Sample every searched parameter through ``trial.suggest_*``; {name: value} for all of [space].

    Fixed values are returned as they are, never suggested, so they do not become
    Optuna parameters.
    """
    return {name: param.suggest(trial, name) for name, param in spec.space.items()}


def _settings(spec: StudySpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """Every training setting of a trial whose searched parameters are ``params``."""
    unknown = [name for name in params if name not in spec.space]
    missing = [name for name in spec.searched if name not in params]
    if unknown or missing:
        raise ValueError(f"params do not fit study {spec.name!r}: unknown {unknown}, missing {missing}")
    return {**spec.fixed, **params}


def _sizes(settings: Mapping[str, Any]) -> tuple[int, ...]:
    """train.sizes, its hidden layers replaced by ``[hidden, hidden2, hidden2, ...][:depth]`` when
    any of them is set.

    depth defaults to the number of hidden layers in sizes, hidden to the first one's width and
    hidden2 to hidden (so hidden alone sets every hidden layer, as it always has).
    """
    sizes = tuple(settings["sizes"])
    if not any(name in settings for name in LAYER_NAMES):
        return sizes
    hidden_layers = sizes[1:-1]
    depth = settings.get("depth", len(hidden_layers))
    first = settings["hidden"] if "hidden" in settings else hidden_layers[0]
    later = settings.get("hidden2", first)
    return (sizes[0], *[first, *[later] * (depth - 1)][:depth], sizes[-1])


def _highest(param: Param) -> Any:
    """The largest value a parameter may take."""
    if isinstance(param, Fixed):
        return param.value
    return max(param.choices) if isinstance(param, Categorical) else param.high


def _max_depth(spec: StudySpec) -> int:
    """The most hidden layers a trial of the study may have."""
    return _highest(spec.space["depth"]) if "depth" in spec.space else len(spec.fixed["sizes"]) - 2


def used(spec: StudySpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's [space] values less those its network ignores: hidden2 when it has one hidden layer.

    Optuna still records hidden2 (the space stays the same for every trial, as TPE's and the
    grid's sampling need); the trial's run names and logs only what it trained with.
    """
    if "hidden2" in params and len(_sizes(_settings(spec, params))) < 4:
        return {name: value for name, value in params.items() if name != "hidden2"}
    return dict(params)


def trial_config(spec: StudySpec, params: Mapping[str, Any]) -> tuple[NetworkSpec, TrainConfig]:
    """The core configs of a trial: [train], fixed [space] values and the sampled ``params`` merged.

    ``params`` must hold every searched parameter (fixed ones may be left out).
    """
    settings = _settings(spec, params)
    network = NetworkSpec(_sizes(settings), settings["activation"], settings["cost"])
    config = TrainConfig(**{f.name: settings[f.name] for f in fields(TrainConfig)})
    return network, config


def all_params(spec: StudySpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting of a trial, for logging: the [space] values, then the network,
    training and data settings (sizes as "784-15-10"; n_* None means all)."""
    settings = _settings(spec, params)
    data = spec.data
    training = ("activation", "cost", "epochs", "batch_size", "eta", "lmbda", "seed")  # logged always
    options = [name for name, rule in OPTIONS.items() if rule.search and name not in training]  # when on
    return {
        **used(spec, {name: settings[name] for name in spec.space}),
        "sizes": "-".join(map(str, _sizes(settings))),
        **{name: settings[name] for name in training},
        **{name: settings[name] for name in options if settings[name] != DEFAULTS[name]},
        "dataset": data.dataset,
        "n_train": data.n_train,
        "n_validation": data.n_validation,
        "n_test": data.n_test,
    }
