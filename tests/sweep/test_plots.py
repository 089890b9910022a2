"""Every figure of a report is drawn, for single- and multi-objective studies, and written to disk."""

import matplotlib
import optuna
import pandas as pd
import pytest
from matplotlib import pyplot as plt
from optuna.distributions import FloatDistribution

from sweep.errors import UsageError
from sweep.report import optuna_plots, plots
from sweep.report.files import write_report
from sweep.report.tables import epochs_frame, trials_frame
from tests.sweep.test_report import N, make_study

PNG = b"\x89PNG\r\n\x1a\n"
OPTUNA_SINGLE = {"history", "importances", "contour", "parallel_coordinate", "slice", "intermediate_values"}


@pytest.fixture(params=[1, 2], ids=["single", "multi"])
def study(request):
    return make_study(n_objectives=request.param)


@pytest.fixture
def no_optuna_plots(monkeypatch):
    """write_report without Optuna's figures (the slow part), for tests of what else it writes:
    test_write_report_writes_every_file draws them all."""
    monkeypatch.setattr(optuna_plots, "optuna_plots", lambda study, names=None: ({}, {}))


@pytest.fixture
def no_plots(monkeypatch, no_optuna_plots):
    """write_report with its CSV and summary files alone, for tests of how it writes them."""
    monkeypatch.setattr(plots, "collect", lambda makers: ({}, {}))


def drawn(figure) -> bool:
    return plots.has_data(figure) and len(plots.to_png(figure)) > 1000


def test_heatmap_scatter(study):
    trials = trials_frame(study)
    value = "value" if "value" in trials else "value_0"
    figure = plots.heatmap_scatter(trials, "x", "lr", value, log_y=True, label="validation_accuracy")
    assert drawn(figure)
    ax = figure.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "log")
    assert ax.get_xlabel() == "x" and ax.get_title()
    assert figure.axes[1].get_ylabel() == "validation accuracy"  # the colour bar
    notes = [child.get_text() for child in ax.texts]
    assert notes == [f"(19, {0.001 * 1.4**19:.4g}, 19)"]  # the best (x, lr, value): not a fraction, no per cent
    assert any("not completed" in text.get_text() for text in ax.get_legend().get_texts())


def test_heatmap_scatter_minimize_marks_the_lowest():
    trials = trials_frame(make_study(direction="minimize"))
    figure = plots.heatmap_scatter(trials, "x", "lr", "value", direction="minimize")
    assert [text.get_text() for text in figure.axes[0].texts] == ["(0, 0.001, 0)"]


def test_heatmap_scatter_of_a_grid_reads_like_the_homeworks_figure():
    """The best point annotated (batch, eta, accuracy %), between two rows of points; a tick at every grid value."""
    grid = [(m, eta) for m in (5, 6, 7) for eta in (0.08, 0.09, 0.1)]
    accuracy = [0.938 if (m, eta) == (6, 0.09) else 0.9 for m, eta in grid]
    trials = pd.DataFrame(
        {
            "number": range(9),
            "state": "COMPLETE",
            "batch_size": [m for m, _ in grid],
            "eta": [eta for _, eta in grid],
            "validation_accuracy": accuracy,
        }
    )
    ax = plots.heatmap_scatter(trials, "batch_size", "eta", "validation_accuracy").axes[0]
    [note] = ax.texts
    assert note.get_text() == "(6, 0.09, 93.8 %)"
    assert 0.08 < note.xyann[1] < 0.09 or 0.09 < note.xyann[1] < 0.1
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "6", "7"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.08", "0.09", "0.1"]


def test_heatmap_scatter_without_completed_trials_raises():
    trials = trials_frame(make_study())
    with pytest.raises(ValueError, match="no completed trial"):
        plots.heatmap_scatter(trials[trials["state"] != "COMPLETE"], "x", "lr", "value")


