"""Trials and epochs frames, and the best region, on in-memory studies with hand-made numbers.

The builders here are shared with test_plots and test_refine.
"""

import math
from datetime import datetime, timedelta

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweep.report.region import best_region, study_region
from sweep.report.tables import (
    METRIC_COLUMNS,
    epochs_frame,
    objective_names,
    param_columns,
    trials_frame,
    value_columns,
)
from sweep.schema import RESULT_ATTR, SPEC_ATTR

N = 20  # completed trials 0..19 with value i
DISTRIBUTIONS = {
    "x": IntDistribution(0, 19),
    "lr": FloatDistribution(1e-3, 1.0, log=True),
    "act": CategoricalDistribution(["a", "b"]),
}


def history(n_epochs: int, final: float, gap: float) -> dict:
    """A rising validation accuracy ending at ``final``, training ``gap`` above it at the end."""
    epochs = list(range(1, n_epochs + 1))
    valid = [final - 0.1 * (n_epochs - e) for e in epochs]
    return {
        "epoch": epochs,
        "training_cost": [1.0 / e for e in epochs],
        "validation_cost": [1.2 / e for e in epochs],
        "training_accuracy": [v + gap * e / n_epochs for v, e in zip(valid, epochs)],
        "validation_accuracy": valid,
        "seconds": [0.5] * n_epochs,
    }


def result(i: int, n_epochs: int = 3) -> dict:
    """Trial i: validation accuracy 0.5 + i/100, gap i/200 (over 0.05 from i = 11)."""
    h = history(n_epochs, 0.5 + i / 100, i / 200)
    metrics = {
        key: h[key][-1] for key in ("training_cost", "training_accuracy", "validation_cost", "validation_accuracy")
    }
    metrics.update(
        best_validation_accuracy=max(h["validation_accuracy"]),
        gap=i / 200,
        test_accuracy=0.4 + i / 100,
        training_seconds=1.5,
        epochs_run=n_epochs,
    )
    return {"metrics": metrics, "history": h}


def params(i: int) -> dict:
    return {"x": i, "lr": 0.001 * 1.4**i, "act": "a" if i % 2 == 0 else "b"}


def make_study(
    n_objectives: int = 1,
    direction: str = "maximize",
    pruned_and_failed: bool = True,
    objectives=("validation_accuracy", "training_seconds"),
) -> optuna.Study:
    """N completed trials (value i; a second objective N - i), then one pruned and one failed trial."""
    study = optuna.create_study(directions=[direction] * n_objectives)
    study.set_user_attr(
        SPEC_ATTR, {"objective": [{"metric": m, "direction": direction} for m in objectives[:n_objectives]]}
    )
    for i in range(N):
        values = [float(i), float(N - i)][:n_objectives]
        study.add_trial(
            optuna.create_trial(
                params=params(i), distributions=DISTRIBUTIONS, values=values, user_attrs={RESULT_ATTR: result(i)}
            )
        )
    if pruned_and_failed:
        pruned = result(5, n_epochs=2)
        pruned.update(reason="pruned at epoch 2", pruned_at_epoch=2)
        del pruned["metrics"]["test_accuracy"]
        intermediate = {1: 0.3, 2: 0.4} if n_objectives == 1 else None
        study.add_trial(
            optuna.create_trial(
                params=params(5),
                distributions=DISTRIBUTIONS,
                state=TrialState.PRUNED,
                intermediate_values=intermediate,
                user_attrs={RESULT_ATTR: pruned},
            )
        )
        failed = {"reason": "RuntimeError: boom", "history": history(0, 0, 0)}
        study.add_trial(
            optuna.create_trial(
                params=params(7), distributions=DISTRIBUTIONS, state=TrialState.FAIL, user_attrs={RESULT_ATTR: failed}
            )
        )
    return study


@pytest.fixture
def study():
    return make_study()


