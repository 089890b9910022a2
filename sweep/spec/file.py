"""Study files: TOML read at the edge into a validated ``StudySpec``, and written back.

``load_spec`` / ``parse_spec`` turn a study file into a ``StudySpec`` or raise a
``SpecError`` naming the file, the dotted key (``space.eta.step``, ``objective[1].metric``)
and the problem. ``spec_to_dict`` / ``dumps`` turn a spec back into plain data / TOML text.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any

import tomli_w

from sweep import limits
from sweep.errors import InvalidValue, SpecError
from sweep.spec.parts import DataSpec, Objective, PrunerSpec, SamplerSpec, default_direction
from sweep.spec.space import ARRAY, PARAM_TYPES, STR, TABLE, Fixed, Kind, Param, at_key, did_you_mean, join_key
from sweep.spec.study import StudySpec

_REQUIRED, _ABSENT = object(), object()  # defaults of _Table.take: a required key, an optional one


class _Table:
    """One table of a study file being read: look-ups that name the dotted key, then a check for leftovers."""

    def __init__(self, value: Any, key: str | None) -> None:
        with at_key(key):
            self.data: Mapping[str, Any] = TABLE.check(value)
        self.key = key
        self.known: list[str] = []

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def take(self, name: str, kind: Kind | None = None, default: Any = _REQUIRED) -> Any:
        """The value of ``name`` (checked against ``kind`` if given), else ``default``."""
        self.known.append(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise InvalidValue(join_key(self.key, name), "required")
            return default
        with at_key(join_key(self.key, name)):
            return self.data[name] if kind is None else kind.check(self.data[name])

    def given(self, *names: str) -> dict[str, Any]:
        """Those of ``names`` the table has: left out, they take the dataclass defaults."""
        values = {name: self.take(name, default=_ABSENT) for name in names}
        return {name: value for name, value in values.items() if value is not _ABSENT}

    def table(self, name: str) -> _Table:
        return _Table(self.take(name, default={}), join_key(self.key, name))

    def rest(self) -> dict[str, Any]:
        """The keys not taken yet, all at once (a sampler's or pruner's options)."""
        return {name: value for name, value in self.data.items() if name not in self.known}

    def done(self) -> None:
        for name in self.data:
            if name not in self.known:
                raise InvalidValue(
                    join_key(self.key, name),
                    f"unknown key{did_you_mean(name, self.known)}; known here: {', '.join(self.known)}",
                )


def _read_param(value: Any, key: str) -> Param:
    """A [space] entry: a table with a type, or a bare value (fixed)."""
    if not isinstance(value, Mapping):
        with at_key(key):
            return Fixed(value)
    table = _Table(value, key)
    kind = table.take("type", STR)
    cls = PARAM_TYPES.get(kind)
    if cls is None:
        raise InvalidValue(f"{key}.type", f"unknown type {kind!r}; known: {', '.join(PARAM_TYPES)}")
    args = {f.name: table.take(f.name, default=_REQUIRED if f.default is MISSING else f.default) for f in fields(cls)}
    table.done()
    with at_key(key):
        return cls(**args)


def _read_pruner(table: _Table) -> PrunerSpec:
    args = table.given("name")
    if "wrapped" in table:
        args["wrapped"] = _read_pruner(table.table("wrapped"))
    with at_key(table.key):
        return PrunerSpec(**args, options=table.rest())


def _read_spec(data: Any, source: str) -> StudySpec:
    top = _Table(data, None)
    args = {"name": top.take("name"), **top.given("description", "parent")}

    data_table = top.table("data")
    with at_key("data"):
        args["data"] = DataSpec(**data_table.given("dataset", "n_train", "n_validation", "n_test"))
    data_table.done()

    items = top.take("objective", ARRAY, default=None)
    if items is not None:
        objectives = []
        for i, item in enumerate(items):
            table = _Table(item, f"objective[{i}]")
            metric = table.take("metric", STR)
            direction = table.take("direction", default=default_direction(metric))
            table.done()
            with at_key(table.key):
                objectives.append(Objective(metric, direction))
        args["objectives"] = tuple(objectives)

    sampler_table = top.table("sampler")
    sampler_args = sampler_table.given("name", "seed")
    with at_key("sampler"):
        args["sampler"] = SamplerSpec(**sampler_args, options=sampler_table.rest())
    args["pruner"] = _read_pruner(top.table("pruner"))

    budget = top.table("budget")
    args.update(budget.given("n_trials", "timeout", "at_timeout"))
    budget.done()

    args["train"] = top.take("train", TABLE, default={})
    space = top.table("space")
    args["space"] = {name: _read_param(value, f"space.{name}") for name, value in space.data.items()}
    args["enqueue"] = tuple(top.take("enqueue", ARRAY, default=()))
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


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def not_regular(mode: int) -> str | None:
    """Why a file of this mode is not a study or store file, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((f"not a regular file ({kind})" for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def _read_study_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file of at most limits.MAX_STUDY_BYTES; never blocks on a FIFO or device.

    Checked by stat before opening (a socket cannot be opened) and by fstat of the file opened
    (O_NONBLOCK: opening a FIFO does not wait for a writer), in case the path changed between.
    """
    try:
        problem = not_regular(os.stat(path).st_mode)
        if problem:
            raise SpecError(path, None, problem)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            problem = not_regular(os.fstat(fd).st_mode)
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
        raise SpecError(
            path, None, f"larger than {limits.show_bytes(limits.MAX_STUDY_BYTES)} (a study file is a few KiB)"
        )
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
    if spec.at_timeout != "finish":
        budget["at_timeout"] = spec.at_timeout
    if budget:
        out["budget"] = budget
    out["train"] = {name: list(value) if isinstance(value, tuple) else value for name, value in spec.train.items()}
    out["space"] = {name: param.to_toml() for name, param in spec.space.items()}
    if spec.enqueue:
        out["enqueue"] = [dict(entry) for entry in spec.enqueue]
    return out


def dumps(spec: StudySpec) -> str:
    """The spec as study-file TOML text."""
    return tomli_w.dumps(spec_to_dict(spec), multiline_strings=True)
