"""What the parent run says of a study: counts by state, the best value and trial, the best runs."""

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweep import load_spec
from sweep.tracking.summary import parent_summary
from tests.sweep.conftest import write_study

ETA = {"eta": FloatDistribution(0.0, 1.0)}


def trial(number: int, state=TrialState.COMPLETE, values=None):
    """A finished trial of η = 0.1 + 0.05 × number, whose MLflow run is ``run<number>``."""
    return create_trial(
        state=state,
        values=values,
        params={"eta": 0.1 + 0.05 * number},
        distributions=ETA,
        user_attrs={"mlp_sweep.run_id": f"run{number}"},
    )


def test_one_objective_names_the_best_trial_and_counts_the_states(tmp_path):
    spec = load_spec(write_study(tmp_path / "tiny.toml"))
    study = optuna.create_study(direction="maximize")
    for number, value in enumerate([0.8, 0.9, 0.85]):
        study.add_trial(trial(number, values=[value]))
    study.add_trial(trial(3, TrialState.PRUNED))
    study.add_trial(trial(4, TrialState.FAIL))
    summary = parent_summary(study, spec, "7")
    assert summary["metrics"] == {
        "trials/complete": 3,
        "trials/pruned": 1,
        "trials/failed": 1,
        spec.objectives[0].metric: 0.9,
        "trials/best": 1,
    }
    assert summary["tags"] == {
        "mlp_sweep.best_params": "#0001 eta=0.15",
        "mlp_sweep.best_run": "#/experiments/7/runs/run1?workflowType=machine_learning",
    }
    assert summary["best"] == {"run1": "best"}


def test_two_objectives_mark_the_pareto_front(tmp_path):
    spec = load_spec(write_study(tmp_path / "tiny.toml"))
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number, values in enumerate([[0.9, 2.0], [0.8, 1.0], [0.7, 3.0]]):  # the third is dominated
        study.add_trial(trial(number, values=values))
    summary = parent_summary(study, spec, "7")
    assert summary["metrics"] == {"trials/complete": 3, "trials/pruned": 0, "trials/failed": 0, "trials/pareto": 2}
    assert summary["tags"] == {} and summary["best"] == {"run0": "pareto", "run1": "pareto"}


def test_no_completed_trial_no_best(tmp_path):
    study = optuna.create_study()
    study.add_trial(trial(0, TrialState.PRUNED))
    summary = parent_summary(study, load_spec(write_study(tmp_path / "tiny.toml")), "7")
    assert summary == {
        "metrics": {"trials/complete": 0, "trials/pruned": 1, "trials/failed": 0},
        "tags": {},
        "best": {},
    }
