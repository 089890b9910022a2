"""The best region of a study: its best trials and where each parameter lies among them.

The best region of a single-objective study is its top trials by the objective; that of
a multi-objective study is its Pareto front (``study.best_trials``), over all objectives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import optuna
import pandas as pd
from optuna.trial import TrialState

from sweep.report.tables import directions, objective_names, param_columns, param_kind, scalar, value_columns
from sweep.schema import GAP
from sweep.words import plural, show_number

_MARGINAL_BINS = 5


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


def _param_region(name: str, top: pd.Series, best: object) -> ParamRegion:
    kind = param_kind(top)
    taken = top.dropna()
    values = {scalar(v): int(n) for v, n in taken.value_counts().items()}
    if kind == "categorical":
        return ParamRegion(name, kind, None, None, None, scalar(best), values)
    return ParamRegion(
        name, kind, scalar(taken.min()), scalar(taken.max()), float(taken.median()), scalar(best), values
    )


def _marginal(done: pd.DataFrame, param: str, objective: str) -> pd.DataFrame:
    """The objective by parameter value (categorical, or few values) or by quantile bin."""
    column = done[param]
    if param_kind(column) != "categorical" and column.nunique() > _MARGINAL_BINS:
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
