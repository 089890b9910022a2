"""The settings of a study's [train] and [space]: which keys they take, and how each value is checked.

The training options come from core's table (``core.config.OPTIONS``): [train] takes every one,
[space] searches those the table marks searchable, each value is checked by its rule there, and
a study adds only its own caps (``_CAPS``). The network's settings are the study's: ``sizes``,
the [space] names that reshape it (``LAYER_NAMES``), ``activation`` and ``cost``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from types import MappingProxyType
from typing import Any

from core.config import OPTIONS, Rule, TrainConfig
from core.functions import ACTIVATIONS, COSTS
from core.model import NetworkSpec
from sweep import limits
from sweep.errors import InvalidValue
from sweep.spec.space import (
    ARRAY,
    TABLE,
    Categorical,
    Fixed,
    FloatRange,
    IntRange,
    Param,
    at_key,
    at_most,
    did_you_mean,
    int_at_least,
    one_of,
    show,
)

#: [space] names that reshape train.sizes: hidden = width of every hidden layer, depth = their number, and
#: hidden2 = the width of the second (and any later) hidden layer, hidden then being the first's.
LAYER_NAMES = ("hidden", "hidden2", "depth")
#: Parameters [space] may search: core's searchable training options, then the network's.
TUNABLE = (*(name for name, rule in OPTIONS.items() if rule.search), *LAYER_NAMES, "activation", "cost")
#: Keys of [train]: TrainConfig's fields and NetworkSpec's.
TRAIN_KEYS = (*OPTIONS, *(f.name for f in fields(NetworkSpec)))
#: Training settings used when neither [train] nor [space] gives them (batch_size and eta must be given).
DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "sizes": (784, 30, 10),
        "epochs": 10,
        **{f.name: f.default for f in (*fields(TrainConfig), *fields(NetworkSpec)) if f.default is not MISSING},
    }
)
# A study's own upper bounds of training options (core has none): the largest value, and why.
_CAPS: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        "epochs": (limits.MAX_EPOCHS, "a trial that long would run for days"),
        **dict.fromkeys(("patience", "eta_patience"), (limits.MAX_EPOCHS, "the most epochs a trial trains")),
    }
)
_N_INPUTS, _N_OUTPUTS = 784, 10  # MNIST: 28 x 28 pixels in, one output per digit


def _option(name: str, rule: Rule) -> Callable[[Any], Any]:
    """The check of training option ``name``: its rule in core, then the study's cap; numbers of a
    float option become floats."""
    if rule.choices:
        return one_of(name, rule.choices)

    def check(value: Any) -> Any:
        requirement = rule.unmet(value)
        if requirement is not None:
            raise InvalidValue(None, f"must be {requirement}, got {show(value)}")
        if name in _CAPS:
            at_most(value, *_CAPS[name])
        return float(value) if rule.kind is float else value

    return check


def _layer_sizes(value: Any) -> tuple[int, ...]:
    sizes = tuple(ARRAY.check(value))
    for i, size in enumerate(sizes):
        with at_key(f"[{i}]"):
            int_at_least(1)(size)
    if len(sizes) < 2 or sizes[0] != _N_INPUTS or sizes[-1] != _N_OUTPUTS:
        raise InvalidValue(
            None,
            f"must run from {_N_INPUTS} inputs (the pixels) to {_N_OUTPUTS} "
            f"outputs (the digits), got {show(list(sizes))[:80]}",
        )
    if len(sizes) - 2 > limits.MAX_DEPTH:
        raise InvalidValue(None, f"at most {limits.MAX_DEPTH} hidden layers, got {len(sizes) - 2}")
    return sizes


# How each setting is checked and normalised (ints stay ints, numbers of float options become floats).
SETTINGS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {
        **{name: _option(name, rule) for name, rule in OPTIONS.items()},
        **{name: int_at_least(1) for name in ("hidden", "hidden2")},  # (bounded by the memory estimate)
        "depth": int_at_least(1, limits.MAX_DEPTH, "deeper sigmoid networks stop learning"),
        "activation": one_of("activation", tuple(ACTIVATIONS)),
        "cost": one_of("cost", tuple(COSTS)),
        "sizes": _layer_sizes,
    }
)
# The range type each numeric tunable takes; the others (activation, cost) take choices only.
_RANGE_OF: Mapping[str, type] = MappingProxyType(
    {
        **{name: {int: IntRange, float: FloatRange}.get(rule.kind) for name, rule in OPTIONS.items() if rule.search},
        **dict.fromkeys(LAYER_NAMES, IntRange),
    }
)


def checked_param(name: str, param: Any) -> Param:
    """``param`` checked against what the setting ``name`` allows, its values normalised."""
    check = SETTINGS[name]
    if isinstance(param, (IntRange, FloatRange)):
        if type(param) is not _RANGE_OF.get(name):
            expected = {IntRange: '"int"', FloatRange: '"float"'}.get(_RANGE_OF.get(name))
            takes = f'type = {expected} or "categorical"' if expected else 'type = "categorical"'
            raise InvalidValue("type", f"{name} takes {takes}")
        for key in ("low", "high"):
            with at_key(key):
                check(getattr(param, key))
        return param
    if isinstance(param, Categorical):
        choices = []
        for i, choice in enumerate(param.choices):
            with at_key(f"choices[{i}]"):
                choices.append(check(choice))
        return Categorical(tuple(choices))
    if isinstance(param, Fixed):
        return Fixed(check(param.value))
    raise InvalidValue(None, f"must be a range, a categorical or a fixed value, got {show(param)}")


def checked_train(train: Any) -> Mapping[str, Any]:
    """[train], each key known and each value checked (``SETTINGS``)."""
    with at_key("train"):
        TABLE.check(train)
    checked = {}
    for name, value in train.items():
        with at_key(f"train.{name}"):
            if name not in TRAIN_KEYS:
                raise InvalidValue(
                    None, f"unknown key{did_you_mean(name, TRAIN_KEYS)}; [train] keys: {', '.join(TRAIN_KEYS)}"
                )
            checked[name] = SETTINGS[name](value)
    return MappingProxyType(checked)


def checked_space(space: Any, train: Mapping[str, Any]) -> Mapping[str, Param]:
    """[space], each name tunable, not also in [train], and its range, choices or value checked."""
    with at_key("space"):
        TABLE.check(space)
    checked = {}
    for name, param in space.items():
        with at_key(f"space.{name}"):
            if name not in TUNABLE:
                raise InvalidValue(
                    None, f"not a tunable parameter{did_you_mean(name, TUNABLE)}; tunable: {', '.join(TUNABLE)}"
                )
            if name in train:
                raise InvalidValue(None, "also given in [train]; give it in one place")
            checked[name] = checked_param(name, param)
    return MappingProxyType(checked)
