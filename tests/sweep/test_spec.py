"""The study-file schema: valid files, defaults, round trips, trials, and every refusal."""

import dataclasses
import itertools
import json
import tomllib
from pathlib import Path

import optuna
import pytest

from core import NetworkSpec, TrainConfig
from sweep.errors import InvalidValue, SpecError
from sweep.schema import METRICS, PER_EPOCH_METRICS
from sweep.spec.file import dumps, load_spec, parse_spec, spec_to_dict
from sweep.spec.parts import DataSpec, Objective, PrunerSpec, SamplerSpec
from sweep.spec.samplers import grid_points
from sweep.spec.settings import DEFAULTS
from sweep.spec.space import Categorical, Fixed, FloatRange, IntRange
from sweep.spec.study import StudySpec, all_params, suggest, trial_config, used
from tests.sweep.bad_studies import BAD_STUDIES, special_file

STUDIES = Path(__file__).resolve().parents[2] / "studies"
# The shipped studies and their grid sizes (None: not a grid).
SHIPPED = {
    "homework-grid-5k": 121,
    "homework-grid-mnist": 121,
    "coarse-grid-5k": 121,
    "activation-cost": 12,
    "hidden-15-vs-30": 2,
    "overfitting-lambda-width": 6,
    "tpe-hyperband": None,
    "multi-objective": None,
    "best-mnist": None,  # (budgeted by wall time)
}

MINIMAL = """
name = "minimal"

[budget]
n_trials = 3

[train]
batch_size = 10
eta = 0.5
"""

