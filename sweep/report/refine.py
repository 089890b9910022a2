"""A follow-up study zoomed in on the best region of a finished one.

Numeric ranges shrink to where the top trials are (widened a little, clipped to the
parent's range), grid steps get finer, categorical choices keep only those the top
trials used, and the parent's best point is enqueued so the new study starts there.
The best region is ``study_region``'s: a multi-objective study's is its Pareto front,
and every point of the front is enqueued.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
from collections.abc import Collection
from pathlib import Path

import optuna

from sweep.errors import FileExists, UsageError
from sweep.report.region import ParamRegion, study_region
from sweep.report.tables import objective_names, param_columns, trials_frame
from sweep.spec.file import dumps
from sweep.spec.samplers import GRID_SAMPLERS
from sweep.spec.space import Categorical, Fixed, FloatRange, IntRange, Param, significant
from sweep.spec.study import StudySpec
from sweep.words import plural

MARGIN = 0.10  # of the parent's range (log range for log parameters), added on each side of the region
_FLOAT_SUBDIVISIONS = (10, 5, 4, 2, 1)  # a float grid step may be divided by these, finest first
_GRID_GROWTH = 1.5  # a refined grid may hold this many times the parent's points per parameter ("about as many")


def refined_name(parent: str, taken: Collection[str] = ()) -> str:
    """``<parent>-refined``, or ``-refined-2``, ``-3``... when the name is taken."""
    name, n = f"{parent}-refined", 1
    while name in taken:
        n += 1
        name = f"{parent}-refined-{n}"
    return name


def refine(study: optuna.Study, spec: StudySpec, quantile: float = 0.10, *, taken: Collection[str] = ()) -> StudySpec:
    """A new study spec searching the best region of ``study`` (``study_region``: the top
    ``quantile`` on the objective, or the Pareto front of a multi-objective study).

    ``spec`` is the study's own; ``taken`` the study names not to use. Same data,
    objectives, sampler, pruner and training settings; a grid's budget is its new size.
    The best trial, or every trial of the front (best on the first objective first, as
    many as the budget holds), is enqueued to run first.
    Raises UsageError when the study has no completed trial.
    """
    region = study_region(study, trials_frame(study), quantile)
    if region is None:
        raise UsageError(f"study {study.study_name!r} has no completed trials: nothing to refine")
    columns = param_columns(study)
    space = {
        name: _refined(param, region.params[columns[name]]) if name in columns else param
        for name, param in spec.space.items()
    }
    if region.front:
        on = " and ".join(label for label, _ in region.front)
        description = (
            f"Refined from study {spec.name}: its Pareto front on {on} ({region.support} of "
            f"{plural(region.n_complete, 'completed trial')}); the front's trials are enqueued to run first."
        )
    else:
        metric = objective_names(study)[0]
        description = (
            f"Refined from study {spec.name}: its top {quantile * 100:g}% by {metric} ({region.support} "
            f"of {plural(region.n_complete, 'completed trial')}); its best trial #{region.best_trial} ({metric} "
            f"{region.best_value:.4g}) is enqueued to run first."
        )
    refined = dataclasses.replace(
        spec,
        name=refined_name(spec.name, taken),
        parent=spec.name,
        description=description,
        space=space,
        enqueue=(),
        source=f"refined {spec.name}",
    )
    budget = refined.grid_size if spec.sampler.name in GRID_SAMPLERS else spec.n_trials
    by_number = {t.number: t.params for t in study.get_trials(deepcopy=False)}
    starts = []
    for number in region.trials if region.front else (region.best_trial,):
        point = {name: significant(value) for name, value in by_number[number].items()}
        start = {
            name: point[name]
            for name, param in refined.searched.items()
            if name in point and param.contains(point[name])
        }
        if start and start not in starts:
            starts.append(start)
    return dataclasses.replace(refined, n_trials=budget, enqueue=tuple(starts[:budget]))


def _refined(param: Param, region: ParamRegion) -> Param:
    if isinstance(param, Categorical):
        kept = tuple(choice for choice in param.choices if choice in region.values)
        return Fixed(kept[0]) if len(kept) == 1 else Categorical(kept)
    if isinstance(param, (IntRange, FloatRange)):
        return _narrowed(param, region.low, region.high)
    return param


def _narrowed(param: IntRange | FloatRange, lo: float, hi: float) -> IntRange | FloatRange:
    """The range [lo, hi] of the top trials, widened by MARGIN (at least one grid step) each side,
    on the parent's grid, clipped to the parent's range; the bare [lo, hi] if that would be the
    whole parent range; with a finer grid step where one fits."""
    scale, unscale = (math.log, math.exp) if param.log else (float, float)
    margin = MARGIN * (scale(param.high) - scale(param.low))
    low, high = unscale(scale(lo) - margin), unscale(scale(hi) + margin)
    step = None if param.log else param.step
    if step is not None:
        low = param.low + math.floor(round((min(low, lo - step) - param.low) / step, 9)) * step
        high = param.low + math.ceil(round((max(high, hi + step) - param.low) / step, 9)) * step
    elif isinstance(param, IntRange):
        low, high = math.floor(low), math.ceil(high)
    else:
        low, high = _round_out(low, lo - low, math.floor), _round_out(high, high - hi, math.ceil)
    low, high = max(significant(float(low)), param.low), min(significant(float(high)), param.high)
    if (low, high) == (param.low, param.high) and lo < hi:
        low, high = lo, hi  # no narrower with the margin: the region itself, still around every top trial
    if isinstance(param, IntRange):
        low, high = int(low), int(high)
    if step is None:
        return dataclasses.replace(param, low=low, high=high)
    return dataclasses.replace(param, low=low, high=high, step=_finer_step(param, low, high))


def _round_out(value: float, moved: float, rounding) -> float:
    """``value`` rounded (floor or ceil) one decade below how far the margin moved it."""
    quantum = 10.0 ** (math.floor(math.log10(moved)) - 1)
    return rounding(round(value / quantum, 6)) * quantum


def _finer_step(param: IntRange | FloatRange, low: float, high: float) -> float:
    """The finest division of the parent's step whose grid over [low, high] has about as many
    points as the parent's grid (at most _GRID_GROWTH times); the parent's step if none does."""
    if isinstance(param, IntRange):
        candidates = [d for d in range(1, param.step + 1) if param.step % d == 0]
    else:
        candidates = [significant(param.step / k) for k in _FLOAT_SUBDIVISIONS]
    most = _GRID_GROWTH * len(param.grid_values())
    return next((step for step in candidates[:-1] if round((high - low) / step) + 1 <= most), param.step)


def write_refined(spec: StudySpec, path: str | os.PathLike) -> Path:
    """Write the spec as a study file at ``path`` (making its directory), never over an existing file.

    Raises UsageError when the file exists or cannot be written.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _make_parent(path)
    try:
        try:
            temp.write_text(dumps(spec), encoding="utf-8")
            os.link(temp, path)  # atomic, and fails if path exists
        finally:
            temp.unlink(missing_ok=True)
    except FileExistsError:
        raise FileExists(path) from None
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    return path


def _make_parent(path: Path) -> None:
    """``path``'s directory, made if missing (a file in its place cannot be written over)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # (FileExistsError too: a file is where the directory should be)
        raise _cannot_write(path, exc) from None


def _cannot_write(path: Path, exc: OSError) -> UsageError:
    return UsageError(f"cannot write {path}: {exc.strerror or exc}")
