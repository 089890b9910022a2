"""Study reports: trials and epochs as tables, the best region of the space, files on disk.

The best region of a single-objective study is its top trials by the objective; that of
a multi-objective study is its Pareto front (``study.best_trials``), over all objectives.
Everything comes from what a study stores (parameters, values and the trial's
``mlp_sweep.result`` attribute), so a report can be made from any storage at any
time, also while the study still runs.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from core.train import CURVES
from sweep.errors import OptionError, UsageError
from sweep.report import plots
from sweep.schema import (
    BEST_VALIDATION_ACCURACY,
    EPOCHS_RUN,
    GAP,
    SPEC_ATTR,
    TEST_ACCURACY,
    TRAINING_SECONDS,
    TrialRecord,
)
from sweep.words import plural, show_number

#: The trial metrics ``trials_frame`` has a column for, besides epochs_run and seconds.
METRIC_COLUMNS = (*CURVES, BEST_VALIDATION_ACCURACY, TEST_ACCURACY, GAP)
_TAIL_COLUMNS = ("overfit", EPOCHS_RUN, "seconds", "ended_after", "pruned_at_epoch", "reason")
_MARGINAL_BINS = 5


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


@dataclass(frozen=True)
class ParamRegion:
    """Where one parameter lies among the best trials.

    kind is "int", "float" or "categorical"; low, high and median are None for a
    categorical parameter; ``values`` counts every value the best trials took.
    """

    name: str
    kind: str
    low: float | None
    high: float | None
    median: float | None
    best: object
    values: Mapping[object, int]


@dataclass(frozen=True)
class Region:
    """The best trials of a study (its top ``quantile`` by ``objective``) and what they have in common.

    ``marginals`` holds, per parameter, the objective over all completed trials grouped
    by the parameter's value or quantile bin (columns count, mean, min, max).
    A Pareto front's region (``pareto_region``) has ``front``, the (label, direction) of
    every objective; its ``objective`` is the first, which ranks it and gives its marginals,
    and its ``quantile`` is the share of the completed trials on the front.
    """

    objective: str  # the column ranked on
    label: str  # what the objective is, for reading (a metric name)
    direction: str
    quantile: float
    n_complete: int
    support: int
    threshold: float  # the worst objective value inside the region
    best_trial: int
    best_value: float
    trials: tuple[int, ...]
    params: Mapping[str, ParamRegion]
    gap_mean: float | None
    gap_max: float | None
    n_overfit: int
    marginals: Mapping[str, pd.DataFrame]
    front: tuple[tuple[str, str], ...] = ()

    def table(self) -> pd.DataFrame:
        """One row per parameter (param, kind, low, high, median, best, values, support): region.csv."""
        rows = [
            {
                "param": p.name,
                "kind": p.kind,
                "low": p.low,
                "high": p.high,
                "median": p.median,
                "best": p.best,
                "values": _counts(p.values) if p.kind == "categorical" else None,
                "support": self.support,
            }
            for p in self.params.values()
        ]
        return pd.DataFrame(rows, columns=["param", "kind", "low", "high", "median", "best", "values", "support"])

    def summary(self) -> str:
        """The region in a few readable lines."""
        if self.front:
            on = ", ".join(f"{label} ({direction})" for label, direction in self.front)
            lines = [
                f"Best region: the Pareto front of {plural(self.n_complete, 'completed trial')} on {on}: "
                f"{plural(self.support, 'trial')} ({', '.join(f'#{n}' for n in self.trials)}); "
                f"the quantile applies to single-objective studies only",
                f"Best trial #{self.best_trial} of the front on {self.label} (the first objective): "
                f"{self.label} = {self.best_value:.4g}",
            ]
        else:
            bound = "≥" if self.direction == "maximize" else "≤"
            lines = [
                f"Best region: top {self.quantile * 100:g}% of {plural(self.n_complete, 'completed trial')} by "
                f"{self.label} ({self.direction}): {plural(self.support, 'trial')}, {self.label} {bound} "
                f"{self.threshold:.4g}",
                f"Best trial #{self.best_trial}: {self.label} = {self.best_value:.4g}",
            ]
        width = max((len(name) for name in self.params), default=0)
        for p in self.params.values():
            if p.kind == "categorical":
                where = _counts(p.values)
            else:
                where = f"{p.low:.4g} .. {p.high:.4g}   median {p.median:.4g}"
            lines.append(f"  {p.name:<{width}}  {where}   best {show_number(p.best)}")
        if self.gap_mean is not None:
            lines.append(
                f"Over-fitting in the region: gap (training - validation accuracy) mean "
                f"{self.gap_mean:.3f}, max {self.gap_max:.3f}; {self.n_overfit} of "
                f"{plural(self.support, 'trial')} flagged"
            )
        for name, marginal in self.marginals.items():
            lines.append(f"{self.label} by {name}:")
            lines.extend(
                f"  {str(index):>24}  n={int(row['count']):<4} mean {row['mean']:.4g}  "
                f"min {row['min']:.4g}  max {row['max']:.4g}"
                for index, row in marginal.iterrows()
            )
        return "\n".join(lines)


def _counts(values: Mapping[object, int]) -> str:
    return ", ".join(f"{show_number(value)} ×{count}" for value, count in values.items())


def _kind(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        return "categorical"
    return "int" if pd.api.types.is_integer_dtype(column) else "float"


def _scalar(value: object) -> object:
    """A NumPy scalar as the Python number it holds."""
    return value.item() if hasattr(value, "item") else value


def _param_region(name: str, top: pd.Series, best: object) -> ParamRegion:
    kind = _kind(top)
    taken = top.dropna()
    values = {_scalar(v): int(n) for v, n in taken.value_counts().items()}
    if kind == "categorical":
        return ParamRegion(name, kind, None, None, None, _scalar(best), values)
    return ParamRegion(
        name, kind, _scalar(taken.min()), _scalar(taken.max()), float(taken.median()), _scalar(best), values
    )


def _marginal(done: pd.DataFrame, param: str, objective: str) -> pd.DataFrame:
    """The objective by parameter value (categorical, or few values) or by quantile bin."""
    column = done[param]
    if _kind(column) != "categorical" and column.nunique() > _MARGINAL_BINS:
        _, edges = pd.qcut(column, _MARGINAL_BINS, retbins=True, duplicates="drop")
        column = pd.cut(
            column, edges, labels=[f"{lo:.3g} .. {hi:.3g}" for lo, hi in zip(edges, edges[1:])], include_lowest=True
        )
    grouped = done[objective].groupby(column, observed=True, dropna=True)
    return grouped.agg(["count", "mean", "min", "max"]).rename_axis(param)


def best_region(
    trials: pd.DataFrame,
    objective: str,
    direction: str,
    quantile: float = 0.10,
    params: Sequence[str] = (),
    *,
    label: str | None = None,
) -> Region:
    """The top ``quantile`` (at least one) of the completed trials by ``objective``, and the
    range of each of ``params`` (columns of ``trials_frame``) among them.

    ``label`` names the objective in the summary (default: the column).
    Ties are broken by trial number. Raises ValueError when no trial is complete.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    done = _completed(trials, [objective])
    ranked = _ranked(done, objective, direction)
    support = max(1, math.ceil(round(quantile * len(done), 9)))
    return _region(done, ranked.head(support), objective, label or objective, direction, quantile, params)