def test_trials_frame_rows_columns_and_types(study):
    frame = trials_frame(study)
    assert list(frame.columns) == [
        "number",
        "state",
        "value",
        "x",
        "lr",
        "act",
        *METRIC_COLUMNS,
        "overfit",
        "epochs_run",
        "seconds",
        "ended_after",
        "pruned_at_epoch",
        "reason",
    ]
    assert len(frame) == N + 2
    assert frame["state"].value_counts().to_dict() == {"COMPLETE": N, "PRUNED": 1, "FAIL": 1}
    assert frame["value"].iloc[:N].tolist() == list(range(N))
    assert str(frame["x"].dtype) == "Int64" and str(frame["epochs_run"].dtype) == "Int64"
    row = frame.set_index("number").loc[12]
    assert row["validation_accuracy"] == pytest.approx(0.62)
    assert row["gap"] == pytest.approx(0.06) and row["seconds"] == 1.5 and row["epochs_run"] == 3
    assert row["test_accuracy"] == pytest.approx(0.52)


def test_pruned_and_failed_trials_keep_what_they_have(study):
    frame = trials_frame(study).set_index("number")
    pruned, failed = frame.loc[N], frame.loc[N + 1]
    assert pruned["state"] == "PRUNED" and pruned["pruned_at_epoch"] == 2 and pruned["epochs_run"] == 2
    assert pruned["reason"] == "pruned at epoch 2" and math.isnan(pruned["test_accuracy"])
    assert failed["state"] == "FAIL" and failed["reason"] == "RuntimeError: boom"
    assert math.isnan(failed["validation_accuracy"]) and pd.isna(failed["epochs_run"]) and pd.isna(failed["overfit"])


def test_overfit_flag_follows_the_threshold(study):
    frame = trials_frame(study).iloc[:N]
    assert frame["overfit"].tolist() == [i > 10 for i in range(N)]  # gap i/200 > 0.05
    assert trials_frame(study, gap_threshold=0.09).iloc[:N]["overfit"].tolist() == [i > 18 for i in range(N)]


def test_parameter_named_like_a_metric_gets_a_prefix():
    study = optuna.create_study()
    study.add_trial(
        optuna.create_trial(
            params={"gap": 1.0, "eta": 0.1},
            value=0.5,
            distributions={"gap": FloatDistribution(0, 2), "eta": FloatDistribution(0.01, 1)},
        )
    )
    assert param_columns(study) == {"gap": "param_gap", "eta": "eta"}
    frame = trials_frame(study)
    assert frame["param_gap"].tolist() == [1.0] and frame["gap"].isna().all()


def test_epochs_frame_long_format(study):
    frame = epochs_frame(study)
    assert list(frame.columns) == [
        "trial",
        "epoch",
        "training_cost",
        "training_accuracy",
        "validation_cost",
        "validation_accuracy",
        "seconds",
    ]
    assert len(frame) == N * 3 + 2  # three epochs per completed trial, two for the pruned one, none failed
    trial = frame[frame["trial"] == 4]
    assert trial["epoch"].tolist() == [1, 2, 3]
    assert trial["validation_accuracy"].tolist() == pytest.approx([0.34, 0.44, 0.54])
    assert frame[frame["trial"] == N]["epoch"].tolist() == [1, 2]


def test_epochs_frame_keeps_unmonitored_curves_as_nan():
    study = optuna.create_study()
    h = history(2, 0.9, 0.0)
    h["training_accuracy"] = [None, None]
    study.add_trial(
        optuna.create_trial(params={}, distributions={}, value=0.9, user_attrs={RESULT_ATTR: {"history": h}})
    )
    assert epochs_frame(study)["training_accuracy"].isna().all()


