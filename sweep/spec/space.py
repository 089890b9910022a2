"""The search space of a study file and the checks of its values.

Each check takes a TOML value and returns it normalised (ints stay ints, numbers become
floats) or raises ``InvalidValue`` with the problem; ``at_key`` prefixes the dotted key of
the value being checked (``space.eta.step``), so that a message names where it is.
The parameter types (``IntRange``, ``FloatRange``, ``Categorical``, ``Fixed``) know their
grid values, their TOML form and how to ask an Optuna trial for a value. Which settings a
study has, and the check of each, are in ``sweep.spec.settings``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sweep import limits
from sweep.errors import InvalidValue

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a path component: never ".", "..", "/" or NUL


def significant(value: Any, digits: int = 12) -> Any:
    """A float rounded to ``digits`` significant digits (0.3, not 0.30000000000000004); other values as they are."""
    return float(f"{value:.{digits}g}") if isinstance(value, float) else value


def join_key(*parts: str | None) -> str | None:
    """Dotted key from parts; an index part ("[2]") sticks to the part before it."""
    key = ""
    for part in filter(None, parts):
        key += part if not key or part.startswith("[") else "." + part
    return key or None


@contextmanager
def at_key(key: str | None) -> Iterator[None]:
    """Prefix the key of an InvalidValue raised inside with ``key``."""
    try:
        yield
    except InvalidValue as exc:
        raise InvalidValue(join_key(key, exc.key), exc.problem) from None


def show(value: object) -> str:
    """A value as a study file would write it."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """A 'did you mean' hint for a misspelt key or name, or nothing."""
    match = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ---------------------------------------------------------------------------
# Value checks


@dataclass(frozen=True)
class Kind:
    """A TOML value type, as checked and as named in messages."""

    name: str
    test: Callable[[object], bool]

    def check(self, value: Any) -> Any:
        if not self.test(value):
            raise InvalidValue(None, f"must be {self.name}, got {show(value)}")
        return value


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


INT = Kind("an integer", is_int)
NUMBER = Kind("a finite number", is_number)
STR = Kind("a string", lambda v: isinstance(v, str))
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
TABLE = Kind("a table", lambda v: isinstance(v, Mapping))
ARRAY = Kind("an array", lambda v: isinstance(v, (list, tuple)))
SCALAR = Kind("a string, number or boolean", lambda v: isinstance(v, (str, bool)) or is_number(v))


def at_most(value: int, maximum: int, why: str) -> None:
    """InvalidValue if the integer ``value`` is above ``maximum`` (``why``: why it is the largest)."""
    if value > maximum:
        raise InvalidValue(None, f"must be at most {maximum:,} ({why}), got {value:,}")


def int_at_least(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[Any], int]:
    """A check of an integer from ``minimum`` to ``maximum`` (None: no upper bound; ``why`` says why)."""

    def check(value: Any) -> int:
        INT.check(value)
        if value < minimum:
            raise InvalidValue(None, f"must be at least {minimum}, got {value}")
        if maximum is not None:
            at_most(value, maximum, why)
        return value

    return check


def positive(value: Any) -> float:
    if NUMBER.check(value) <= 0:
        raise InvalidValue(None, f"must be positive, got {show(value)}")
    return float(value)


def one_of(what: str, names: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if STR.check(value) not in names:
            raise InvalidValue(None, f"unknown {what} {show(value)}; known: {', '.join(names)}")
        return value

    return check


def check_study_name(value: Any) -> str:
    """A study name: a file name, an MLflow experiment and run name (see limits.MAX_NAME_LENGTH)."""
    if not _NAME.fullmatch(STR.check(value)):
        raise InvalidValue(
            None,
            f"must be letters, digits, '_', '.' or '-' only, starting with a letter or digit, got {show(value)[:80]}",
        )
    if len(value) > limits.MAX_NAME_LENGTH:
        raise InvalidValue(
            None,
            f"must be at most {limits.MAX_NAME_LENGTH} characters (it names files and "
            f"MLflow experiments and runs), got {len(value)}",
        )
    return value


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
        raise InvalidValue(
            "step",
            f"{step:g} is too small for the range {low:g}..{high:g}: more than "
            f"2**53 steps, which floating point cannot tell apart",
        )
    if log and step != default_step:
        raise InvalidValue("step", "cannot be combined with log = true")
    if log and low <= 0:
        raise InvalidValue("low", f"must be positive with log = true, got {low}")


def _range_toml(kind: str, param: IntRange | FloatRange, default_step: float | None) -> dict[str, Any]:
    """A range as a study file writes it: step and log only when they are not the defaults."""
    out: dict[str, Any] = {"type": kind, "low": param.low, "high": param.high}
    if param.step != default_step:
        out["step"] = param.step
    if param.log:
        out["log"] = True
    return out


@dataclass(frozen=True)
class IntRange:
    """Integers from low to high (both included) in steps of ``step``, or log-uniform if ``log``."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        for key in ("low", "high", "step"):
            with at_key(key):
                INT.check(getattr(self, key))
        with at_key("log"):
            BOOL.check(self.log)
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
        return is_int(value) and self.low <= value <= self.high and (value - self.low) % self.step == 0

    def describe(self) -> str:
        step = f" step {self.step}" if self.step != 1 else ""
        return f"integers {self.low}..{self.high}{step}{' log' if self.log else ''}"

    def to_toml(self) -> dict[str, Any]:
        return _range_toml("int", self, default_step=1)


