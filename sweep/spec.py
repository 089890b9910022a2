"""The study file: a TOML schema, parsed once at the edge into frozen, validated dataclasses.

``load_spec`` / ``parse_spec`` turn a study file into a ``StudySpec`` or raise a
``SpecError`` naming the file, the dotted key (``space.eta.step``, ``objective[1].metric``)
and the problem. ``spec_to_dict`` / ``dumps`` turn a spec back into plain data / TOML text.
``suggest``, ``trial_config`` and ``all_params`` are what one trial needs: its sampled
parameters, its core configs, and every setting to log.

Mappings inside a spec are ``types.MappingProxyType`` (read-only) and sequences are
tuples, so a spec cannot change after validation (it compares by value but is not hashable).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any

import tomli_w

from core import CURVES, NetworkSpec, TrainConfig
from core.data import DATASETS
from core.engine import ENGINES
from core.functions import ACTIVATIONS, COSTS
from sweep import limits
from sweep.errors import SpecError
from sweep.samplers import (GRID_SAMPLERS, PRUNERS, SAMPLERS, SINGLE_OBJECTIVE_SAMPLERS, Option,
                            build_pruner, build_sampler, pruner_options, sampler_options)

__all__ = [
    "DEFAULTS", "DIRECTIONS", "METRICS", "PER_EPOCH_METRICS", "TRAIN_KEYS", "TUNABLE",
    "Categorical", "DataSpec", "FloatRange", "Fixed", "IntRange", "InvalidValue", "Objective",
    "Param", "PrunerSpec", "SamplerSpec", "StudySpec",
    "all_params", "default_direction", "dumps", "load_spec", "parse_spec", "spec_to_dict",
    "suggest", "trial_config",
]

#: What a trial can be judged on. The per-epoch ones are also reported after every
#: epoch (best_validation_accuracy as the running maximum), so a pruner can use them.
METRICS = (*CURVES, "best_validation_accuracy", "test_accuracy", "training_seconds", "gap")
PER_EPOCH_METRICS = (*CURVES, "best_validation_accuracy")
DIRECTIONS = ("maximize", "minimize")

# The monitor flags a metric needs; test_accuracy and training_seconds need none.
_MONITORS_NEEDED = {
    **{curve: (f"monitor_{curve}",) for curve in CURVES},
    "best_validation_accuracy": ("monitor_validation_accuracy",),
    "gap": ("monitor_training_accuracy", "monitor_validation_accuracy"),
}

#: Parameters [space] may search (hidden = width of every hidden layer, depth = their number).
TUNABLE = ("batch_size", "eta", "lmbda", "hidden", "depth", "activation", "cost", "epochs")
#: Keys of [train]: TrainConfig's fields and NetworkSpec's.
TRAIN_KEYS = (*(f.name for f in fields(TrainConfig)), *(f.name for f in fields(NetworkSpec)))
_MONITORS = tuple(key for key in TRAIN_KEYS if key.startswith("monitor_"))
#: Training settings used when neither [train] nor [space] gives them (batch_size and eta must be given).
DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "sizes": (784, 30, 10),
    "epochs": 10,
    **{f.name: f.default for f in (*fields(TrainConfig), *fields(NetworkSpec)) if f.default is not MISSING},
})
_REQUIRED_SETTINGS = ("batch_size", "eta")
_N_INPUTS, _N_OUTPUTS = 784, 10  # MNIST: 28 x 28 pixels in, one output per digit
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a path component: never ".", "..", "/" or NUL


class InvalidValue(ValueError):
    """A value a spec dataclass rejects; ``key`` is the dotted key relative to it (None: the value itself)."""

    def __init__(self, key: str | None, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key, self.problem = key, problem


def _join(*parts: str | None) -> str | None:
    """Dotted key from parts; an index part ("[2]") sticks to the part before it."""
    key = ""
    for part in filter(None, parts):
        key += part if not key or part.startswith("[") else "." + part
    return key or None


@contextmanager
def _at(key: str | None) -> Iterator[None]:
    """Prefix the key of an InvalidValue raised inside with ``key``."""
    try:
        yield
    except InvalidValue as exc:
        raise InvalidValue(_join(key, exc.key), exc.problem) from None


def _show(value: object) -> str:
    """A value as a study file would write it."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _close(word: str, known: Iterable[str]) -> str:
    """A 'did you mean' hint for a misspelt key or name, or nothing."""
    match = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ---------------------------------------------------------------------------
