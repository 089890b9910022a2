"""Samplers and pruners built from specs, run on small in-memory studies."""

import itertools
import math
import warnings
from pathlib import Path

import optuna
import pytest

from sweep import load_spec, parse_spec
from sweep.errors import SpecError
from sweep.spec.samplers import (
    GRID_SAMPLERS,
    PRUNERS,
    SAMPLERS,
    SINGLE_OBJECTIVE_SAMPLERS,
    grid_key,
    grid_order,
    grid_points,
    pruner_options,
    sampler_options,
)
from sweep.spec.study import suggest

STUDIES = Path(__file__).resolve().parents[2] / "studies"

# Options that make each sampler leave its start-up phase within a 4-trial test.
QUICK = {
    "tpe": {"n_startup_trials": 2},
    "gp": {"n_startup_trials": 2},
    "nsga2": {"population_size": 2},
    "nsga3": {"population_size": 2},
}


@pytest.fixture(autouse=True)
def quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


def homework_spec(sampler: str, n_objectives: int = 1, **sampler_options) -> dict:
    """The homework-like space: batch_size 5..55 step 5 x eta 0.05..0.55 step 0.05 (an int and a float)."""
    objectives = [{"metric": "validation_accuracy"}, {"metric": "training_seconds"}][:n_objectives]
    return {
        "name": f"toy-{sampler}",
        "objective": objectives,
        "sampler": {"name": sampler, "seed": 0, **QUICK.get(sampler, {}), **sampler_options},
        "budget": {"n_trials": 4},
        "train": {"epochs": 1},
        "space": {
            "batch_size": {"type": "int", "low": 5, "high": 55, "step": 5},
            "eta": {"type": "float", "low": 0.05, "high": 0.55, "step": 0.05},
        },
    }


def toy(spec, trial):
    """A smooth bowl around batch_size 20, eta 0.3 (and, for two objectives, a cost growing with 1/batch)."""
    params = suggest(spec, trial)
    score = -((params["eta"] - 0.3) ** 2) - ((params["batch_size"] - 20) / 50) ** 2
    return (score, 100 / params["batch_size"]) if spec.is_multi_objective else score


def run(spec, n_trials=4, seed_offset=0) -> optuna.Study:
    study = optuna.create_study(
        directions=spec.directions, sampler=spec.make_sampler(seed_offset), pruner=spec.make_pruner()
    )
    study.optimize(lambda trial: toy(spec, trial), n_trials=n_trials)
    return study


def test_names():
    assert SAMPLERS == ("grid", "tpe", "random", "cmaes", "qmc", "nsga2", "nsga3", "gp", "bruteforce")
    assert PRUNERS == ("none", "median", "percentile", "successive_halving", "hyperband", "patient", "threshold")
    assert set(GRID_SAMPLERS) | set(SINGLE_OBJECTIVE_SAMPLERS) <= set(SAMPLERS)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_runs_the_homework_space(name):
    spec = parse_spec(homework_spec(name), "test")
    study = run(spec)
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for trial in study.trials:
        assert trial.params["batch_size"] in range(5, 56, 5)
        assert 0.05 <= trial.params["eta"] <= 0.55


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n not in SINGLE_OBJECTIVE_SAMPLERS])
def test_multi_objective_samplers(name):
    spec = parse_spec(homework_spec(name, n_objectives=2), "test")
    study = run(spec)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert len(study.trials) == 4 and all(len(t.values) == 2 for t in study.trials)
    for t in study.trials:  # both objectives, in the spec's order
        assert t.values == pytest.approx(
            [toy(spec, optuna.trial.FixedTrial(t.params))[0], 100 / t.params["batch_size"]]
        )
    # the best trials: exactly those no other trial beats on one objective without losing on the other
    front = {t.number for t in study.trials if not any(dominates(u.values, t.values) for u in study.trials)}
    assert {t.number for t in study.best_trials} == front


def dominates(a: list[float], b: list[float]) -> bool:
    """Whether values ``a`` (validation accuracy up, training seconds down) are Pareto-better than ``b``."""
    return a[0] >= b[0] and a[1] <= b[1] and a != b


