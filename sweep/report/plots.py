"""Report figures: the homework's heat map, learning curves, over-fitting, best so far.

Every function returns a ``matplotlib.figure.Figure`` and never shows it; they are built on
``Figure`` directly (no pyplot state). Optuna's plots are in sweep.report.optuna_plots.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

from sweep.schema import GAP, TEST_ACCURACY, TRAINING_ACCURACY, TRAINING_SECONDS, VALIDATION_ACCURACY
from sweep.words import plural, show_number

SIZE = (8.0, 6.0)  # inches
DPI = 120
_MAX_TICKS = 12  # distinct grid values on a heat-map axis that each get a tick
_LABELS = {
    "batch_size": "mini-batch size m (examples)",
    "eta": "learning rate η",
    "lmbda": "L2 regularisation λ",
    "hidden": "hidden units per layer",
    "hidden2": "units of the second hidden layer",
    "depth": "hidden layers",
    "epochs": "epochs",
    TRAINING_SECONDS: "training time (s)",
    GAP: "gap (training − validation accuracy)",
}


def axis_label(name: str) -> str:
    """A readable axis label for a parameter or metric name."""
    return _LABELS.get(name, name.replace("_", " "))


def _figure(size: tuple[float, float] = SIZE) -> Figure:
    return Figure(figsize=size, dpi=DPI, layout="constrained")


def to_png(figure: Figure) -> bytes:
    """The figure as PNG bytes (legends placed outside the axes included)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def has_data(figure: Figure) -> bool:
    """Whether any axes of the figure draws something (lines, points, bars, images)."""
    return any(ax.lines or ax.collections or ax.patches or ax.images for ax in figure.axes)


def collect(makers: Mapping[str, Callable[[], Figure]]) -> tuple[dict[str, Figure], dict[str, str]]:
    """Make each figure; one that fails is left out and its reason kept: (figures, {name: why})."""
    figures, skipped = {}, {}
    for name, make in makers.items():
        try:
            figures[name] = make()
        except Exception as exc:  # one plot that cannot be drawn must not cost the whole report
            skipped[name] = str(exc) or type(exc).__name__
    return figures, skipped