# Value checks


@dataclass(frozen=True)
class _Kind:
    """A TOML value type, as checked and as named in messages."""

    name: str
    test: Callable[[object], bool]

    def check(self, value: Any) -> Any:
        if not self.test(value):
            raise InvalidValue(None, f"must be {self.name}, got {_show(value)}")
        return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_INT = _Kind("an integer", _is_int)
_NUMBER = _Kind("a finite number", _is_number)
_STR = _Kind("a string", lambda v: isinstance(v, str))
_BOOL = _Kind("true or false", lambda v: isinstance(v, bool))
_TABLE = _Kind("a table", lambda v: isinstance(v, Mapping))
_ARRAY = _Kind("an array", lambda v: isinstance(v, (list, tuple)))
_SCALAR = _Kind("a string, number or boolean", lambda v: isinstance(v, (str, bool)) or _is_number(v))


def _int_at_least(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[Any], int]:
    """A check of an integer from ``minimum`` to ``maximum`` (None: no upper bound; ``why`` says why)."""
    def check(value: Any) -> int:
        _INT.check(value)
        if value < minimum:
            raise InvalidValue(None, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise InvalidValue(None, f"must be at most {maximum:,}{f' ({why})' if why else ''}, got {value:,}")
        return value
    return check


def _positive(value: Any) -> float:
    if _NUMBER.check(value) <= 0:
        raise InvalidValue(None, f"must be positive, got {_show(value)}")
    return float(value)


def _non_negative(value: Any) -> float:
    if _NUMBER.check(value) < 0:
        raise InvalidValue(None, f"must be zero or positive, got {_show(value)}")
    return float(value)


def _one_of(what: str, names: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if _STR.check(value) not in names:
            raise InvalidValue(None, f"unknown {what} {_show(value)}; known: {', '.join(names)}")
        return value
    return check


def _study_name(value: Any) -> str:
    """A study name: a file name, an MLflow experiment and run name (see limits.MAX_NAME_LENGTH)."""
    if not _NAME.fullmatch(_STR.check(value)):
        raise InvalidValue(None, "must be letters, digits, '_', '.' or '-' only, starting with a letter or "
                                 f"digit, got {_show(value)[:80]}")
    if len(value) > limits.MAX_NAME_LENGTH:
        raise InvalidValue(None, f"must be at most {limits.MAX_NAME_LENGTH} characters (it names files and "
                                 f"MLflow experiments and runs), got {len(value)}")
    return value


def _layer_sizes(value: Any) -> tuple[int, ...]:
    sizes = tuple(_ARRAY.check(value))
    for i, size in enumerate(sizes):
        with _at(f"[{i}]"):
            _int_at_least(1)(size)
    if len(sizes) < 2 or sizes[0] != _N_INPUTS or sizes[-1] != _N_OUTPUTS:
        raise InvalidValue(None, f"must run from {_N_INPUTS} inputs (the pixels) to {_N_OUTPUTS} "
                                 f"outputs (the digits), got {_show(list(sizes))[:80]}")
    if len(sizes) - 2 > limits.MAX_DEPTH:
        raise InvalidValue(None, f"at most {limits.MAX_DEPTH} hidden layers, got {len(sizes) - 2}")
    return sizes


# How each training setting is checked and normalised (ints stay ints, numbers become floats).
_SETTINGS: Mapping[str, Callable[[Any], Any]] = MappingProxyType({
    **{name: _int_at_least(1) for name in ("batch_size", "hidden")},  # (bounded by the memory estimate)
    "epochs": _int_at_least(1, limits.MAX_EPOCHS, "a trial that long would run for days"),
    "depth": _int_at_least(1, limits.MAX_DEPTH, "deeper sigmoid networks stop learning"),
    "eta": _positive,
    "lmbda": _non_negative,
    "seed": _int_at_least(0),
    "activation": _one_of("activation", tuple(ACTIVATIONS)),
    "cost": _one_of("cost", tuple(COSTS)),
    "engine": _one_of("engine", ENGINES),
    "sizes": _layer_sizes,
    **{name: _BOOL.check for name in _MONITORS},
})


# ---------------------------------------------------------------------------
# The search space


def _aligned(span: float, step: float) -> bool:
    """Whether ``span`` is a whole number of steps (relative tolerance 1e-9)."""
    steps = span / step
    return math.isclose(steps, round(steps), rel_tol=1e-9, abs_tol=1e-9)


def _check_range(low: float, high: float, step: float | None, log: bool, default_step: float | None) -> None:
    """The checks IntRange and FloatRange share."""
    if low == high:
        raise InvalidValue(None, f"empty range: low = high = {low}; write a bare value for a fixed parameter")
    if low > high:
        raise InvalidValue(None, f"inverted range: low {low} > high {high}")
    if step is not None and step <= 0:
        raise InvalidValue("step", f"must be positive, got {step}")
    if isinstance(step, float) and not (high - low) / step <= limits.MAX_RANGE_STEPS:  # (also catches inf)
        raise InvalidValue("step", f"{step:g} is too small for the range {low:g}..{high:g}: more than "
                                   f"2**53 steps, which floating point cannot tell apart")
    if log and step != default_step:
        raise InvalidValue("step", "cannot be combined with log = true")
    if log and low <= 0:
        raise InvalidValue("low", f"must be positive with log = true, got {low}")


@dataclass(frozen=True)
class IntRange:
    """Integers from low to high (both included) in steps of ``step``, or log-uniform if ``log``."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        for key in ("low", "high", "step"):
            with _at(key):
                _INT.check(getattr(self, key))
        with _at("log"):
            _BOOL.check(self.log)
        _check_range(self.low, self.high, self.step, self.log, default_step=1)
        if (self.high - self.low) % self.step:
            raise InvalidValue("step", f"{self.step} does not divide high - low = {self.high - self.low}")

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def n_values(self) -> int:
        """How many values ``grid_values`` lists, without listing them."""
        return (self.high - self.low) // self.step + 1

    def contains(self, value: object) -> bool:
        return _is_int(value) and self.low <= value <= self.high and (value - self.low) % self.step == 0

    def describe(self) -> str:
        step = f" step {self.step}" if self.step != 1 else ""
        return f"integers {self.low}..{self.high}{step}{' log' if self.log else ''}"

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "int", "low": self.low, "high": self.high}
        if self.step != 1:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class FloatRange:
    """Numbers from low to high, continuous, in steps of ``step``, or log-uniform if ``log``."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        for key in ("low", "high") if self.step is None else ("low", "high", "step"):
            with _at(key):
                object.__setattr__(self, key, float(_NUMBER.check(getattr(self, key))))
        with _at("log"):
            _BOOL.check(self.log)
        _check_range(self.low, self.high, self.step, self.log, default_step=None)
        if self.step is not None and not _aligned(self.high - self.low, self.step):
            raise InvalidValue("step", f"{self.step:g} does not divide high - low = {self.high - self.low:g}")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list[float] | None:
        """The stepped values (rounded to 12 significant digits); None for a continuous range."""
        if self.step is None:
            return None
        return [float(f"{self.low + i * self.step:.12g}") for i in range(self.n_values())]

    def n_values(self) -> int | None:
        """How many values ``grid_values`` lists, without listing them (None: continuous)."""
        return None if self.step is None else round((self.high - self.low) / self.step) + 1

    def contains(self, value: object) -> bool:
        return (_is_number(value) and self.low <= value <= self.high
                and (self.step is None or _aligned(value - self.low, self.step)))

    def describe(self) -> str:
        step = f" step {self.step:g}" if self.step is not None else ""
        return f"numbers {self.low:g}..{self.high:g}{step}{' log' if self.log else ''}"

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class Categorical:
    """One of a list of choices (strings, numbers or booleans)."""

    choices: tuple

    def __post_init__(self) -> None:
        with _at("choices"):
            choices = tuple(_ARRAY.check(self.choices))
            if not choices:
                raise InvalidValue(None, "must hold at least one choice")
            for i, choice in enumerate(choices):
                with _at(f"[{i}]"):
                    _SCALAR.check(choice)
            if len(set(choices)) < len(choices):
                raise InvalidValue(None, f"duplicate choices in {_show(list(choices))}")
        object.__setattr__(self, "choices", choices)

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)

    def grid_values(self) -> list:
        return list(self.choices)

    def n_values(self) -> int:
        return len(self.choices)

    def contains(self, value: object) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(map(_show, self.choices))

    def to_toml(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


@dataclass(frozen=True)
class Fixed:
    """A parameter held at one value: logged with the others, never searched."""

    value: Any

    def __post_init__(self) -> None:
        _SCALAR.check(self.value)

    def suggest(self, trial: Any, name: str) -> Any:
        """The value itself: a fixed parameter is not suggested to the trial."""
        return self.value

    def to_toml(self) -> Any:
        return self.value


Param = IntRange | FloatRange | Categorical | Fixed
_PARAM_TYPES: Mapping[str, type] = MappingProxyType(
    {"int": IntRange, "float": FloatRange, "categorical": Categorical}
)
# The range type each numeric tunable takes; activation and cost take choices only.
_RANGE_OF: Mapping[str, type] = MappingProxyType({
    **{name: IntRange for name in ("batch_size", "hidden", "depth", "epochs")},
    **{name: FloatRange for name in ("eta", "lmbda")},
})


def _checked_param(name: str, param: Any) -> Param:
    """``param`` checked against what the setting ``name`` allows, its values normalised."""
    check = _SETTINGS[name]
    if isinstance(param, (IntRange, FloatRange)):
        if type(param) is not _RANGE_OF.get(name):
            expected = {IntRange: '"int"', FloatRange: '"float"'}.get(_RANGE_OF.get(name))
            takes = f'type = {expected} or "categorical"' if expected else 'type = "categorical"'
            raise InvalidValue("type", f"{name} takes {takes}")
        for key in ("low", "high"):
            with _at(key):
                check(getattr(param, key))
        return param
    if isinstance(param, Categorical):
        choices = []
        for i, choice in enumerate(param.choices):
            with _at(f"choices[{i}]"):
                choices.append(check(choice))
        return Categorical(tuple(choices))
    if isinstance(param, Fixed):
        return Fixed(check(param.value))
    raise InvalidValue(None, f"must be a range, a categorical or a fixed value, got {_show(param)}")


# ---------------------------------------------------------------------------
# The parts of a study


def default_direction(metric: str) -> str:
    """Accuracies are maximised, everything else (costs, seconds, the gap) minimised."""
    return "maximize" if metric.endswith("accuracy") else "minimize"


@dataclass(frozen=True)
class Objective:
    """A metric (one of ``METRICS``) and whether to maximize or minimize it."""

    metric: str
    direction: str

    def __post_init__(self) -> None:
        with _at("metric"):
            _one_of("metric", METRICS)(self.metric)
        with _at("direction"):
            _one_of("direction", DIRECTIONS)(self.direction)


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, and how many of the first examples of each part to use (None: all)."""

    dataset: str = "mnist-5k"
    n_train: int | None = None
    n_validation: int | None = None
    n_test: int | None = None

    def __post_init__(self) -> None:
        with _at("dataset"):
            _one_of("dataset", DATASETS)(self.dataset)
        for key in ("n_train", "n_validation", "n_test"):
            if getattr(self, key) is not None:
                with _at(key):
                    _int_at_least(1)(getattr(self, key))


def _checked_options(options: Mapping[str, Any], allowed: Mapping[str, Option],
                     owner: str) -> Mapping[str, Any]:
    """Constructor options checked by name and TOML type against ``allowed``."""
    _TABLE.check(options)
    for key, value in options.items():
        option = allowed.get(key)
        if option is None:
            known = ", ".join(allowed) or "none"
            raise InvalidValue(key, f"unknown option of {owner}{_close(key, allowed)}; options: {known}")
        if not option.accepts(value):
            raise InvalidValue(key, f"must be {option.type_names}, got {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidValue(key, f"must be a finite number, got {_show(value)}")
        maximum, why = limits.OPTION_BOUNDS.get(key, (None, ""))
        if maximum is not None and _is_int(value) and value > maximum:  # (Optuna checks the lower bound)
            raise InvalidValue(key, f"must be at most {maximum:,} ({why}), got {value:,}")
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
        with _at("name"):
            _one_of("sampler", SAMPLERS)(self.name)
        with _at("seed"):
            _int_at_least(0, limits.MAX_SEED, "NumPy's seeds are 32-bit")(self.seed)
        options = _checked_options(self.options, sampler_options(self.name), f"the {self.name} sampler")
        object.__setattr__(self, "options", options)


@dataclass(frozen=True)
class PrunerSpec:
    """An Optuna pruner by name (one of ``PRUNERS``) and its constructor options.

    ``wrapped`` is the pruner a "patient" pruner wraps (``[pruner.wrapped]``).
    """

    name: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)
    wrapped: PrunerSpec | None = None

    def __post_init__(self) -> None:
        with _at("name"):
            _one_of("pruner", PRUNERS)(self.name)
        options = _checked_options(self.options, pruner_options(self.name), f"the {self.name} pruner")
        object.__setattr__(self, "options", options)
        if self.wrapped is not None and self.name != "patient":
            raise InvalidValue("wrapped", f"only the patient pruner wraps another, "
                                          f"not the {self.name} pruner")


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
    objectives: tuple[Objective, ...] = (Objective("validation_accuracy", "maximize"),)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    n_trials: int | None = None
    timeout: float | None = None
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
        build_sampler(self)  # Optuna's own checks of the option values (SpecError)
        build_pruner(self)

    def _validate(self) -> None:
        set_ = object.__setattr__
        with _at("name"):
            _study_name(self.name)
        if self.parent is not None:
            with _at("parent"):
                _study_name(self.parent)
        if self.description is not None:
            with _at("description"):
                _STR.check(self.description)
        set_(self, "train", _checked_train(self.train))
        set_(self, "space", _checked_space(self.space, self.train))
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
                    raise InvalidValue(f"space.{name}",
                                       f"train.sizes has no hidden layer; add {other} to [space]")
        self._check_size(pack=1, workers=1)

    def largest_network(self) -> tuple[tuple[int, ...], int]:
        """The layer sizes of the largest network a trial may train, and the largest batch size."""
        largest = {name: max(param.choices) if isinstance(param, Categorical) else param.high
                   for name, param in self.searched.items() if name in ("hidden", "depth", "batch_size")}
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
        key = next((f"space.{name}" for name in ("hidden", "depth") if name in self.space), "train.sizes")
        shown = ("-".join(map(str, sizes)) if len(sizes) <= 6
                 else f"{len(sizes) - 2} hidden layers, the widest {max(sizes[1:-1])}")
        network = f"the largest network ({shown}, {limits.parameter_count(sizes):,} parameters)"
        need, have = limits.training_bytes(sizes, batch_size, pack, workers), limits.machine_memory()
        if need > have:
            many = f", {pack} at once in each of {workers} workers," if (pack, workers) != (1, 1) else ""
            raise InvalidValue(key, f"{network}{many} with batches of {batch_size} needs about "
                                    f"{limits.show_bytes(need)} to train, more than this machine's "
                                    f"{limits.show_bytes(have)}")
        if limits.parameter_count(sizes) > limits.MAX_PARAMETERS:
            raise InvalidValue(key, f"{network} is larger than {limits.MAX_PARAMETERS:,} parameters "
                                    "(one MNIST epoch would take hours)")

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

    def _check_sampling(self) -> None:
        sampler, pruner = self.sampler.name, self.pruner.name
        if self.is_multi_objective and sampler in SINGLE_OBJECTIVE_SAMPLERS:
            raise InvalidValue("sampler.name", f"the {sampler} sampler handles a single objective, "
                                               f"not {len(self.objectives)}")
        if pruner != "none" and self.is_multi_objective:
            raise InvalidValue("pruner", f"pruning needs a single objective, not {len(self.objectives)}")
        metric = self.objectives[0].metric
        if pruner != "none" and metric not in PER_EPOCH_METRICS:
            raise InvalidValue("pruner", f"pruning needs a per-epoch metric; {metric} is only known at "
                                         f"the end (per-epoch: {', '.join(PER_EPOCH_METRICS)})")
        if sampler in GRID_SAMPLERS:
            size = 1
            for name, param in self.searched.items():
                if param.n_values() is None:
                    raise InvalidValue(f"space.{name}", f"the {sampler} sampler needs a step or choices")
                size *= param.n_values()
            if size > limits.MAX_GRID_POINTS:
                raise InvalidValue("space", f"the grid has {size:,} points, more than {limits.MAX_GRID_POINTS:,} "
                                            "(every worker holds them all; it would run for days)")

    def _check_budget(self) -> None:
        if self.n_trials is not None:
            with _at("budget.n_trials"):
                _int_at_least(1, limits.MAX_TRIALS, "every claim reads all trials")(self.n_trials)
        if self.timeout is not None:
            with _at("budget.timeout"):
                object.__setattr__(self, "timeout", _positive(self.timeout))
        if self.n_trials is None and self.timeout is None and self.sampler.name not in GRID_SAMPLERS:
            raise InvalidValue("budget", f"n_trials or timeout is needed (only {' and '.join(GRID_SAMPLERS)} "
                                         "end by themselves, when the grid is done)")

    def _checked_enqueue(self) -> tuple[Mapping[str, Any], ...]:
        searched, entries = self.searched, []
        for i, entry in enumerate(self.enqueue):
            key = f"enqueue[{i}]"
            with _at(key):
                _TABLE.check(entry)
            if not entry:
                raise InvalidValue(key, "empty: name at least one searched parameter")
            values = {}
            for name, value in entry.items():
                with _at(_join(key, name)):
                    param = searched.get(name)
                    if param is None:
                        names = ", ".join(searched) or "none"
                        raise InvalidValue(None, f"not a searched parameter; searched: {names}")
                    values[name] = _SETTINGS[name](value)
                    if not param.contains(values[name]):
                        raise InvalidValue(None, f"{_show(value)} is outside the space: {param.describe()}")
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


def _checked_train(train: Any) -> Mapping[str, Any]:
    with _at("train"):
        _TABLE.check(train)
    checked = {}
    for name, value in train.items():
        with _at(f"train.{name}"):
            if name not in TRAIN_KEYS:
                raise InvalidValue(None, f"unknown key{_close(name, TRAIN_KEYS)}; "
                                         f"[train] keys: {', '.join(TRAIN_KEYS)}")
            checked[name] = _SETTINGS[name](value)
    return MappingProxyType(checked)


def _checked_space(space: Any, train: Mapping[str, Any]) -> Mapping[str, Param]:
    with _at("space"):
        _TABLE.check(space)
    checked = {}
    for name, param in space.items():
        with _at(f"space.{name}"):
            if name not in TUNABLE:
                raise InvalidValue(None, f"not a tunable parameter{_close(name, TUNABLE)}; "
                                         f"tunable: {', '.join(TUNABLE)}")
            if name in train:
                raise InvalidValue(None, "also given in [train]; give it in one place")
            checked[name] = _checked_param(name, param)
    return MappingProxyType(checked)


# ---------------------------------------------------------------------------
# Reading and writing study files


_REQUIRED, _ABSENT = object(), object()  # defaults of _Table.take: a required key, an optional one


class _Table:
    """One table of a study file being read: look-ups that name the dotted key, then a check for leftovers."""

    def __init__(self, value: Any, key: str | None) -> None:
        with _at(key):
            self.data: Mapping[str, Any] = _TABLE.check(value)
        self.key = key
        self.known: list[str] = []

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def take(self, name: str, kind: _Kind | None = None, default: Any = _REQUIRED) -> Any:
        """The value of ``name`` (checked against ``kind`` if given), else ``default``."""
        self.known.append(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise InvalidValue(_join(self.key, name), "required")
            return default
        with _at(_join(self.key, name)):
            return self.data[name] if kind is None else kind.check(self.data[name])

    def given(self, *names: str) -> dict[str, Any]:
        """Those of ``names`` the table has: left out, they take the dataclass defaults."""
        values = {name: self.take(name, default=_ABSENT) for name in names}
        return {name: value for name, value in values.items() if value is not _ABSENT}

    def table(self, name: str) -> _Table:
        return _Table(self.take(name, default={}), _join(self.key, name))

    def rest(self) -> dict[str, Any]:
        """The keys not taken yet, all at once (a sampler's or pruner's options)."""
        return {name: value for name, value in self.data.items() if name not in self.known}

    def done(self) -> None:
        for name in self.data:
            if name not in self.known:
                raise InvalidValue(_join(self.key, name), f"unknown key{_close(name, self.known)}; "
                                                          f"known here: {', '.join(self.known)}")


def _read_param(value: Any, key: str) -> Param:
    """A [space] entry: a table with a type, or a bare value (fixed)."""
    if not isinstance(value, Mapping):
        with _at(key):
            return Fixed(value)
    table = _Table(value, key)
    kind = table.take("type", _STR)
    cls = _PARAM_TYPES.get(kind)
    if cls is None:
        raise InvalidValue(f"{key}.type", f"unknown type {kind!r}; known: {', '.join(_PARAM_TYPES)}")
    args = {f.name: table.take(f.name, default=_REQUIRED if f.default is MISSING else f.default)
            for f in fields(cls)}
    table.done()
    with _at(key):
        return cls(**args)


def _read_pruner(table: _Table) -> PrunerSpec:
    args = table.given("name")
    if "wrapped" in table:
        args["wrapped"] = _read_pruner(table.table("wrapped"))
    with _at(table.key):
        return PrunerSpec(**args, options=table.rest())


def _read_spec(data: Any, source: str) -> StudySpec:
    top = _Table(data, None)
    args = {"name": top.take("name"), **top.given("description", "parent")}

    data_table = top.table("data")
    with _at("data"):
        args["data"] = DataSpec(**data_table.given("dataset", "n_train", "n_validation", "n_test"))
    data_table.done()

    items = top.take("objective", _ARRAY, default=None)
    if items is not None:
        objectives = []
        for i, item in enumerate(items):
            table = _Table(item, f"objective[{i}]")
            metric = table.take("metric", _STR)
            direction = table.take("direction", default=default_direction(metric))
            table.done()
            with _at(table.key):
                objectives.append(Objective(metric, direction))
        args["objectives"] = tuple(objectives)

    sampler_table = top.table("sampler")
    sampler_args = sampler_table.given("name", "seed")
    with _at("sampler"):
        args["sampler"] = SamplerSpec(**sampler_args, options=sampler_table.rest())
    args["pruner"] = _read_pruner(top.table("pruner"))

    budget = top.table("budget")
    args.update(budget.given("n_trials", "timeout"))
    budget.done()

    args["train"] = top.take("train", _TABLE, default={})
    space = top.table("space")
    args["space"] = {name: _read_param(value, f"space.{name}") for name, value in space.data.items()}
    args["enqueue"] = tuple(top.take("enqueue", _ARRAY, default=()))
    top.done()
    return StudySpec(**args, source=source)


def parse_spec(data: Mapping[str, Any], source: str | os.PathLike) -> StudySpec:
    """A study from its plain data (a parsed TOML file, or ``spec_to_dict``'s output).

    Raises SpecError naming ``source``, the dotted key and the problem.
    """
    source = os.fspath(source)
    try:
        return _read_spec(data, source)
    except InvalidValue as exc:
        raise SpecError(source, exc.key, exc.problem) from None


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _not_regular(mode: int) -> str | None:
    """Why a file of this mode is not a study file, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((f"not a regular file ({kind})" for test, kind in _FILE_KINDS if test(mode)),
                "not a regular file")


def _read_study_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file of at most limits.MAX_STUDY_BYTES; never blocks on a FIFO or device.

    Checked by stat before opening (a socket cannot be opened) and by fstat of the file opened
    (O_NONBLOCK: opening a FIFO does not wait for a writer), in case the path changed between.
    """
    try:
        problem = _not_regular(os.stat(path).st_mode)
        if problem:
            raise SpecError(path, None, problem)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            problem = _not_regular(os.fstat(fd).st_mode)
            if problem:
                raise SpecError(path, None, problem)
            chunks, size = [], 0
            while size <= limits.MAX_STUDY_BYTES and (chunk := os.read(fd, limits.MAX_STUDY_BYTES + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SpecError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if size > limits.MAX_STUDY_BYTES:
        raise SpecError(path, None, f"larger than {limits.show_bytes(limits.MAX_STUDY_BYTES)} "
                                    "(a study file is a few KiB)")
    return b"".join(chunks)


def _nesting(data: Any) -> int:
    """Levels of tables and arrays nested in parsed TOML (the document's own table is level 0)."""
    deepest, todo = 0, [(data, 0)]
    while todo:
        value, level = todo.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                deepest = max(deepest, level + 1)
                todo.append((child, level + 1))
    return deepest


def load_spec(path: str | os.PathLike) -> StudySpec:
    """Read and validate a study file; raises SpecError naming the file, key and problem.

    Only a regular file is read, of at most limits.MAX_STUDY_BYTES, with tables and arrays
    nested at most limits.MAX_TOML_NESTING deep.
    """
    too_deep = f"tables and arrays nested more than {limits.MAX_TOML_NESTING} levels deep"
    try:
        data = tomllib.loads(_read_study_file(path).decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(path, None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, None, f"invalid TOML: {exc}") from None
    except RecursionError:  # the parser recurses once per level
        raise SpecError(path, None, too_deep) from None
    if _nesting(data) > limits.MAX_TOML_NESTING:
        raise SpecError(path, None, too_deep)
    return parse_spec(data, path)


def _pruner_dict(pruner: PrunerSpec) -> dict[str, Any]:
    wrapped = {"wrapped": _pruner_dict(pruner.wrapped)} if pruner.wrapped is not None else {}
    return {"name": pruner.name, **pruner.options, **wrapped}


def spec_to_dict(spec: StudySpec) -> dict[str, Any]:
    """The spec as plain TOML- and JSON-able data (without ``source``); ``parse_spec`` reads it back."""
    def given(obj: Any, *keys: str) -> dict[str, Any]:
        return {key: getattr(obj, key) for key in keys if getattr(obj, key) is not None}

    out: dict[str, Any] = {"name": spec.name, **given(spec, "description", "parent")}
    out["data"] = {"dataset": spec.data.dataset, **given(spec.data, "n_train", "n_validation", "n_test")}
    out["objective"] = [{"metric": o.metric, "direction": o.direction} for o in spec.objectives]
    out["sampler"] = {"name": spec.sampler.name, "seed": spec.sampler.seed, **spec.sampler.options}
    out["pruner"] = _pruner_dict(spec.pruner)
    budget = given(spec, "n_trials", "timeout")
    if budget:
        out["budget"] = budget
    out["train"] = {name: list(value) if isinstance(value, tuple) else value
                    for name, value in spec.train.items()}
    out["space"] = {name: param.to_toml() for name, param in spec.space.items()}
    if spec.enqueue:
        out["enqueue"] = [dict(entry) for entry in spec.enqueue]
    return out


def dumps(spec: StudySpec) -> str:
    """The spec as study-file TOML text."""
    return tomli_w.dumps(spec_to_dict(spec), multiline_strings=True)


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
    """train.sizes, its hidden layers replaced by ``[hidden] * depth`` when either is set.

    depth defaults to the number of hidden layers in sizes, hidden to the first one's width.
    """
    sizes = tuple(settings["sizes"])
    if "hidden" not in settings and "depth" not in settings:
        return sizes
    hidden_layers = sizes[1:-1]
    depth = settings.get("depth", len(hidden_layers))
    width = settings["hidden"] if "hidden" in settings else hidden_layers[0]
    return (sizes[0], *[width] * depth, sizes[-1])


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
    training = ("activation", "cost", "epochs", "batch_size", "eta", "lmbda", "seed")
    return {
        **{name: settings[name] for name in spec.space},
        "sizes": "-".join(map(str, _sizes(settings))),
        **{name: settings[name] for name in training},
        "dataset": data.dataset, "n_train": data.n_train, "n_validation": data.n_validation,
        "n_test": data.n_test,
    }
