"""Optuna's plots of a study, as report figures.

Optuna's plots draw through pyplot: they are made under the Agg backend, inside an rc context
that undoes the style they set, and closed in pyplot afterwards (a closed figure still saves).
A plot that cannot be drawn is left out, with the reason Optuna gave.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import optuna
from matplotlib import pyplot as plt  # (its backend: Agg where the CLI runs, see sweep.cli.commands)
from matplotlib.figure import Figure
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState
from optuna.visualization import matplotlib as optuna_mpl

from sweep.report.plots import DPI, SIZE, axis_label, collect, has_data

_MAX_LEGEND = 15  # entries; more and a legend hides the plot


def optuna_plots(
    study: optuna.Study, objective_names: Sequence[str] | None = None
) -> tuple[dict[str, Figure], dict[str, str]]:
    """Optuna's matplotlib plots of the study: (figures by name, {name: why left out}).

    A multi-objective study is shown on its first objective (as its best region is)
    and gets its Pareto front as well (2 or 3 objectives).
    """
    names = list(
        objective_names
        or (
            ["Objective Value"]
            if len(study.directions) == 1
            else [f"Objective {i}" for i in range(len(study.directions))]
        )
    )
    multi = len(names) > 1
    first = {"target": (lambda t: t.values[0]) if multi else None, "target_name": names[0]}

    def importances():
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < 2:
            raise ValueError("needs at least 2 completed trials")
        if len({name for t in done for name in t.params}) < 2:
            raise ValueError("needs at least 2 searched parameters")
        # PED-ANOVA takes a target as something to minimise: turn a maximised objective round.
        sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
        target = None if not multi else (lambda t: sign * t.values[0])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes", category=UserWarning)
            # too few trials for its quantiles: every importance would be drawn equal
            warnings.filterwarnings("error", message="Target and region quantiles select", category=UserWarning)
            try:
                return optuna_mpl.plot_param_importances(study, target=target, target_name=names[0])
            except UserWarning:
                raise ValueError("too few completed trials to tell the parameters' importances apart") from None

    def contour():
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        names = dict.fromkeys(name for t in done for name in t.params)
        varied = [name for name in names if len({repr(t.params.get(name)) for t in done if name in t.params}) > 1]
        if len(varied) < 2:
            raise ValueError("needs 2 parameters that each took 2 values or more in completed trials")
        return optuna_mpl.plot_contour(study, params=varied, **first)

    makers = {
        "history": (lambda: optuna_mpl.plot_optimization_history(study, **first), None),
        "importances": (importances, None),
        "contour": (contour, _grow),
        "parallel_coordinate": (lambda: optuna_mpl.plot_parallel_coordinate(study, **first), None),
        "slice": (lambda: optuna_mpl.plot_slice(study, **first), _grow),
    }
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):  # (reported only when pruning)
        makers["intermediate_values"] = (
            lambda: optuna_mpl.plot_intermediate_values(study),
            lambda figure: _per_epoch(figure, names[0]),
        )
    if multi:
        makers["pareto_front"] = (lambda: optuna_mpl.plot_pareto_front(study, target_names=names), None)
    return collect({name: _optuna_figure(draw, finish) for name, (draw, finish) in makers.items()})


def _optuna_figure(draw: Callable[[], object], finish: Callable[[Figure], None] | None) -> Callable[[], Figure]:
    """``draw`` (an Optuna plot, returning Axes or an array of them), then ``finish``, as a Figure maker.

    Optuna's ExperimentalWarning and matplotlib's warnings about degenerate data are
    silenced, and Optuna's logged warnings kept: a plot with nothing on it raises
    ValueError with them as the reason.
    """

    def make() -> Figure:
        before = set(plt.get_fignums())
        try:
            with _optuna_warnings() as said, plt.rc_context({"figure.figsize": SIZE, "figure.dpi": DPI}):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    # matplotlib's complaints about degenerate data (one trial, one value) as Optuna draws it
                    warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna\.visualization")
                    axes = draw()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        finally:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
        if not has_data(figure):
            raise ValueError("; ".join(said) or "nothing to plot")
        if finish is not None:
            finish(figure)
        return figure

    return make


def _grow(figure: Figure) -> None:
    """Give grids of subplots (contour, slice) room: about 3 inches per panel."""
    rows, cols = figure.axes[0].get_subplotspec().get_gridspec().get_geometry()
    width, height = figure.get_size_inches()
    figure.set_size_inches(max(width, 3.2 * cols), max(height, 3.0 * rows))


def _per_epoch(figure: Figure, objective: str) -> None:
    """Intermediate values are the objective after each epoch; a legend of every trial says nothing."""
    ax = figure.axes[0]
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{axis_label(objective)} (reported each epoch)")
    legend = ax.get_legend()
    if legend is not None and len(legend.get_texts()) > _MAX_LEGEND:
        legend.remove()


@contextmanager
def _optuna_warnings() -> Iterator[list[str]]:
    """Collect what Optuna logs as warnings instead of letting it reach the console."""
    logger, said = logging.getLogger("optuna"), []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [Keep(logging.WARNING)], False
    try:
        yield said
    finally:
        logger.handlers, logger.propagate = saved