@dataclass(frozen=True)
class FloatRange:
    """Numbers from low to high, continuous, in steps of ``step``, or log-uniform if ``log``."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        for key in ("low", "high") if self.step is None else ("low", "high", "step"):
            with at_key(key):
                object.__setattr__(self, key, float(NUMBER.check(getattr(self, key))))
        with at_key("log"):
            BOOL.check(self.log)
        _check_range(self.low, self.high, self.step, self.log, default_step=None)
        if self.step is not None and not _aligned(self.high - self.low, self.step):
            raise InvalidValue("step", f"{self.step:g} does not divide high - low = {self.high - self.low:g}")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list[float] | None:
        """The stepped values (rounded to 12 significant digits); None for a continuous range."""
        if self.step is None:
            return None
        return [significant(self.low + i * self.step) for i in range(self.n_values())]

    def n_values(self) -> int | None:
        """How many values ``grid_values`` lists, without listing them (None: continuous)."""
        return None if self.step is None else round((self.high - self.low) / self.step) + 1

    def contains(self, value: object) -> bool:
        return (
            is_number(value)
            and self.low <= value <= self.high
            and (self.step is None or _aligned(value - self.low, self.step))
        )

    def describe(self) -> str:
        step = f" step {self.step:g}" if self.step is not None else ""
        return f"numbers {self.low:g}..{self.high:g}{step}{' log' if self.log else ''}"

    def to_toml(self) -> dict[str, Any]:
        return _range_toml("float", self, default_step=None)


@dataclass(frozen=True)
class Categorical:
    """One of a list of choices (strings, numbers or booleans)."""

    choices: tuple

    def __post_init__(self) -> None:
        with at_key("choices"):
            choices = tuple(ARRAY.check(self.choices))
            if not choices:
                raise InvalidValue(None, "must hold at least one choice")
            for i, choice in enumerate(choices):
                with at_key(f"[{i}]"):
                    SCALAR.check(choice)
            if len(set(choices)) < len(choices):
                raise InvalidValue(None, f"duplicate choices in {show(list(choices))}")
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
        return "one of " + ", ".join(map(show, self.choices))

    def to_toml(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


@dataclass(frozen=True)
class Fixed:
    """A parameter held at one value: logged with the others, never searched."""

    value: Any

    def __post_init__(self) -> None:
        SCALAR.check(self.value)

    def suggest(self, trial: Any, name: str) -> Any:
        """The value itself: a fixed parameter is not suggested to the trial."""
        return self.value

    def to_toml(self) -> Any:
        return self.value


Param = IntRange | FloatRange | Categorical | Fixed
PARAM_TYPES: Mapping[str, type] = MappingProxyType({"int": IntRange, "float": FloatRange, "categorical": Categorical})