def test_best_region_top_ten_percent_by_hand(study):
    frame = trials_frame(study)
    region = best_region(frame, "value", "maximize", 0.10, ["x", "lr", "act"])
    # 20 completed trials, 10% -> the top 2: values 19 and 18
    assert region.support == 2 and region.n_complete == N
    assert region.trials == (19, 18) and region.best_trial == 19
    assert region.best_value == 19 and region.threshold == 18
    x = region.params["x"]
    assert (x.kind, x.low, x.high, x.median, x.best) == ("int", 18, 19, 18.5, 19)
    lr = region.params["lr"]
    assert lr.kind == "float" and lr.low == pytest.approx(0.001 * 1.4**18)
    assert lr.high == pytest.approx(0.001 * 1.4**19) and lr.best == pytest.approx(0.001 * 1.4**19)
    act = region.params["act"]
    assert (act.kind, act.low, act.best, dict(act.values)) == ("categorical", None, "b", {"a": 1, "b": 1})
    # gaps 18/200 and 19/200, both over 0.05
    assert region.gap_mean == pytest.approx(0.0925) and region.gap_max == pytest.approx(0.095)
    assert region.n_overfit == 2


def test_best_region_minimize_and_quantile_bounds(study):
    frame = trials_frame(study)
    low = best_region(frame, "value", "minimize", 0.25, ["x"])
    assert low.trials == (0, 1, 2, 3, 4) and low.params["x"].high == 4 and low.best_value == 0
    assert best_region(frame, "value", "maximize", 0.001, ["x"]).support == 1  # at least one trial
    everything = best_region(frame, "value", "maximize", 1.0, ["x"])
    assert everything.support == N and (everything.params["x"].low, everything.params["x"].high) == (0, 19)
    assert best_region(frame, "value", "maximize", 0.3, ["x"]).support == 6  # 0.3 * 20, not 7 from rounding
    with pytest.raises(ValueError, match="quantile"):
        best_region(frame, "value", "maximize", 0.0, ["x"])


def test_marginals_by_quantile_bin_and_by_value(study):
    region = best_region(trials_frame(study), "value", "maximize", 0.10, ["x", "act"])
    x = region.marginals["x"]  # 20 distinct values -> 5 bins of 4
    assert x["count"].tolist() == [4] * 5
    assert x["mean"].tolist() == pytest.approx([1.5, 5.5, 9.5, 13.5, 17.5])
    assert x["max"].tolist() == [3, 7, 11, 15, 19]
    act = region.marginals["act"]
    assert act.loc["a"].tolist() == pytest.approx([10, 9, 0, 18]) and act.loc["b"].tolist() == pytest.approx(
        [10, 10, 1, 19]
    )


def test_region_table_and_summary(study):
    region = best_region(trials_frame(study), "value", "maximize", 0.10, ["x", "act"])
    table = region.table()
    assert list(table.columns) == ["param", "kind", "low", "high", "median", "best", "values", "support"]
    assert table["param"].tolist() == ["x", "act"] and (table["support"] == 2).all()
    assert table.iloc[0][["low", "high", "best"]].tolist() == [18, 19, 19]
    assert set(table.iloc[1]["values"].split(", ")) == {"a ×1", "b ×1"}
    text = region.summary()
    assert "top 10% of 20 completed trials" in text and "Best trial #19" in text
    assert "18 .. 19" in text and "gap" in text


def test_best_region_needs_a_completed_trial():
    study = make_study()
    frame = trials_frame(study)
    with pytest.raises(ValueError, match="no completed"):
        best_region(frame[frame["state"] != "COMPLETE"], "value", "maximize", 0.1, ["x"])