def heatmap_scatter(
    trials: pd.DataFrame,
    x: str,
    y: str,
    value: str,
    *,
    direction: str = "maximize",
    log_x: bool = False,
    log_y: bool = False,
    label: str | None = None,
    title: str | None = None,
) -> Figure:
    """The homework's figure: each trial at (x, y) coloured by ``value`` (named ``label``), the best marked.

    The best point is annotated as the homework did, (x, y, value), an accuracy in
    per cent. Other trials (pruned, failed, running: Optuna gives a pruned trial its
    last intermediate value) are drawn as grey crosses. A linear axis with at most
    ``_MAX_TICKS`` distinct values gets a tick at each. Raises ValueError when no
    completed trial has x, y and the value.
    """
    name = axis_label(label or value)
    complete = (trials["state"] == TrialState.COMPLETE.name) & trials[value].notna()
    scored = trials[complete].dropna(subset=[x, y])
    if scored.empty:
        raise ValueError(f"no completed trial has {x}, {y} and {value}")
    unscored = trials[~complete].dropna(subset=[x, y])
    best = scored.loc[scored[value].idxmax() if direction == "maximize" else scored[value].idxmin()]
    fig = _figure()
    ax = fig.subplots()
    ax.set_xscale("log" if log_x else "linear")
    ax.set_yscale("log" if log_y else "linear")
    _trial_points(fig, ax, scored, unscored, (x, y, value), name)
    ax.scatter(
        [best[x]],
        [best[y]],
        marker="*",
        s=400,
        c="red",
        edgecolors="black",
        linewidths=0.8,
        zorder=3,
        label=f"best: trial #{best['number']}, annotated ({x}, {y}, {name})",
    )
    ax.margins(0.08)
    rows = sorted(pd.unique(scored[y]))
    _annotate(
        ax,
        best[x],
        best[y],
        f"({show_number(best[x])}, {show_number(best[y])}, {_metric(label or value, best[value])})",
        rows if len(rows) <= _MAX_TICKS else (),
    )
    for axis, column, log in ((ax.xaxis, x, log_x), (ax.yaxis, y, log_y)):
        values = sorted(pd.unique(scored[column]))
        if not log and len(values) <= _MAX_TICKS:
            axis.set_ticks(values, [show_number(v) for v in values])
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.set_title(title or f"{name} by {x} and {y}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2, fontsize="small", frameon=False)
    ax.grid(alpha=0.3)
    return fig


def _trial_points(
    fig: Figure, ax, scored: pd.DataFrame, unscored: pd.DataFrame, columns: tuple[str, str, str], name: str
) -> None:
    """The heat map's trials: the scored ones coloured by their value (its colour bar named
    ``name``), the others as grey crosses beneath. ``columns``: x, y and the value."""
    x, y, value = columns
    points = ax.scatter(
        scored[x],
        scored[y],
        c=scored[value],
        cmap="viridis",
        s=_marker_size(len(scored)),
        edgecolors="white",
        linewidths=0.5,
        zorder=2,
    )
    if not unscored.empty:
        ax.scatter(
            unscored[x],
            unscored[y],
            marker="x",
            c="0.6",
            s=30,
            linewidths=1,
            zorder=1,
            label="not completed (pruned or failed)",
        )
    fig.colorbar(points, ax=ax).set_label(name)


def _metric(name: str, value: float) -> str:
    """A metric's value as the homework wrote it: an accuracy (a fraction) in per cent."""
    if "accuracy" in name and 0 <= value <= 1:
        return f"{100 * value:.3g} %"
    return f"{value:.4g}"


def _marker_size(n: int) -> float:
    """Point area (pt²): large for a homework-sized grid, smaller as points crowd."""
    return float(min(220, max(25, 20000 / n)))


def _annotate(ax, x: float, y: float, text: str, rows: Sequence[float] = ()) -> None:
    """A boxed note pointing at (x, y), placed towards the middle of the axes so it stays inside.

    With ``rows`` (the y values of a grid) the note sits halfway to the next row, between
    the points rather than over them.
    """
    ax.autoscale_view()
    fx, fy = ax.transAxes.inverted().transform(ax.transData.transform((x, y)))
    dx, dy = (-1 if fx > 0.5 else 1), (-1 if fy > 0.5 else 1)
    beyond = [row for row in rows if (row - y) * dy > 0]
    if beyond:
        nearest = min(beyond, key=lambda row: abs(row - y))
        between = (y * nearest) ** 0.5 if ax.get_yscale() == "log" else (y + nearest) / 2
        place = {"xytext": (dx * 12, between), "textcoords": ("offset points", "data"), "va": "center"}
    else:
        place = {"xytext": (dx * 30, dy * 30), "textcoords": "offset points", "va": "top" if dy < 0 else "bottom"}
    ax.annotate(
        text,
        xy=(x, y),
        ha="right" if dx < 0 else "left",
        fontsize="small",
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.5", "alpha": 0.9},
        arrowprops={"arrowstyle": "->", "color": "0.2"},
        zorder=4,
        **place,
    )


def best_curves(epochs: pd.DataFrame, trial_number: int, *, title: str | None = None) -> Figure:
    """Two panels per epoch, like the homework: cost and accuracy, training and validation.

    Raises ValueError when the trial has no recorded epochs.
    """
    rows = epochs[epochs["trial"] == trial_number].sort_values("epoch")
    if rows.empty:
        raise ValueError(f"trial {trial_number} has no recorded epochs")
    fig = _figure((12.0, 5.0))
    panels = fig.subplots(1, 2)
    for ax, kind, unit in (
        (panels[0], "cost", "cost (mean per example, with L2 term)"),
        (panels[1], "accuracy", "accuracy (fraction correct)"),
    ):
        for part, style in (("training", "-o"), ("validation", "--s")):
            curve = rows[f"{part}_{kind}"]
            if curve.notna().any():
                ax.plot(rows["epoch"], curve, style, markersize=4, label=part)
        if not ax.lines:
            ax.text(0.5, 0.5, f"{kind} not monitored", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.set_title(kind.capitalize())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    accuracy = rows[VALIDATION_ACCURACY]
    if accuracy.notna().any():
        at, epoch = accuracy.idxmax(), rows["epoch"][accuracy.idxmax()]
        late = epoch > rows["epoch"].median()
        panels[1].annotate(
            f"best validation {accuracy[at]:.4f} (epoch {epoch})",
            xy=(epoch, accuracy[at]),
            xytext=(-10 if late else 10, -30),
            textcoords="offset points",
            ha="right" if late else "left",
            fontsize="small",
            arrowprops={"arrowstyle": "->", "color": "0.3"},
        )
    fig.suptitle(title or f"Trial #{trial_number}: learning curves")
    return fig


def best_so_far(
    trials: pd.DataFrame,
    value: str = "value",
    *,
    direction: str = "maximize",
    label: str | None = None,
    title: str | None = None,
) -> Figure:
    """The best objective value so far over wall time (minutes), a step at each new best; every
    completed trial as a dot, and the test accuracy of the trial that was best at each moment.

    Selection is by ``value`` alone: the test accuracy is only read off the trial it chose.
    Raises ValueError when no completed trial has an end time.
    """
    done = trials[(trials["state"] == TrialState.COMPLETE.name)].dropna(subset=[value, "ended_after"])
    if done.empty:
        raise ValueError("no completed trial with an end time")
    done = done.sort_values(["ended_after", "number"])
    minutes = done["ended_after"] / 60
    running = done[value].cummax() if direction == "maximize" else done[value].cummin()
    chosen = done.loc[(done[value] == running)].drop_duplicates(subset=[value], keep="first")
    # the test accuracy of the trial chosen at each moment: its row's, carried to the next choice
    chosen_test = (
        done.index.to_series().where(done.index.isin(chosen.index)).ffill().map(done[TEST_ACCURACY])
        if TEST_ACCURACY in done
        else None
    )
    name = axis_label(label or value)
    fig = _figure((9.0, 5.0))
    ax = fig.subplots()
    ax.scatter(minutes, done[value], s=14, c="0.7", zorder=1, label=f"{name} of each completed trial")
    ax.step(minutes, running, where="post", color="tab:blue", linewidth=2, zorder=2, label=f"best {name} so far")
    if chosen_test is not None and chosen_test.notna().any():
        ax.step(
            minutes,
            chosen_test,
            where="post",
            color="tab:orange",
            linestyle="--",
            zorder=2,
            label="test accuracy of that trial",
        )
    last = chosen.iloc[-1]
    ax.annotate(
        f"#{int(last['number'])}: {last[value]:.4g} at {last['ended_after'] / 60:.1f} min",
        xy=(last["ended_after"] / 60, last[value]),
        xytext=(10, -25),
        textcoords="offset points",
        fontsize="small",
        arrowprops={"arrowstyle": "->", "color": "0.3"},
    )
    shown = pd.concat([running, chosen_test]) if chosen_test is not None else running
    low, high = shown.min(), shown.max()
    if high > low:  # zoom on the curves: the early poor trials would flatten the part that matters
        ax.set_ylim(low - 0.3 * (high - low), high + 0.3 * (high - low))
    ax.set_xlabel("wall time since the first trial started (min)")
    ax.set_ylabel(name)
    ax.set_title(title or f"Best {name} so far")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def overfitting(
    trials: pd.DataFrame,
    top: int = 10,
    *,
    by: str = "value",
    direction: str = "maximize",
    label: str | None = None,
    gap_threshold: float = 0.05,
) -> Figure:
    """Training vs validation accuracy of the ``top`` trials by ``by``, each pair joined and its gap written.

    Pairs whose gap exceeds ``gap_threshold`` are drawn in red. Raises ValueError when
    no completed trial has both accuracies.
    """
    complete = trials[trials["state"] == TrialState.COMPLETE.name]
    known = complete.dropna(subset=[by, TRAINING_ACCURACY, VALIDATION_ACCURACY])
    ranked = known.sort_values([by, "number"], ascending=[direction == "minimize", True]).head(top)
    if ranked.empty:
        raise ValueError("no completed trial has both training and validation accuracy")
    rows = range(len(ranked), 0, -1)  # the best at the top
    train, valid = ranked[TRAINING_ACCURACY], ranked[VALIDATION_ACCURACY]
    gaps = train - valid
    colours = ["tab:red" if gap > gap_threshold else "0.6" for gap in gaps]
    fig = _figure((8.0, max(3.5, 1.5 + 0.45 * len(ranked))))
    ax = fig.subplots()
    ax.hlines(list(rows), valid, train, colors=colours, linewidths=3, zorder=1)
    ax.scatter(train, rows, marker="o", s=50, c="tab:blue", zorder=2, label="training")
    ax.scatter(valid, rows, marker="D", s=45, c="tab:orange", zorder=2, label="validation")
    for row, t, v, gap in zip(rows, train, valid, gaps):
        ax.annotate(
            f"gap {gap:+.3f}",
            xy=(max(t, v), row),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize="small",
        )
    name = axis_label(label or by)
    ax.set_yticks(list(rows), [f"#{n}  {name} {v:.4g}" for n, v in zip(ranked["number"], ranked[by])])
    ax.margins(x=0.2)
    ax.set_xlabel("accuracy (fraction correct)")
    ax.set_title(f"Over-fitting of the top {plural(len(ranked), 'trial')} by {name}")
    ax.grid(axis="x", alpha=0.3)
    handles = [
        *ax.get_legend_handles_labels()[0],
        Line2D([], [], color="tab:red", linewidth=3, label=f"gap > {gap_threshold:g}"),
    ]
    ax.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08 - 0.5 / len(ranked)), ncols=3, frameon=False
    )
    return fig
