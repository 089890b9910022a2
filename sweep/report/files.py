"""A study's report on disk: trials.csv, epochs.csv, region.csv, summary.txt and the plots.

Every file is rendered in memory first, then written under a temporary name and renamed into
place, so a failed write leaves the previous report as it was.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from sweep.errors import OptionError, UsageError
from sweep.report import optuna_plots, plots
from sweep.report.region import Region, study_region
from sweep.report.tables import (
    directions,
    epochs_frame,
    log_scaled,
    objective_names,
    param_columns,
    param_kind,
    pareto_columns,
    scalar,
    trials_frame,
    value_columns,
)
from sweep.tracking.summary import best_trials
from sweep.words import plural, show_number


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
    optuna_figures, optuna_skipped = optuna_plots.optuna_plots(study, objective_names(study))
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
        if x == y:
            raise OptionError("heatmap", f"{x} {y}", "needs two different parameters (one for each axis)")
    else:
        numeric = [p for p, c in columns.items() if param_kind(trials[c]) != "categorical"]
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
        setting = ", ".join(f"{p}={show_number(scalar(best[c]))}" for p, c in columns.items())
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
    front = trials.set_index("number", drop=False).loc[[t.number for t in best_trials(study)]]
    lines = [f"Pareto front: {len(front)} trials, best {names[0]} first:"]
    for _, row in front.iterrows():
        scores = "  ".join(f"{name} {row[value]:.4g}" for name, value in zip(names, values))
        setting = " ".join(f"{p}={show_number(scalar(row[c]))}" for p, c in params.items())
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