@pytest.mark.parametrize("name", SINGLE_OBJECTIVE_SAMPLERS)
def test_single_objective_samplers_are_refused_by_optuna_too(name):
    """The list matches the installed Optuna: these do fail on a multi-objective study."""
    sampler = parse_spec(homework_spec(name), "test").make_sampler()
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    with pytest.raises(ValueError, match="multi-objective"):
        study.optimize(lambda trial: (trial.suggest_float("x", 0, 1), trial.suggest_int("y", 1, 5)), n_trials=2)
    with pytest.raises(SpecError, match="handles a single objective"):
        parse_spec(homework_spec(name, n_objectives=2), "test")


def test_seed_offset_gives_parallel_workers_other_points():
    spec = parse_spec(homework_spec("random"), "test")
    first = [t.params for t in run(spec, seed_offset=0).trials]
    assert first == [t.params for t in run(spec, seed_offset=0).trials]  # same seed, same points
    assert first != [t.params for t in run(spec, seed_offset=1).trials]
    with pytest.raises(ValueError, match="seed_offset"):
        spec.make_sampler(-1)


@pytest.mark.parametrize("name", ["random", "tpe", "cmaes", "nsga2", "qmc", "gp"])
def test_seeds_at_the_top_of_their_range_wrap_for_later_workers(name):
    """Worker i seeds with (seed + i) mod 2**32: valid for NumPy, and distinct for every worker."""
    data = homework_spec(name)
    data["sampler"]["seed"] = 2**32 - 1
    spec = parse_spec(data, "test")
    runs = [[t.params for t in run(spec, seed_offset=offset).trials] for offset in (1, 2)]
    assert runs[0] == [
        t.params for t in run(parse_spec({**data, "sampler": {**data["sampler"], "seed": 0}}, "test")).trials
    ]  # 2**32 - 1 + 1 wraps to 0
    assert runs[0] != runs[1]


def test_grid_size_is_counted_not_listed():
    data = homework_spec("grid")
    data["space"] = {
        "batch_size": {"type": "int", "low": 1, "high": 298, "step": 3},
        "eta": {"type": "float", "low": 0.001, "high": 0.3, "step": 0.001},
    }
    spec = parse_spec(data, "test")
    assert spec.grid_size == math.prod(len(values) for values in grid_points(spec.searched).values()) == 100 * 300


def test_grid_points_of_the_coarse_grid():
    spec = load_spec(STUDIES / "coarse-grid-5k.toml")
    points = grid_points(spec.searched)
    assert points == {
        "batch_size": [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55],
        "eta": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55],
    }
    assert spec.grid_size == 121


@pytest.mark.filterwarnings("error")  # e.g. Optuna's "value is out of range" for a grid value off the step
def test_grid_sampler_covers_the_homework_grid_exactly_once():
    spec = load_spec(STUDIES / "homework-grid-5k.toml")
    study = optuna.create_study(direction="maximize", sampler=spec.make_sampler())
    study.optimize(lambda trial: toy(spec, trial), n_trials=spec.grid_size)  # the budget ends a sweep
    seen = [(t.params["batch_size"], t.params["eta"]) for t in study.trials]
    assert len(seen) == 121
    assert sorted(seen) == sorted(itertools.product(*grid_points(spec.searched).values()))


def test_grid_sampler_does_not_stop_the_study_itself():
    """Sweeps ask and tell outside Study.optimize, where study.stop() would raise."""
    spec = load_spec(STUDIES / "homework-grid-5k.toml")
    study = optuna.create_study(direction="maximize", sampler=spec.make_sampler())
    for _ in range(spec.grid_size):
        trial = study.ask()
        study.tell(trial, toy(spec, trial))
    assert len({(t.params["batch_size"], t.params["eta"]) for t in study.trials}) == 121


