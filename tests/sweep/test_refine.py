"""Refined studies: narrower ranges around the best trials, finer grids, fewer choices, the best point first."""

import itertools
import math

import optuna
import pytest
from optuna.trial import TrialState

from sweep import load_spec, parse_spec, refine
from sweep.errors import UsageError
from sweep.report.refine import refined_name, write_refined
from sweep.schema import RESULT_ATTR, SPEC_ATTR
from sweep.spec.file import spec_to_dict
from sweep.spec.samplers import grid_key, grid_points
from sweep.spec.space import Categorical, Fixed, FloatRange, IntRange
from sweep.spec.study import suggest
from tests.sweep.conftest import copy_stored, journal_study, run_cli
from tests.sweep.test_report import result

GRID = {
    "name": "grid-toy",
    "objective": [{"metric": "validation_accuracy"}],
    "sampler": {"name": "grid"},
    "train": {"epochs": 3},
    "space": {
        "batch_size": {"type": "int", "low": 4, "high": 40, "step": 4},  # 10 points
        "eta": {"type": "float", "low": 0.1, "high": 1.0, "step": 0.1},  # 10 points
        "lmbda": 0.5,
    },
}
TPE = {
    "name": "tpe-toy",
    "objective": [{"metric": "validation_accuracy"}],
    "sampler": {"name": "tpe", "seed": 3},
    "pruner": {"name": "median"},
    "budget": {"n_trials": 40},
    "train": {"epochs": 3, "sizes": [784, 30, 10]},
    "space": {
        "batch_size": {"type": "categorical", "choices": [10, 20, 50]},
        "eta": {"type": "float", "low": 0.001, "high": 1.0, "log": True},
        "hidden": {"type": "int", "low": 10, "high": 200},
        "activation": {"type": "categorical", "choices": ["relu", "sigmoid"]},
    },
}


def run(spec, score, n_trials=None) -> optuna.Study:
    """The spec's study run on ``score(params)``, each trial storing a minimal result."""
    study = optuna.create_study(study_name=spec.name, directions=spec.directions, sampler=spec.make_sampler())
    study.set_user_attr(SPEC_ATTR, spec_to_dict(spec))
    for _ in range(n_trials or spec.grid_size):
        trial = study.ask()
        params = suggest(spec, trial)
        trial.set_user_attr(RESULT_ATTR, result(0))
        study.tell(trial, score(params))
    return study


def bowl(params) -> float:
    """Best at batch_size 20, eta 0.5: 0.9 there, 1 less one grid step away, 2 less diagonally."""
    return 0.9 - ((params["batch_size"] - 20) / 4) ** 2 - ((params["eta"] - 0.5) * 10) ** 2


@pytest.fixture(scope="module")
def grid():
    spec = parse_spec(GRID, "grid.toml")
    return spec, run(spec, bowl)


def test_grid_by_hand(grid):
    spec, study = grid
    # top 9% of 100 = 9 trials: the best and its 8 neighbours, batch 16..24, eta 0.4..0.6;
    # widened by one step (10% of the range is less), then the finest step giving <= 1.5 x 10 points
    refined = refine(study, spec, 0.09)
    assert refined.space["batch_size"] == IntRange(12, 28, step=2)  # step 1 would give 17 points
    assert refined.space["eta"] == FloatRange(0.3, 0.7, step=0.05)  # 0.025 would give 17
    assert refined.space["lmbda"] == Fixed(0.5)
    assert refined.n_trials == refined.grid_size == 81
    assert [dict(entry) for entry in refined.enqueue] == [{"batch_size": 20, "eta": 0.5}]


def test_grid_ranges_narrower_and_around_the_best(grid):
    spec, study = grid
    best = study.best_trial.params
    for quantile in (0.01, 0.05, 0.2, 0.5):
        refined = refine(study, spec, quantile)
        for name in ("batch_size", "eta"):
            old, new = spec.space[name], refined.space[name]
            assert old.low <= new.low <= best[name] <= new.high <= old.high
            assert new.high - new.low < old.high - old.low
            assert new.step <= old.step and new.contains(best[name])
            assert len(new.grid_values()) <= 1.5 * len(old.grid_values())


def test_grid_step_is_refined_for_a_narrow_region(grid):
    spec, study = grid
    refined = refine(study, spec, 0.01)  # the best trial alone, one step each side: 16..24 and 0.4..0.6
    assert refined.space["batch_size"] == IntRange(16, 24, step=1)  # 9 points
    assert refined.space["eta"] == FloatRange(0.4, 0.6, step=0.02)  # 11 points; 0.01 would give 21


def test_whole_range_region_keeps_the_parent_range(grid):
    spec, study = grid
    refined = refine(study, spec, 1.0)
    assert refined.space["batch_size"] == spec.space["batch_size"]
    assert refined.space["eta"] == spec.space["eta"]


def test_name_parent_description_and_settings(grid):
    spec, study = grid
    refined = refine(study, spec, 0.1)
    assert refined.name == "grid-toy-refined" and refined.parent == "grid-toy"
    assert "grid-toy" in refined.description and "10%" in refined.description
    assert "10 of 100 completed trials" in refined.description
    assert (refined.sampler, refined.pruner, refined.objectives, refined.train, refined.data) == (
        spec.sampler,
        spec.pruner,
        spec.objectives,
        spec.train,
        spec.data,
    )
    taken = {"grid-toy-refined", "grid-toy-refined-2"}
    assert refine(study, spec, 0.1, taken=taken).name == "grid-toy-refined-3"
    assert refined_name("a", ()) == "a-refined"


