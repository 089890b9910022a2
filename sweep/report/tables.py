"""A study's trials and epochs as tables: one row per trial, one row per trial and epoch.

Everything comes from what a study stores (parameters, values and the trial's
``mlp_sweep.result`` attribute), so a table can be made from any storage at any
time, also while the study still runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
import pandas as pd
from optuna.distributions import IntDistribution

from core.history import CURVES
from sweep.schema import (
    BEST_VALIDATION_ACCURACY,
    EPOCHS_RUN,
    GAP,
    SPEC_ATTR,
    TEST_ACCURACY,
    TRAINING_SECONDS,
    TrialRecord,
)

#: The trial metrics ``trials_frame`` has a column for, besides epochs_run and seconds.
METRIC_COLUMNS = (*CURVES, BEST_VALIDATION_ACCURACY, TEST_ACCURACY, GAP)
_TAIL_COLUMNS = ("overfit", EPOCHS_RUN, "seconds", "ended_after", "pruned_at_epoch", "reason")


def value_columns(study: optuna.Study) -> list[str]:
    """The objective value columns of ``trials_frame``: ``value``, or ``value_0``, ``value_1``..."""
    n = len(study.directions)
    return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]


def objective_names(study: optuna.Study) -> list[str]:
    """The metric of each objective, from the stored settings (the value columns if none are stored)."""
    stored = study.user_attrs.get(SPEC_ATTR, {}).get("objective")
    return [o["metric"] for o in stored] if stored else value_columns(study)


def directions(study: optuna.Study) -> list[str]:
    """ "maximize" or "minimize" for each objective."""
    return [d.name.lower() for d in study.directions]


def pareto_columns(study: optuna.Study) -> list[str]:
    """``["pareto"]`` for a multi-objective study (its column in ``trials_frame``), else none."""
    return ["pareto"] if len(study.directions) > 1 else []


def param_columns(study: optuna.Study) -> dict[str, str]:
    """Column of each parameter in ``trials_frame``: its name, or ``param_<name>`` where it would clash."""
    reserved = {"number", "state", *value_columns(study), *pareto_columns(study), *METRIC_COLUMNS, *_TAIL_COLUMNS}
    names = dict.fromkeys(name for t in study.get_trials(deepcopy=False) for name in t.params)
    return {name: f"param_{name}" if name in reserved else name for name in names}


def log_scaled(study: optuna.Study) -> set[str]:
    """Parameters sampled on a log scale."""
    return {
        name
        for t in study.get_trials(deepcopy=False)
        for name, d in t.distributions.items()
        if getattr(d, "log", False)
    }


def trials_frame(study: optuna.Study, gap_threshold: float = 0.05) -> pd.DataFrame:
    """One row per trial: number, state, values, parameters, final and best metrics, over-fitting.

    A multi-objective study also gets ``pareto``, after the values: whether the trial is
    on the Pareto front (one of ``study.best_trials``, which are all complete).
    ``overfit`` is gap (training minus validation accuracy) > ``gap_threshold``, and NA
    where the gap is unknown; metrics a trial does not have (failed, not monitored) are NaN.
    A pruned trial's value is its last reported one (Optuna's rule); filter on state.
    ``ended_after`` is the wall time in seconds from the study's first trial start to the
    trial's end (NaN while it runs): the x axis of "best so far over wall time".
    """
    values, pareto, params = value_columns(study), pareto_columns(study), param_columns(study)
    front = {t.number for t in study.best_trials} if pareto else set()
    int_params = {
        params[name]
        for t in study.get_trials(deepcopy=False)
        for name, d in t.distributions.items()
        if isinstance(d, IntDistribution)
    }
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start is not None]
    first = min(starts, default=None)
    rows = []
    for t in study.get_trials(deepcopy=False):
        ended = t.datetime_complete
        ended_after = (ended - first).total_seconds() if ended is not None and first is not None else None
        record = TrialRecord.of(t)
        metrics = record.metrics or {}
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                **dict(zip(values, t.values or [None] * len(values))),
                **dict.fromkeys(pareto, t.number in front),
                **{column: t.params.get(name) for name, column in params.items()},
                **{key: metrics.get(key) for key in METRIC_COLUMNS},
                EPOCHS_RUN: metrics.get(EPOCHS_RUN),
                "seconds": metrics.get(TRAINING_SECONDS),
                "ended_after": ended_after,
                "pruned_at_epoch": record.pruned_at_epoch,
                "reason": record.reason,
            }
        )
    columns = ["number", "state", *values, *pareto, *params.values(), *METRIC_COLUMNS, *_TAIL_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.astype(
        {
            **dict.fromkeys((*values, *METRIC_COLUMNS, "seconds", "ended_after"), "float64"),
            **dict.fromkeys(pareto, "boolean"),
            **dict.fromkeys((*int_params, EPOCHS_RUN, "pruned_at_epoch"), "Int64"),
        }
    )
    frame["overfit"] = (frame[GAP] > gap_threshold).astype("boolean").mask(frame[GAP].isna())
    return frame


def epochs_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial and epoch: trial, epoch, the four curves, the epoch's SGD seconds."""
    keys = (*CURVES, "seconds")
    rows = []
    for t in study.get_trials(deepcopy=False):
        history = TrialRecord.of(t).history or {}
        for i, epoch in enumerate(history.get("epoch", ())):
            rows.append({"trial": t.number, "epoch": epoch, **{key: _item(history.get(key), i) for key in keys}})
    frame = pd.DataFrame(rows, columns=["trial", "epoch", *keys])
    return frame.astype({"trial": "int64", "epoch": "int64", **dict.fromkeys(keys, "float64")})


def _item(values: Sequence | None, i: int):
    return values[i] if values is not None and i < len(values) else None


def param_kind(column: pd.Series) -> str:
    """ "int", "float" or "categorical": how a parameter's column of ``trials_frame`` is read."""
    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        return "categorical"
    return "int" if pd.api.types.is_integer_dtype(column) else "float"


def scalar(value: object) -> object:
    """A NumPy scalar as the Python number it holds."""
    return value.item() if hasattr(value, "item") else value