RICH = """
name = "rich.study-1"
description = "every section"
parent = "minimal"

[data]
dataset = "mnist"
n_train = 1000
n_validation = 200
n_test = 100

[[objective]]
metric = "best_validation_accuracy"

[sampler]
name = "tpe"
seed = 3
n_startup_trials = 4
constant_liar = false

[pruner]
name = "patient"
patience = 2

[pruner.wrapped]
name = "median"
n_warmup_steps = 2

[budget]
n_trials = 20
timeout = 600

[train]
sizes = [784, 40, 20, 10]
cost = "quadratic"
seed = 7
monitor_training_cost = false

[space]
batch_size = { type = "int", low = 4, high = 64, log = true }
eta = { type = "float", low = 0.05, high = 0.55, step = 0.05 }
lmbda = { type = "categorical", choices = [0, 0.1, 1, 5] }
hidden = { type = "int", low = 10, high = 100, step = 10 }
activation = { type = "categorical", choices = ["relu", "sigmoid"] }
epochs = 3

[[enqueue]]
batch_size = 10
eta = 0.1

[[enqueue]]
hidden = 30
lmbda = 5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


@pytest.fixture
def rich(tmp_path) -> StudySpec:
    return load_spec(write(tmp_path, RICH))


# --- valid files and defaults


def test_minimal_file_gets_the_defaults(tmp_path):
    path = write(tmp_path, MINIMAL)
    spec = load_spec(path)
    assert spec.source == str(path)
    assert (spec.name, spec.description, spec.parent) == ("minimal", None, None)
    assert spec.data == DataSpec("mnist-5k", None, None, None)
    assert spec.objectives == (Objective("validation_accuracy", "maximize"),)
    assert spec.directions == ["maximize"] and not spec.is_multi_objective
    assert spec.sampler == SamplerSpec("tpe", 0, {})
    assert spec.pruner == PrunerSpec("none", {}, None)
    assert (spec.n_trials, spec.timeout, spec.enqueue) == (3, None, ())
    assert dict(spec.train) == {"batch_size": 10, "eta": 0.5}
    assert dict(spec.space) == {}
    assert spec.fixed == {**DEFAULTS, "batch_size": 10, "eta": 0.5}
    network, config = trial_config(spec, {})
    assert network == NetworkSpec((784, 30, 10), "relu", "cross_entropy")
    assert config == TrainConfig(epochs=10, batch_size=10, eta=0.5, lmbda=0.0, seed=0)


def test_rich_file(rich):
    assert rich.data == DataSpec("mnist", 1000, 200, 100)
    assert rich.objectives == (Objective("best_validation_accuracy", "maximize"),)
    assert rich.sampler == SamplerSpec("tpe", 3, {"n_startup_trials": 4, "constant_liar": False})
    assert rich.pruner == PrunerSpec("patient", {"patience": 2}, PrunerSpec("median", {"n_warmup_steps": 2}))
    assert (rich.n_trials, rich.timeout) == (20, 600.0)
    assert rich.train["sizes"] == (784, 40, 20, 10)
    assert rich.space["batch_size"] == IntRange(4, 64, log=True)
    assert rich.space["eta"] == FloatRange(0.05, 0.55, step=0.05)
    assert rich.space["lmbda"] == Categorical((0.0, 0.1, 1.0, 5.0))
    assert all(isinstance(c, float) for c in rich.space["lmbda"].choices)  # ints become floats
    assert rich.space["epochs"] == Fixed(3)
    assert list(rich.searched) == ["batch_size", "eta", "lmbda", "hidden", "activation"]
    assert [dict(e) for e in rich.enqueue] == [{"batch_size": 10, "eta": 0.1}, {"hidden": 30, "lmbda": 5.0}]


@pytest.mark.parametrize("metric", METRICS)
def test_default_direction(tmp_path, metric):
    spec = load_spec(write(tmp_path, MINIMAL + f'\n[[objective]]\nmetric = "{metric}"\n'))
    assert spec.directions == ["maximize" if metric.endswith("accuracy") else "minimize"]


def test_metrics():
    assert set(PER_EPOCH_METRICS) < set(METRICS)
    assert {
        "validation_accuracy",
        "validation_cost",
        "training_accuracy",
        "training_cost",
        "best_validation_accuracy",
    } == set(PER_EPOCH_METRICS)


def test_multi_objective(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            MINIMAL + '\n[[objective]]\nmetric = "validation_accuracy"\n\n[[objective]]\nmetric = "training_seconds"\n',
        )
    )
    assert spec.is_multi_objective and spec.directions == ["maximize", "minimize"]


def test_grid_needs_no_budget(tmp_path):
    text = (
        'name = "g"\n[sampler]\nname = "grid"\n[train]\nbatch_size = 10\n[space]\n'
        'eta = { type = "categorical", choices = [0.1, 0.2] }\n'
    )
    spec = load_spec(write(tmp_path, text))
    assert spec.n_trials is None and spec.timeout is None and spec.grid_size == 2


# --- immutability, equality, round trips


def test_spec_is_frozen(rich):
    with pytest.raises(dataclasses.FrozenInstanceError):
        rich.name = "other"
    with pytest.raises(TypeError):
        rich.train["eta"] = 1.0
    with pytest.raises(TypeError):
        rich.space["eta"] = Fixed(0.1)
    with pytest.raises(TypeError):
        rich.sampler.options["seed"] = 1
    assert isinstance(rich.enqueue, tuple) and isinstance(rich.space["lmbda"].choices, tuple)


def test_source_is_not_compared(rich):
    assert parse_spec(spec_to_dict(rich), "study rich.study-1") == rich


def test_replace_validates_again(rich):
    assert dataclasses.replace(rich, n_trials=5).n_trials == 5
    with pytest.raises(SpecError, match="budget.n_trials: must be at least 1"):
        dataclasses.replace(rich, n_trials=0)


@pytest.mark.parametrize("text", [MINIMAL, RICH], ids=["minimal", "rich"])
def test_round_trip(tmp_path, text):
    spec = load_spec(write(tmp_path, text))
    data = spec_to_dict(spec)
    assert "source" not in data
    assert parse_spec(data, spec.source) == spec
    assert parse_spec(json.loads(json.dumps(data)), "study x") == spec  # as the engine stores it
    assert parse_spec(tomllib.loads(dumps(spec)), spec.source) == spec
    again = write(tmp_path, dumps(spec))
    assert load_spec(again) == spec


def test_dumps_is_toml_of_the_dict(rich):
    assert tomllib.loads(dumps(rich)) == json.loads(json.dumps(spec_to_dict(rich)))


def test_dataclasses_validate_themselves():
    with pytest.raises(InvalidValue, match="inverted range"):
        IntRange(5, 1)
    with pytest.raises(InvalidValue, match="step: 0.3 does not divide"):
        FloatRange(0.0, 1.0, step=0.3)
    with pytest.raises(InvalidValue, match="metric: unknown metric"):
        Objective("accuracy", "maximize")
    with pytest.raises(InvalidValue, match="seed: must be at least 0"):
        SamplerSpec("tpe", -1)
    with pytest.raises(SpecError, match="^<memory>: eta: must be given"):
        StudySpec(name="x", n_trials=1, train={"batch_size": 10})
    assert FloatRange(1, 2).low == 1.0 and isinstance(FloatRange(1, 2).low, float)


def test_float_step_tolerance():
    assert FloatRange(0.05, 0.55, step=0.05).grid_values() == [round(0.05 * k, 2) for k in range(1, 12)]
    assert FloatRange(0.1, 0.7, step=0.1).grid_values()[-1] == 0.7  # 0.6 / 0.1 = 5.999999999999999


# --- one trial


def test_suggest_samples_the_space_and_skips_fixed_values(rich):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        params = suggest(rich, trial)
        assert list(params) == list(rich.space)
        assert set(trial.params) == set(rich.searched)  # epochs (fixed) is not an Optuna parameter
        assert params["epochs"] == 3
        assert isinstance(params["batch_size"], int) and 4 <= params["batch_size"] <= 64
        eta_steps = (params["eta"] - 0.05) / 0.05
        assert 0.05 <= params["eta"] <= 0.55 and abs(eta_steps - round(eta_steps)) < 1e-9
        assert params["lmbda"] in (0.0, 0.1, 1.0, 5.0)
        assert params["hidden"] in range(10, 101, 10)
        assert params["activation"] in ("relu", "sigmoid")
        study.tell(trial, 0.0)


def test_trial_config_merges_train_fixed_and_sampled(rich):
    params = {"batch_size": 16, "eta": 0.25, "lmbda": 1.0, "hidden": 50, "activation": "sigmoid"}
    network, config = trial_config(rich, params)
    # hidden replaces every hidden layer of train.sizes (784-40-20-10); depth stays 2
    assert network == NetworkSpec((784, 50, 50, 10), "sigmoid", "quadratic")
    assert config == TrainConfig(epochs=3, batch_size=16, eta=0.25, lmbda=1.0, seed=7, monitor_training_cost=False)
    assert trial_config(rich, {**params, "epochs": 3}) == (network, config)  # fixed values may be passed


def _spec_with_space(tmp_path, sizes, space_lines):
    text = (
        f'name = "n"\n[budget]\nn_trials = 1\n[train]\nbatch_size = 10\neta = 0.1\nsizes = {sizes}\n'
        "[space]\n" + space_lines
    )
    return load_spec(write(tmp_path, text))


_DEPTH_1_2 = 'depth = { type = "int", low = 1, high = 2 }\n'
_H2 = 'hidden2 = { type = "int", low = 5, high = 50 }\n'


@pytest.mark.parametrize(
    "sizes, space_lines, params, expected",
    [
        ("[784, 15, 10]", 'depth = { type = "int", low = 1, high = 3 }\n', {"depth": 3}, (784, 15, 15, 15, 10)),
        ("[784, 30, 20, 10]", 'hidden = { type = "int", low = 10, high = 99 }\n', {"hidden": 64}, (784, 64, 64, 10)),
        (
            "[784, 10]",
            'hidden = { type = "int", low = 10, high = 99 }\ndepth = { type = "int", low = 1, high = 3 }\n',
            {"hidden": 12, "depth": 2},
            (784, 12, 12, 10),
        ),
        ("[784, 15, 10]", "hidden = 20\n", {}, (784, 20, 10)),
        # hidden2: the second (and any later) layer's width, ignored by a network of one hidden layer
        ("[784, 15, 10]", _DEPTH_1_2 + _H2, {"depth": 2, "hidden2": 7}, (784, 15, 7, 10)),
        ("[784, 15, 10]", _DEPTH_1_2 + _H2, {"depth": 1, "hidden2": 7}, (784, 15, 10)),
        ("[784, 15, 10]", "depth = 3\nhidden = 20\n" + _H2, {"hidden2": 7}, (784, 20, 7, 7, 10)),
        ("[784, 30, 20, 10]", _H2, {"hidden2": 7}, (784, 30, 7, 10)),
    ],
)
def test_trial_config_hidden_and_depth(tmp_path, sizes, space_lines, params, expected):
    spec = _spec_with_space(tmp_path, sizes, space_lines)
    assert trial_config(spec, params)[0].sizes == expected


def test_hidden2_is_logged_only_where_used(tmp_path):
    """Optuna samples hidden2 on every trial; a one-hidden-layer trial neither names nor logs it."""
    spec = _spec_with_space(tmp_path, "[784, 15, 10]", _DEPTH_1_2 + _H2)
    assert used(spec, {"depth": 1, "hidden2": 7}) == {"depth": 1}
    assert used(spec, {"depth": 2, "hidden2": 7}) == {"depth": 2, "hidden2": 7}
    one, two = (all_params(spec, {"depth": depth, "hidden2": 7}) for depth in (1, 2))
    assert "hidden2" not in one and one["sizes"] == "784-15-10"
    assert two["hidden2"] == 7 and two["sizes"] == "784-15-7-10"


def test_memory_estimate_counts_hidden2(tmp_path):
    spec = _spec_with_space(tmp_path, "[784, 15, 10]", _DEPTH_1_2 + _H2)
    assert spec.largest_network()[0] == (784, 15, 50, 10)


def test_trial_config_rejects_params_that_do_not_fit(rich):
    with pytest.raises(ValueError, match=r"missing \['activation'\]"):
        trial_config(rich, {"batch_size": 16, "eta": 0.25, "lmbda": 1.0, "hidden": 50})
    with pytest.raises(ValueError, match=r"unknown \['momentum'\]"):
        trial_config(
            rich, {"batch_size": 16, "eta": 0.25, "lmbda": 1.0, "hidden": 50, "activation": "relu", "momentum": 0.9}
        )


def test_all_params(rich):
    params = {"batch_size": 16, "eta": 0.25, "lmbda": 1.0, "hidden": 50, "activation": "sigmoid"}
    assert all_params(rich, params) == {
        "batch_size": 16,
        "eta": 0.25,
        "lmbda": 1.0,
        "hidden": 50,
        "activation": "sigmoid",
        "epochs": 3,
        "sizes": "784-50-50-10",
        "cost": "quadratic",
        "seed": 7,
        "dataset": "mnist",
        "n_train": 1000,
        "n_validation": 200,
        "n_test": 100,
    }


# --- refusals


@pytest.mark.parametrize("case_id, text, key, phrase", BAD_STUDIES, ids=[row[0] for row in BAD_STUDIES])
def test_bad_study(tmp_path, case_id, text, key, phrase):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    error = caught.value
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: " if key else f"{path}: ")
    assert error.key == key
    assert phrase in error.problem


def test_bad_studies_table():
    ids = [row[0] for row in BAD_STUDIES]
    assert len(ids) == len(set(ids)) and len(ids) >= 100


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "nowhere.toml")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(path)


def test_parse_spec_names_its_source():
    with pytest.raises(SpecError, match="^study x: must be a table"):
        parse_spec(["not", "a", "table"], "study x")


# --- the shipped studies


def test_every_shipped_study_is_listed():
    assert sorted(p.stem for p in STUDIES.glob("*.toml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_study(name):
    spec = load_spec(STUDIES / f"{name}.toml")
    assert spec.name == name and spec.description
    assert parse_spec(spec_to_dict(spec), spec.source) == spec
    if SHIPPED[name] is not None:
        assert spec.sampler.name == "grid" and spec.grid_size == SHIPPED[name]
    else:
        assert spec.n_trials is not None or spec.timeout is not None


def test_homework_grid():
    spec = load_spec(STUDIES / "homework-grid-5k.toml")
    assert trial_config(spec, {"batch_size": 10, "eta": 0.1}) == (
        NetworkSpec((784, 15, 10), "relu", "cross_entropy"),
        TrainConfig(epochs=10, batch_size=10, eta=0.1, lmbda=0.0, seed=0),
    )
    assert spec.data == DataSpec("mnist-5k") and spec.pruner.name == "none"
    assert spec.objectives == (Objective("validation_accuracy", "maximize"),)
    mnist = load_spec(STUDIES / "homework-grid-mnist.toml")
    assert mnist.data == DataSpec("mnist", 5000, 1000, 1000)
    assert (mnist.space, mnist.train) == (spec.space, spec.train)


# The homework's grid as it states it: mini-batch size 5, 6, ..., 15 by eta 0.08, 0.09, ..., 0.18.
HOMEWORK_BATCH_SIZES = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
HOMEWORK_ETAS = [0.08, 0.09, 0.10, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18]


@pytest.mark.parametrize("name", ["homework-grid-5k", "homework-grid-mnist"])
def test_homework_grid_is_the_homeworks(name):
    spec = load_spec(STUDIES / f"{name}.toml")
    values = grid_points(spec.searched)
    points = list(itertools.product(values["batch_size"], values["eta"]))
    assert len(set(points)) == len(points) == 121
    assert points == list(
        itertools.product(HOMEWORK_BATCH_SIZES, HOMEWORK_ETAS)
    )  # == on floats: no 0.09000000000000001
    assert [repr(eta) for eta in values["eta"]] == [repr(eta) for eta in HOMEWORK_ETAS]
    network, config = trial_config(spec, {"batch_size": 9, "eta": 0.1})
    assert network == NetworkSpec((784, 15, 10), "relu", "cross_entropy") and config.epochs == 10


def test_coarse_grid_is_the_homework_networks_on_a_wider_grid():
    coarse, homework = (load_spec(STUDIES / f"{name}.toml") for name in ("coarse-grid-5k", "homework-grid-5k"))
    assert (coarse.data, coarse.train) == (homework.data, homework.train)
    values = grid_points(coarse.searched)
    assert values["batch_size"][0] == 5 and values["batch_size"][-1] == 55
    assert values["eta"] == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55]


def test_imports_resolve_to_the_real_packages():
    import core
    import tests.sweep.bad_studies

    root = STUDIES.parent
    assert Path(core.__file__).resolve() == root / "core" / "__init__.py"
    assert Path(tests.sweep.bad_studies.__file__).resolve().parent == root / "tests" / "sweep"


@pytest.mark.parametrize(
    "kind, phrase",
    [
        ("fifo", "(a FIFO)"),
        ("socket", "(a socket)"),
        ("dev-zero", "(a character device)"),
        ("directory", "(a directory)"),
    ],
)
def test_load_spec_reads_regular_files_only(tmp_path, kind, phrase):
    path = special_file(tmp_path, kind)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: not a regular file {phrase}"