def trade_off(params) -> tuple[float, float]:
    """Accuracy eta (maximize) against seconds eta + (batch_size - 20)² / 1000 (minimize):
    the Pareto front is batch size 20 at every eta."""
    return params["eta"], params["eta"] + (params["batch_size"] - 20) ** 2 / 1000


def test_multi_objective_refines_the_pareto_front():
    spec = parse_spec(
        {
            **GRID,
            "name": "grid-pair",
            "objective": [
                {"metric": "validation_accuracy", "direction": "maximize"},
                {"metric": "training_seconds", "direction": "minimize"},
            ],
        },
        "pair.toml",
    )
    study = run(spec, trade_off)
    assert {t.params["batch_size"] for t in study.best_trials} == {20} and len(study.best_trials) == 10
    refined = refine(study, spec, 0.1)  # the quantile plays no part: the region is the front
    # batch size 20 widened by one step, the finest step within 1.5 x 10 points; eta spans the front: kept
    assert refined.space["batch_size"] == IntRange(16, 24, step=1)
    assert refined.space["eta"] == spec.space["eta"]  # the top 10% by accuracy alone would keep every batch size
    assert refined.n_trials == refined.grid_size == 90
    assert "Pareto front on validation_accuracy and training_seconds (10 of 100" in refined.description
    assert [e["batch_size"] for e in refined.enqueue] == [20] * 10  # the whole front, best accuracy first
    assert [e["eta"] for e in refined.enqueue] == pytest.approx([1.0 - 0.1 * k for k in range(10)])


def tpe_score(params) -> float:
    """Best near eta 0.1 and 100 hidden units; sigmoid and batch size 50 are clearly worse."""
    score = 1 - abs(math.log10(params["eta"] / 0.1)) - abs(params["hidden"] - 100) / 200
    return score - (1 if params["activation"] == "sigmoid" else 0) - (1 if params["batch_size"] == 50 else 0)


@pytest.fixture(scope="module")
def tpe():
    spec = parse_spec(TPE, "tpe.toml")
    return spec, run(spec, tpe_score, n_trials=40)


def test_continuous_log_and_categorical(tpe):
    spec, study = tpe
    refined = refine(study, spec, 0.1)
    best = study.best_trial.params
    eta, hidden = refined.space["eta"], refined.space["hidden"]
    assert eta.log and eta.step is None and spec.space["eta"].low <= eta.low <= best["eta"] <= eta.high <= 1.0
    assert eta.high / eta.low < 1000  # narrower on the log scale
    assert 10 <= hidden.low <= best["hidden"] <= hidden.high <= 200 and hidden.high - hidden.low < 190
    assert refined.space["activation"] == Fixed("relu")  # every top trial used relu
    top = sorted(study.trials, key=lambda t: -t.value)[:4]
    batch = refined.space["batch_size"]
    used = {t.params["batch_size"] for t in top}
    assert batch == (Categorical(tuple(c for c in (10, 20, 50) if c in used)) if len(used) > 1 else Fixed(*used))
    assert refined.n_trials == 40 and refined.pruner == spec.pruner
    entry = dict(refined.enqueue[0])
    assert entry["eta"] == pytest.approx(best["eta"]) and entry["hidden"] == best["hidden"]
    assert "activation" not in entry  # fixed now: not a searched parameter


def test_failed_and_pruned_trials_do_not_count(grid):
    spec, study = grid
    copy = optuna.create_study(study_name=spec.name, direction="maximize")
    copy.set_user_attr(SPEC_ATTR, spec_to_dict(spec))
    for trial in study.trials:
        copy.add_trial(trial)
    far = {"batch_size": 40, "eta": 1.0}
    copy.add_trial(optuna.create_trial(params=far, distributions=study.trials[0].distributions, state=TrialState.FAIL))
    assert refine(copy, spec, 0.09) == refine(study, spec, 0.09)


def test_no_completed_trial():
    spec = parse_spec(GRID, "grid.toml")
    study = optuna.create_study(study_name=spec.name)
    with pytest.raises(UsageError, match="no completed trials"):
        refine(study, spec)


def test_written_file_loads_back(tmp_path, grid, tpe):
    for spec, study in (grid, tpe):
        refined = refine(study, spec, 0.1)
        path = write_refined(refined, tmp_path / f"{refined.name}.toml")
        loaded = load_spec(path)
        assert loaded == refined and loaded.parent == spec.name


def test_write_refined_refuses_to_overwrite(tmp_path, grid):
    spec, study = grid
    refined = refine(study, spec, 0.1)
    path = tmp_path / "refined.toml"
    path.write_text("keep me")
    with pytest.raises(UsageError, match="already exists"):
        write_refined(refined, path)
    assert path.read_text() == "keep me"
    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write"):
        write_refined(refined, blocker / "refined.toml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "refined.toml"]  # no temporary files


@pytest.mark.parametrize("workers", [1, 2])
def test_a_refined_grid_runs_each_of_its_points_once_the_parent_best_first(workdir, stored_study, workers):
    copy_stored(stored_study, workdir)
    assert not (workdir / "studies").exists()  # refine makes it
    assert run_cli("refine", "tiny", "--run", "--workers", workers, "--no-tracking") == 0
    spec = load_spec(workdir / "studies" / "tiny-refined.toml")
    grid = grid_points(spec.searched)
    best = grid_key(journal_study(workdir, "tiny").best_params)
    study = journal_study(workdir, "tiny-refined")
    ran = [grid_key(t.params) for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(ran) == len(study.trials) == spec.grid_size > 4
    assert set(ran) == {grid_key(dict(zip(grid, values))) for values in itertools.product(*grid.values())}
    assert ran[0] == best  # enqueued: trial #0
    assert (workdir / "reports" / "tiny-refined" / "trials.csv").exists()  # the report of a grid study