def trade_off_study() -> optuna.Study:
    """Accuracy (maximize) against seconds (minimize): trials 0, 1 and 3 are the Pareto front,
    2 is dominated by 0, 4 by 1 and 3; then a pruned trial."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(
        SPEC_ATTR,
        {
            "objective": [
                {"metric": "validation_accuracy", "direction": "maximize"},
                {"metric": "training_seconds", "direction": "minimize"},
            ]
        },
    )
    for i, values in enumerate([(0.9, 5.0), (0.8, 2.0), (0.85, 6.0), (0.7, 1.0), (0.7, 3.0)]):
        study.add_trial(
            optuna.create_trial(
                params=params(i), distributions=DISTRIBUTIONS, values=list(values), user_attrs={RESULT_ATTR: result(i)}
            )
        )
    study.add_trial(optuna.create_trial(params=params(5), distributions=DISTRIBUTIONS, state=TrialState.PRUNED))
    return study


def test_multi_objective_columns_and_pareto_column():
    study = make_study(n_objectives=2)
    assert value_columns(study) == ["value_0", "value_1"]
    assert objective_names(study) == ["validation_accuracy", "training_seconds"]
    frame = trials_frame(study)
    assert list(frame.columns[:6]) == ["number", "state", "value_0", "value_1", "pareto", "x"]
    assert frame["value_1"].iloc[:N].tolist() == [N - i for i in range(N)]
    assert str(frame["pareto"].dtype) == "boolean"
    assert frame["pareto"].tolist() == [True] * N + [False, False]  # i against N - i, both maximized
    assert "pareto" not in trials_frame(make_study())  # single objective: no such column


def test_pareto_region_is_the_front():
    study = trade_off_study()
    frame = trials_frame(study)
    assert frame.loc[frame["pareto"], "number"].tolist() == [0, 1, 3]
    region = study_region(study, frame, 0.10)
    assert region.front == (("validation_accuracy", "maximize"), ("training_seconds", "minimize"))
    # every trial of the front, whatever the quantile, best accuracy first
    assert region.trials == (0, 1, 3) and region.support == 3 and region.n_complete == 5
    assert study_region(study, frame, 0.9).trials == region.trials
    assert region.best_trial == 0 and region.best_value == 0.9
    x = region.params["x"]
    assert (x.low, x.high, x.median, x.best) == (0, 3, 1, 0)
    assert dict(region.params["act"].values) == {"a": 1, "b": 2}
    assert sum(region.marginals["x"]["count"]) == 5  # the marginals are over every completed trial
    text = region.summary()
    assert "Pareto front of 5 completed trials" in text and "(#0, #1, #3)" in text
    assert "top 10%" not in text and "single-objective studies only" in text


def test_pareto_region_when_one_trial_dominates():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, values in enumerate([(0.9, 1.0), (0.8, 2.0), (0.7, 3.0)]):
        study.add_trial(
            optuna.create_trial(
                params=params(i), distributions=DISTRIBUTIONS, values=list(values), user_attrs={RESULT_ATTR: result(i)}
            )
        )
    region = study_region(study, trials_frame(study))
    assert region.trials == (0,) and region.params["x"].low == region.params["x"].high == 0


def test_objective_names_without_stored_settings():
    assert objective_names(optuna.create_study()) == ["value"]
    assert objective_names(optuna.create_study(directions=["maximize", "minimize"])) == ["value_0", "value_1"]


def test_ended_after_is_the_wall_time_from_the_first_start():
    """Seconds from the earliest trial start to each trial's end; a running trial has none."""
    study = optuna.create_study()
    t0 = datetime(2026, 1, 1, 12, 0, 0)
    for number, (start, end, state) in enumerate(
        [(5, 65, TrialState.COMPLETE), (0, 30, TrialState.COMPLETE), (40, None, TrialState.RUNNING)]
    ):
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=number,
                trial_id=number,
                state=state,
                value=0.5 if end else None,
                values=None,
                datetime_start=t0 + timedelta(seconds=start),
                datetime_complete=t0 + timedelta(seconds=end) if end else None,
                params={},
                distributions={},
                user_attrs={},
                system_attrs={},
                intermediate_values={},
            )
        )
    frame = trials_frame(study).set_index("number")
    assert frame["ended_after"].tolist()[:2] == [65.0, 30.0]
    assert pd.isna(frame.loc[2, "ended_after"])
