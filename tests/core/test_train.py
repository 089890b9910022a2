"""Training: agreement with the per-example reference, reproducibility, divergence."""

import numpy as np
import pytest

from core.model import NetworkSpec, init_params
from core.reference import reference_train
from tests.core.toy import toy_data as _data
from core.train import NonFiniteError, TrainConfig, train




@pytest.mark.parametrize("spec", [NetworkSpec((20, 8, 4)), NetworkSpec((20, 9, 7, 4), "sigmoid", "quadratic")],
                         ids=["relu-ce", "sigmoid-quad-2hidden"])
@pytest.mark.parametrize("batch_size, lmbda", [(10, 0.0), (7, 3.0), (1, 0.5), (500, 1.0)])
def test_fast_trainer_matches_per_example_reference(spec, batch_size, lmbda):
    """Same seed → same mini-batches → same weights as the homework's column-vector SGD.

    203 examples with batch 10 or 7 leave a short last batch, which is covered too.
    """
    data = _data(dtype=np.float64)
    config = TrainConfig(epochs=3, batch_size=batch_size, eta=0.3, lmbda=lmbda, seed=5)
    init = init_params(spec, np.random.default_rng(config.seed), dtype=np.float64)
    fast = train(spec, config, data, params=init)
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
    a, b = train(spec, config, data, val), train(spec, config, data, val)
    c = train(spec, TrainConfig(epochs=4, batch_size=10, eta=0.5, lmbda=0.1, seed=12), data, val)
    curves = ("training_cost", "training_accuracy", "validation_cost", "validation_accuracy")
    assert [[getattr(r, k) for k in curves] for r in a.history] == [[getattr(r, k) for k in curves] for r in b.history]
    assert a.history[-1].training_cost != c.history[-1].training_cost
    for x, y in zip(a.params.layers, b.params.layers):
        np.testing.assert_array_equal(x, y)


def test_history_has_one_record_per_epoch_and_learns():
    spec = NetworkSpec((20, 16, 4))
    result = train(spec, TrainConfig(epochs=6, batch_size=10, eta=0.5, seed=3), _data(n=600), _data(n=200, seed=9))
    assert [r.epoch for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.history[-1].training_cost < result.history[0].training_cost
    assert result.history[-1].validation_accuracy > 0.8
    assert all(r.seconds > 0 and r.eval_seconds >= 0 for r in result.history)
    assert result.curves()["epoch"] == [1, 2, 3, 4, 5, 6]
    assert not result.stopped_early


def test_monitoring_can_be_switched_off():
    spec = NetworkSpec((20, 8, 4))
    config = TrainConfig(epochs=2, batch_size=10, eta=0.5, monitor_training_cost=False,
                         monitor_validation_accuracy=False)
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


@pytest.mark.parametrize("kwargs, field", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"),
    ({"eta": -0.1}, "eta"), ({"eta": 0.0}, "eta"), ({"eta": float("nan")}, "eta"),
    ({"lmbda": -1.0}, "lmbda"), ({"seed": -3}, "seed"), ({"epochs": True}, "epochs"),
])
def test_config_validation_names_field_and_value(kwargs, field):
    base = {"epochs": 1, "batch_size": 10, "eta": 0.1}
    with pytest.raises(ValueError, match=rf"{field} .*{kwargs[field]!r}".replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{**base, **kwargs})