def test_best_curves_two_panels(study):
    figure = plots.best_curves(epochs_frame(study), 19)
    assert drawn(figure)
    cost, accuracy = figure.axes
    assert [len(cost.lines), len(accuracy.lines)] == [2, 2]
    assert cost.get_xlabel() == "epoch" and "accuracy" in accuracy.get_ylabel()
    assert list(accuracy.lines[1].get_ydata()) == pytest.approx([0.49, 0.59, 0.69])


def test_best_curves_of_a_pruned_trial_and_of_none(study):
    assert drawn(plots.best_curves(epochs_frame(study), N))  # the pruned trial's two epochs
    with pytest.raises(ValueError, match="no recorded epochs"):
        plots.best_curves(epochs_frame(study), N + 1)  # the failed one


def test_overfitting_top_trials(study):
    trials = trials_frame(study)
    by = "value" if "value" in trials else "value_0"
    figure = plots.overfitting(trials, top=5, by=by)
    assert drawn(figure)
    labels = [label.get_text() for label in figure.axes[0].get_yticklabels()]
    assert labels[0].startswith("#19") and labels[-1].startswith("#15") and len(labels) == 5
    gaps = [text.get_text() for text in figure.axes[0].texts]
    assert "gap +0.095" in gaps


def test_optuna_plots_single_objective_leave_no_pyplot_state():
    before = dict(matplotlib.rcParams)
    figures, skipped = optuna_plots.optuna_plots(make_study(), ["validation_accuracy"])
    assert plt.get_fignums() == []
    assert dict(matplotlib.rcParams) == before  # Optuna's ggplot style does not leak
    assert set(figures) == OPTUNA_SINGLE and skipped == {}
    assert all(drawn(figure) for figure in figures.values())
    assert figures["intermediate_values"].axes[0].get_xlabel() == "epoch"


def test_optuna_plots_multi_objective_adds_the_pareto_front():
    figures, skipped = optuna_plots.optuna_plots(
        make_study(n_objectives=2), ["validation_accuracy", "training_seconds"]
    )
    assert "pareto_front" in figures and drawn(figures["pareto_front"])
    assert {"history", "importances", "contour", "parallel_coordinate", "slice"} <= set(figures)
    # multi-objective trials report nothing per epoch: no such plot, and nothing said about it
    assert "intermediate_values" not in figures and skipped == {}


def test_optuna_plots_skip_what_cannot_be_drawn():
    study = optuna.create_study()
    study.add_trial(
        optuna.create_trial(params={"eta": 0.1}, distributions={"eta": FloatDistribution(0.01, 1)}, value=0.5)
    )
    figures, skipped = optuna_plots.optuna_plots(study)
    assert set(figures) == {"history", "parallel_coordinate", "slice"}
    assert skipped == {
        "importances": "needs at least 2 completed trials",  # each left out with its reason
        "contour": "needs 2 parameters that each took 2 values or more in completed trials",
    }
    assert "intermediate_values" not in figures | skipped  # nothing reported per epoch (no pruner): not tried
    assert not [why for why in skipped.values() if "pruning feature" in why]


def test_collect_records_failures():
    def broken():
        raise ValueError("not enough trials")

    figures, skipped = plots.collect(
        {"fine": lambda: plots.best_curves(epochs_frame(make_study()), 0), "broken": broken}
    )
    assert set(figures) == {"fine"} and skipped == {"broken": "not enough trials"}


@pytest.mark.parametrize("n_objectives", [1, 2])
def test_write_report_writes_every_file(tmp_path, n_objectives):
    study = make_study(n_objectives=n_objectives)
    out = tmp_path / "reports" / "study"
    report = write_report(study, out, heatmap_params=["x", "lr"])
    names = {path.name for path in report.files}
    optuna_names = OPTUNA_SINGLE if n_objectives == 1 else OPTUNA_SINGLE - {"intermediate_values"} | {"pareto_front"}
    pngs = {
        f"{name}.png" for name in ("heatmap", "best_curves", "overfitting", "best_so_far")[: 3 + (n_objectives == 1)]
    }
    pngs |= {f"optuna_{name}.png" for name in optuna_names}
    assert names == {"trials.csv", "epochs.csv", "region.csv", "summary.txt"} | pngs
    assert sorted(path.name for path in out.iterdir()) == sorted(names)  # no temporary files left
    for path in report.files:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes().startswith(PNG)
    assert len(out.joinpath("trials.csv").read_text().splitlines()) == N + 3  # header, 20 + pruned + failed
    assert len(out.joinpath("epochs.csv").read_text().splitlines()) == N * 3 + 2 + 1
    assert len(out.joinpath("region.csv").read_text().splitlines()) == 1 + 3  # x, lr, act
    summary = out.joinpath("summary.txt").read_text()
    assert "Best trial #19" in summary and f"{N + 2} trials" in summary
    assert report.region.best_trial == 19