def pareto_region(
    trials: pd.DataFrame,
    objectives: Sequence[str],
    directions: Sequence[str],
    params: Sequence[str] = (),
    *,
    labels: Sequence[str] | None = None,
) -> Region:
    """The Pareto front (the ``pareto`` column of a multi-objective ``trials_frame``) and the
    range of each of ``params`` among its trials: the best region over all ``objectives``.

    Every trial of the front is in it and no other, whatever a quantile would say: no trial
    of the front is better than another. Its trials are ranked by the first objective (ties
    by number), so its best trial, from which each parameter's ``best`` comes, is the front's
    best on the first objective. ``labels`` name the objectives (default: the columns).
    Raises ValueError when no trial is complete.
    """
    done = _completed(trials, objectives)
    front = _ranked(done[done["pareto"]], objectives[0], directions[0])
    labels = list(labels or objectives)
    return _region(
        done,
        front,
        objectives[0],
        labels[0],
        directions[0],
        len(front) / len(done),
        params,
        front=tuple(zip(labels, directions)),
    )


def _completed(trials: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """The completed trials that have every objective; ValueError if there is none."""
    done = trials[(trials["state"] == TrialState.COMPLETE.name) & trials[list(objectives)].notna().all(axis=1)]
    if done.empty:
        raise ValueError("no completed trials: there is no best region")
    return done


def _ranked(trials: pd.DataFrame, objective: str, direction: str) -> pd.DataFrame:
    return trials.sort_values([objective, "number"], ascending=[direction == "minimize", True])


def _region(
    done: pd.DataFrame,
    top: pd.DataFrame,
    objective: str,
    label: str,
    direction: str,
    quantile: float,
    params: Sequence[str],
    front: tuple[tuple[str, str], ...] = (),
) -> Region:
    """The region of the ``top`` trials (best first) among the completed ``done``."""
    best, gap = top.iloc[0], top[GAP].dropna()
    return Region(
        objective=objective,
        label=label,
        direction=direction,
        quantile=quantile,
        n_complete=len(done),
        support=len(top),
        threshold=float(top[objective].iloc[-1]),
        best_trial=int(best["number"]),
        best_value=float(best[objective]),
        trials=tuple(int(n) for n in top["number"]),
        params={p: _param_region(p, top[p], best[p]) for p in params},
        gap_mean=float(gap.mean()) if len(gap) else None,
        gap_max=float(gap.max()) if len(gap) else None,
        n_overfit=int(top["overfit"].sum()),
        marginals={p: _marginal(done, p, objective) for p in params},
        front=front,
    )


def study_region(study: optuna.Study, trials: pd.DataFrame, quantile: float = 0.10) -> Region | None:
    """The best region of a study over all its parameters; None if no trial completed.

    A single-objective study's is its top ``quantile`` (``best_region``); a multi-objective
    study's is its Pareto front over all objectives (``pareto_region``; ``quantile`` unused).
    """
    if not (trials["state"] == TrialState.COMPLETE.name).any():
        return None
    values, params, names = value_columns(study), list(param_columns(study).values()), objective_names(study)
    if len(values) > 1:
        return pareto_region(trials, values, directions(study), params, labels=names)
    return best_region(trials, values[0], directions(study)[0], quantile, params, label=names[0])


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote, the plots it left out (name: why), and the region (None: no completed trial)."""

    out_dir: Path
    files: tuple[Path, ...]
    skipped: Mapping[str, str]
    region: Region | None


def write_report(
    study: optuna.Study,
    out_dir: str | os.PathLike,
    *,
    quantile: float = 0.10,
    gap_threshold: float = 0.05,
    heatmap_params: Sequence[str] | None = None,
) -> Report:
    """Write trials.csv, epochs.csv, region.csv, summary.txt and the plots (PNG) into ``out_dir``.

    The region of a multi-objective study is its Pareto front, which summary.txt lists in
    full; the heat map and the over-fitting plot are on the first objective. Every file is
    rendered in memory first, then written under a temporary name and renamed into place, so a
    failed write leaves the previous report as it was. Raises UsageError when a
    heat-map parameter is unknown or ``out_dir`` cannot be written.
    """
    trials, epochs = trials_frame(study, gap_threshold), epochs_frame(study)
    region = study_region(study, trials, quantile)
    figures, skipped = plots.collect(_report_plots(study, trials, epochs, region, gap_threshold, heatmap_params))
    optuna_figures, optuna_skipped = plots.optuna_plots(study, objective_names(study))
    figures.update({f"optuna_{name}": figure for name, figure in optuna_figures.items()})
    skipped.update({f"optuna_{name}": why for name, why in optuna_skipped.items()})

    contents = {"trials.csv": trials.to_csv(index=False), "epochs.csv": epochs.to_csv(index=False)}
    if region is not None:
        contents["region.csv"] = region.table().to_csv(index=False)
    contents["summary.txt"] = _summary_text(study, trials, region, skipped)
    data = {name: text.encode() for name, text in contents.items()}
    data.update({f"{name}.png": plots.to_png(figure) for name, figure in figures.items()})
    return Report(Path(out_dir), _write_all(Path(out_dir), data), skipped, region)


def _report_plots(
    study: optuna.Study,
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    region: Region | None,
    gap_threshold: float,
    heatmap_params: Sequence[str] | None,
) -> dict:
    """Our own plots of the report, by file name (made later, by ``plots.collect``)."""
    value, name, direction = value_columns(study)[0], objective_names(study)[0], directions(study)[0]
    columns = param_columns(study)
    if heatmap_params is not None:
        if len(heatmap_params) != 2 or any(p not in columns for p in heatmap_params):
            raise OptionError(
                "heatmap",
                " ".join(heatmap_params),
                f"needs two parameters of study {study.study_name} (its parameters: {', '.join(columns) or 'none'})",
            )
        x, y = heatmap_params
    else:
        numeric = [p for p, c in columns.items() if _kind(trials[c]) != "categorical"]
        x, y = (numeric + [None, None])[:2]
    logs = log_scaled(study)

    def heatmap():
        if y is None:
            raise ValueError("needs two numeric parameters")
        return plots.heatmap_scatter(
            trials,
            columns[x],
            columns[y],
            value,
            direction=direction,
            label=name,
            log_x=x in logs,
            log_y=y in logs,
            title=f"{study.study_name}: {plots.axis_label(name)} by {x} and {y}",
        )

    def curves():
        if region is None:
            raise ValueError("no completed trial")
        best = trials.set_index("number").loc[region.best_trial]
        setting = ", ".join(f"{p}={show_number(_scalar(best[c]))}" for p, c in columns.items())
        return plots.best_curves(
            epochs, region.best_trial, title=f"{study.study_name}: best trial #{region.best_trial} ({setting})"
        )

    def overfitting():
        return plots.overfitting(trials, by=value, direction=direction, label=name, gap_threshold=gap_threshold)

    def best_so_far():
        if len(directions(study)) > 1:
            raise ValueError("one objective only (a Pareto front has no single best)")
        return plots.best_so_far(
            trials,
            value,
            direction=direction,
            label=name,
            title=f"{study.study_name}: best {plots.axis_label(name)} so far",
        )

    return {"heatmap": heatmap, "best_curves": curves, "overfitting": overfitting, "best_so_far": best_so_far}


def _summary_text(study: optuna.Study, trials: pd.DataFrame, region: Region | None, skipped: Mapping[str, str]) -> str:
    counts = trials["state"].value_counts()
    states = ", ".join(f"{counts[s]} {s.lower()}" for s in counts.index)
    lines = [f"Study {study.study_name}: {plural(len(trials), 'trial')} ({states or 'none'})"]
    lines.append(region.summary() if region is not None else "No completed trials: no best region.")
    lines.extend(_pareto_lines(study, trials))
    if skipped:
        lines.append("Plots left out:")
        lines.extend(f"  {name}: {why}" for name, why in skipped.items())
    return "\n".join(lines) + "\n"


def _pareto_lines(study: optuna.Study, trials: pd.DataFrame) -> list[str]:
    """Every trial of a multi-objective study's Pareto front, best on the first objective first:
    its values and parameters (nothing for a single-objective study)."""
    if not pareto_columns(study):
        return []
    names, values, params = objective_names(study), value_columns(study), param_columns(study)
    front = _ranked(trials[trials["pareto"]], values[0], directions(study)[0])
    lines = [f"Pareto front: {len(front)} trials, best {names[0]} first:"]
    for _, row in front.iterrows():
        scores = "  ".join(f"{name} {row[value]:.4g}" for name, value in zip(names, values))
        setting = " ".join(f"{p}={show_number(_scalar(row[c]))}" for p, c in params.items())
        lines.append(f"  #{int(row['number'])}  {scores}   {setting}")
    return lines


def _write_all(out_dir: Path, data: Mapping[str, bytes]) -> tuple[Path, ...]:
    """Write every file under a temporary name, then rename them all into place; UsageError if any fails."""
    temps: list[Path] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, content in data.items():
            temp = out_dir / f".{name}.{secrets.token_hex(4)}.tmp"  # not mkstemp: that makes it private (0600)
            with open(temp, "xb") as file:
                temps.append(temp)
                file.write(content)
        for temp, name in zip(temps, data):
            os.replace(temp, out_dir / name)
    except OSError as exc:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise UsageError(f"cannot write reports to {out_dir}: {exc.strerror or exc}") from None
    return tuple(out_dir / name for name in data)