def test_grid_of_a_log_int_range_and_choices():
    data = homework_spec("grid")
    data["train"] = {"batch_size": 10, "eta": 0.1}
    data["space"] = {
        "hidden": {"type": "int", "low": 10, "high": 20, "log": True},
        "activation": {"type": "categorical", "choices": ["relu", "sigmoid"]},
        "epochs": 2,
    }
    spec = parse_spec(data, "test")
    assert grid_points(spec.searched) == {"hidden": list(range(10, 21)), "activation": ["relu", "sigmoid"]}
    assert spec.grid_size == 22


def test_grid_order_walks_every_point_once_eta_and_lambda_fastest():
    data = homework_spec("grid")
    data["space"] = {
        "eta": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1},
        "hidden": {"type": "int", "low": 10, "high": 30, "step": 10},
        "lmbda": {"type": "categorical", "choices": [0.0, 5.0]},
        "batch_size": {"type": "categorical", "choices": [10, 20]},
    }
    spec = parse_spec(data, "test")
    order = grid_order(spec.searched)
    points = grid_points(spec.searched)
    assert len(order) == spec.grid_size == 36
    assert sorted(map(grid_key, order)) == sorted(
        grid_key(dict(zip(points, values))) for values in itertools.product(*points.values())
    )
    structures = [(p["hidden"], p["batch_size"]) for p in order]
    runs = [len(list(group)) for _, group in itertools.groupby(structures)]
    assert runs == [6] * 6  # each structure once, as one run of its 3 x 2 eta and lmbda values


def test_grid_key_matches_a_grid_value_and_its_float_noise():
    assert grid_key({"eta": 0.1 + 0.2, "batch_size": 10}) == grid_key({"batch_size": 10, "eta": 0.3})
    assert grid_key({"eta": 0.3}) != grid_key({"eta": 0.35})


def test_grid_points_refuses_a_continuous_range():
    data = homework_spec("tpe")
    data["space"]["eta"] = {"type": "float", "low": 0.01, "high": 1.0, "log": True}
    with pytest.raises(ValueError, match="eta: a continuous range"):
        grid_points(parse_spec(data, "test").searched)


# Required options of each pruner, for building them (the threshold one prunes below 0.5).
PRUNER_NEEDS = {"percentile": {"percentile": 25.0}, "patient": {"patience": 2}, "threshold": {"lower": 0.5}}
PRUNER_CLASSES = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "patient": optuna.pruners.PatientPruner,
    "threshold": optuna.pruners.ThresholdPruner,
}
EPOCHS = 9