def test_write_report_default_heatmap_uses_the_first_two_numeric_params(tmp_path, no_optuna_plots):
    report = write_report(make_study(), tmp_path)
    assert "heatmap" not in report.skipped and (tmp_path / "heatmap.png").stat().st_size > 0


def test_write_report_of_a_study_without_completed_trials(tmp_path):
    study = make_study()
    failed_only = optuna.create_study()
    for trial in study.get_trials(states=(optuna.trial.TrialState.FAIL,)):
        failed_only.add_trial(trial)
    report = write_report(failed_only, tmp_path)
    assert report.region is None and not (tmp_path / "region.csv").exists()
    assert {"heatmap", "best_curves", "overfitting"} <= set(report.skipped)
    assert "No completed trials" in (tmp_path / "summary.txt").read_text()


def test_write_report_unknown_heatmap_param(tmp_path):
    with pytest.raises(UsageError, match="heatmap x nope"):
        write_report(make_study(), tmp_path / "out", heatmap_params=["x", "nope"])
    assert not (tmp_path / "out").exists()


def test_write_report_unwritable_dir(tmp_path, no_plots):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match=f"cannot write reports to {blocker / 'sub'}"):
        write_report(make_study(), blocker / "sub")
    assert blocker.read_text() == "not a directory"


def test_write_report_failing_midway_leaves_no_temporary_files(tmp_path, monkeypatch, no_plots):
    import os

    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(UsageError, match="No space left on device"):
        write_report(make_study(), tmp_path)
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_best_so_far_steps_at_each_new_best_in_wall_time_order():
    """Trials end in another order than their numbers: the curve follows the clock, and the test
    line is the test accuracy of the trial that was best at each moment (chosen by value alone)."""
    trials = pd.DataFrame(
        {
            "number": [0, 1, 2, 3, 4],
            "state": ["COMPLETE"] * 4 + ["PRUNED"],
            "value": [0.90, 0.95, 0.93, 0.97, 0.99],
            "test_accuracy": [0.89, 0.96, 0.99, 0.94, 1.0],
            "ended_after": [60.0, 300.0, 120.0, 240.0, 30.0],
        }
    )
    figure = plots.best_so_far(trials, label="validation_accuracy")
    assert drawn(figure)
    ax = figure.axes[0]
    best, test = ax.lines[0], ax.lines[1]
    assert list(best.get_xdata()) == [1.0, 2.0, 4.0, 5.0]  # minutes; the pruned trial is left out
    assert list(best.get_ydata()) == [0.90, 0.93, 0.97, 0.97]
    assert list(test.get_ydata()) == [0.89, 0.99, 0.94, 0.94]  # not the best test accuracy seen
    assert "#3: 0.97 at 4.0 min" in [text.get_text() for text in ax.texts]
    assert "min" in ax.get_xlabel()


def test_best_so_far_minimize_and_without_completed_trials():
    trials = pd.DataFrame(
        {"number": [0, 1], "state": ["COMPLETE", "FAIL"], "value": [2.0, None], "ended_after": [30.0, 60.0]}
    )
    figure = plots.best_so_far(trials, direction="minimize")
    assert list(figure.axes[0].lines[0].get_ydata()) == [2.0]
    with pytest.raises(ValueError, match="no completed trial"):
        plots.best_so_far(trials.assign(state="FAIL"))