@pytest.mark.parametrize("name", PRUNERS)
def test_every_pruner_builds_and_prunes(name):
    """Each trial is worse than the one before and gets worse every epoch: every pruner but
    "none" stops some trials early (median and percentile once their 5 startup trials are done)."""
    data = homework_spec("random")
    data["pruner"] = {"name": name, **PRUNER_NEEDS.get(name, {})}
    spec = parse_spec(data, "test")
    pruner = spec.make_pruner()
    assert type(pruner) is PRUNER_CLASSES[name]
    # (a fixed name: Hyperband puts trials in brackets by a hash of the study's name and the trial's number)
    study = optuna.create_study(study_name="pruners", direction="maximize", pruner=pruner, sampler=spec.make_sampler())

    def objective(trial):
        toy(spec, trial)  # the sampler's parameters, as a sweep suggests them
        for epoch in range(1, EPOCHS + 1):
            trial.report(1 - trial.number / 10 - epoch / 100, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 1 - trial.number / 10 - EPOCHS / 100

    study.optimize(objective, n_trials=6)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(study.trials) == 6
    assert bool(pruned) == (name != "none"), [t.number for t in pruned]
    assert all(len(t.intermediate_values) < EPOCHS for t in pruned)  # stopped early
    assert set(PRUNER_CLASSES) == set(PRUNERS)


def test_hyperband_of_the_shipped_study():
    pruner = load_spec(STUDIES / "tpe-hyperband.toml").make_pruner()
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (1, 30, 3)


def test_patient_wraps_the_wrapped_pruner():
    data = homework_spec("tpe")
    data["pruner"] = {
        "name": "patient",
        "patience": 3,
        "min_delta": 0.01,
        "wrapped": {"name": "median", "n_warmup_steps": 2},
    }
    pruner = parse_spec(data, "test").make_pruner()
    assert isinstance(pruner, optuna.pruners.PatientPruner)
    assert (pruner._patience, pruner._min_delta) == (3, 0.01)
    assert isinstance(pruner._wrapped_pruner, optuna.pruners.MedianPruner)
    assert pruner._wrapped_pruner._n_warmup_steps == 2


def test_patient_alone():
    data = homework_spec("tpe")
    data["pruner"] = {"name": "patient", "patience": 1}
    assert parse_spec(data, "test").make_pruner()._wrapped_pruner is None


@pytest.mark.parametrize(
    "section, key, problem",
    [
        ({"sampler": {"name": "nsga2", "population_size": 1}}, "sampler.population_size", "population_size"),
        ({"sampler": {"name": "qmc", "qmc_type": "lattice"}}, "sampler.qmc_type", "qmc_type"),
        ({"sampler": {"name": "tpe", "bogus": 1}}, "sampler.bogus", "unknown option of the tpe sampler"),
        ({"pruner": {"name": "median", "n_startup_trials": -1}}, "pruner.n_startup_trials", "cannot be negative"),
        ({"pruner": {"name": "percentile", "percentile": 150.0}}, "pruner.percentile", "between 0 and 100"),
        ({"pruner": {"name": "patient", "patience": -1, "min_delta": 0.5}}, "pruner.patience", "cannot be negative"),
        ({"pruner": {"name": "successive_halving", "reduction_factor": 1}}, "pruner.reduction_factor", ">= 2"),
        ({"pruner": {"name": "threshold", "lower": 0.5, "n_warmup_steps": -1}}, "pruner.n_warmup_steps", "warmup"),
        ({"pruner": {"name": "successive_halving", "min_resource": "soon"}}, "pruner.min_resource", "auto"),
        ({"pruner": {"name": "threshold"}}, "pruner", "Either lower or upper"),
        (
            {"pruner": {"name": "patient", "patience": 1, "wrapped": {"name": "median", "interval_steps": 0}}},
            "pruner.wrapped.interval_steps",
            "rejected by optuna",
        ),
    ],
)
def test_bad_option_values_name_their_key(section, key, problem):
    data = {**homework_spec("tpe"), **section}
    if "sampler" in section:
        data["sampler"] = {"seed": 0, **section["sampler"]}
    with pytest.raises(SpecError) as caught:
        parse_spec(data, "test")
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_option_tables_come_from_the_signatures():
    tpe = sampler_options("tpe")
    assert tpe["n_startup_trials"].types == (int,) and not tpe["n_startup_trials"].required
    assert "seed" not in tpe and "gamma" not in tpe and "constraints_func" not in tpe  # set elsewhere / not TOML
    assert sampler_options("grid") == {} and sampler_options("random") == {}
    assert "x0" not in sampler_options("cmaes") and "sigma0" in sampler_options("cmaes")
    patient = pruner_options("patient")
    assert patient["patience"].required and "wrapped_pruner" not in patient
    assert pruner_options("hyperband")["max_resource"].types == (int, str)
    assert pruner_options("percentile")["percentile"].accepts(25) and not pruner_options("median")[
        "n_warmup_steps"
    ].accepts(True)


@pytest.mark.filterwarnings("error::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("name", SAMPLERS)
def test_building_is_free_of_experimental_warnings(name):
    parse_spec(homework_spec(name), "test").make_sampler()


def test_other_warnings_still_surface():
    with pytest.warns(FutureWarning, match="consider_endpoints"):
        parse_spec(homework_spec("tpe", consider_endpoints=True), "test").make_sampler()


def test_experimental_pruner_builds_quietly():
    data = homework_spec("tpe")
    data["pruner"] = {"name": "patient", "patience": 1}
    spec = parse_spec(data, "test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec.make_pruner()
