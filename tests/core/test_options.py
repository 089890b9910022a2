"""Nielsen's chapter-3 options: momentum, dropout, early stopping, the halving η; max-norm; on both engines."""

import dataclasses
import importlib.util

import numpy as np
import pytest

from core.config import OPTIONS, OptionError, Pack, TrainConfig, UnmetNeed, unmet_need
from core.functions import COSTS
from core.history import CURVES, NO_CHECK, EpochRecord
from core.model import NetworkSpec, Params, Workspace, gradients, init_params, with_ones
from core.packed import PACKED_FIELDS, UNPACKED_OPTIONS, can_pack, train_packed
from core.train import Schedule, draw_keep, hidden_units, train
from tests.core.toy import assert_gradient_matches
from tests.core.toy import toy_data as _data

needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
RTOL = 1e-4  # float32 rounding between the engines after a few epochs (as tests/core/test_compiled.py)


def _greys(data):
    """The set with its pixels rounded to k/255 (zeros included), as MNIST's are."""
    data.X = np.divide(np.round(np.maximum(data.X - 0.3, 0) * 255), np.float32(255), dtype=np.float32)
    return data


def _masks(spec, n, p, rng, dtype=np.float64):
    """Per hidden layer (n, width): 0 or 1/(1 − p), from draw_keep."""
    keep = draw_keep(spec, n, p, rng)
    return [keep[:, start : start + width] / dtype(1 - p) for start, width in hidden_units(spec)]


def _masked_cost(spec, params, X, y, masks, lmbda, n_train):
    ws = Workspace(spec, len(X), params.dtype)
    a = ws.forward(params, with_ones(X), masks)
    return float(COSTS[spec.cost].value(ws.z[-1], a, y)) / len(X) + 0.5 * lmbda / n_train * params.l2()


@pytest.mark.parametrize(
    "spec",
    [NetworkSpec((6, 5, 4)), NetworkSpec((7, 6, 5, 3), "sigmoid"), NetworkSpec((7, 6, 5, 3), "relu", "quadratic")],
    ids=lambda s: f"{s.sizes}-{s.activation}-{s.cost}",
)
def test_backprop_gradient_with_a_fixed_dropout_mask_matches_finite_differences(spec):
    """The gradient of the masked network's cost (units dropped, the kept ones scaled), L2 included."""
    rng = np.random.default_rng(4)
    params = init_params(spec, rng, dtype=np.float64)
    for b in params.biases:
        b[:] = rng.normal(0, 0.5, b.shape)
    X, y = rng.random((9, spec.sizes[0])), rng.integers(0, spec.sizes[-1], 9)
    masks = _masks(spec, 9, 0.4, rng)
    assert all(0 < (m == 0).mean() < 1 for m in masks)  # some units dropped, some kept
    analytic = gradients(spec, params, X, y, 0.7, 50, masks)
    assert_gradient_matches(params, analytic, lambda: _masked_cost(spec, params, X, y, masks, 0.7, 50))


def test_momentum_steps_match_a_hand_computed_update():
    """One full batch per epoch: v₁ = −η∇C(w₀), w₁ = w₀ + v₁; v₂ = μv₁ − η∇C(w₁), w₂ = w₁ + v₂,
    with ∇C the mean gradient plus the L2 term (λ/n) w on weights."""
    spec, data = NetworkSpec((20, 8, 4)), _data(n=60, dtype=np.float64)
    eta, mu, lmbda = 0.4, 0.7, 2.0
    config = TrainConfig(epochs=2, batch_size=60, eta=eta, lmbda=lmbda, momentum=mu, engine="numpy")
    w = init_params(spec, np.random.default_rng(0), dtype=np.float64)
    result = train(spec, config, data, params=w, check=NO_CHECK)
    velocity = [np.zeros_like(block) for block in w.layers]
    for _ in range(2):
        grads = gradients(spec, w, data.X, data.y, lmbda, len(data.X))
        velocity = [mu * v - eta * g for v, g in zip(velocity, grads.layers)]
        w = type(w)(tuple(block + v for block, v in zip(w.layers, velocity)))
    for got, want in zip(result.params.layers, w.layers):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_momentum_zero_and_options_off_leave_training_as_it_was():
    """The defaults are plain SGD: a config spelling them out trains the very same weights."""
    spec, data = NetworkSpec((20, 8, 4)), _data()
    plain = TrainConfig(epochs=2, batch_size=7, eta=0.3, lmbda=1.0, engine="numpy")
    spelt = TrainConfig(
        epochs=2,
        batch_size=7,
        eta=0.3,
        lmbda=1.0,
        engine="numpy",
        momentum=0.0,
        dropout=0.0,
        patience=0,
        eta_patience=None,
    )
    a, b = train(spec, plain, data, check=NO_CHECK), train(spec, spelt, data, check=NO_CHECK)
    for x, y in zip(a.params.layers, b.params.layers):
        np.testing.assert_array_equal(x, y)
    assert a.best_epoch is None and a.ended_by is None and [r.eta for r in a.history] == [0.3, 0.3]


def test_dropout_masks_keep_one_minus_p_and_change_training():
    spec = NetworkSpec((20, 30, 20, 4))
    keep = draw_keep(spec, 4000, 0.3, np.random.default_rng(0))
    assert keep.shape == (4000, 50) and abs(keep.mean() - 0.7) < 0.01
    data = _data()
    runs = [
        train(spec, TrainConfig(epochs=2, batch_size=10, eta=0.3, dropout=p, engine="numpy"), data, check=NO_CHECK)
        for p in (0.0, 0.5)
    ]
    assert not np.allclose(runs[0].params.layers[0], runs[1].params.layers[0])


def _records(accuracies):
    return [
        EpochRecord(
            epoch=i,
            training_cost=None,
            training_accuracy=None,
            validation_cost=None,
            validation_accuracy=a,
            seconds=0.0,
            eval_seconds=0.0,
        )
        for i, a in enumerate(accuracies, 1)
    ]


@pytest.mark.parametrize(
    "patience, accuracies, stop_at, best",
    [
        (3, [0.5, 0.6, 0.6, 0.55, 0.6, 0.9], 5, 2),  # equal is not better
        (2, [0.5, 0.6, 0.7, 0.65, 0.8, 0.7, 0.7], 7, 5),
        (1, [0.5, 0.4], 2, 1),
        (3, [0.5, 0.6, 0.7, 0.8], None, 4),  # never stalls
    ],
)
def test_early_stopping_stops_after_patience_epochs_without_a_better_validation_accuracy(
    patience, accuracies, stop_at, best
):
    schedule = Schedule(TrainConfig(epochs=10, batch_size=1, eta=1.0, patience=patience))
    ended = None
    for record in _records(accuracies):
        if schedule.after(record):
            ended = record.epoch
            break
    assert (ended, schedule.best_epoch, schedule.eta) == (stop_at, best, 1.0)


def test_the_eta_schedule_halves_after_eta_patience_stalled_epochs_and_stops_at_the_floor():
    """eta_patience 2: halved after epoch 3 (two stalled); epoch 4 is better, so next after 6,
    then after 8 (two since the halving): η₀/8 reaches η₀/eta_min_factor, so training ends there."""
    schedule = Schedule(TrainConfig(epochs=20, batch_size=1, eta=0.8, eta_patience=2, eta_min_factor=8))
    etas, ended = [], []
    for record in _records([0.5, 0.4, 0.4, 0.6, 0.5, 0.5, 0.55, 0.5, 0.7]):
        etas.append(schedule.eta)
        ended.append(schedule.after(record))
        if ended[-1]:
            break
    assert etas == [0.8, 0.8, 0.8, 0.4, 0.4, 0.4, 0.2, 0.2]
    assert ended[:-1] == [None] * 7 and ended[-1] == "η fell to η₀/8" and schedule.best_epoch == 4


@pytest.mark.parametrize("engine", ["numpy", pytest.param("compiled", marks=needs_numba)])
def test_train_with_patience_keeps_the_best_epochs_parameters(engine):
    """The result's params are those after its best epoch: a run of exactly that many epochs (same
    seed, same draws) ends with the same weights; the history runs on to the stop."""
    spec, data, val = NetworkSpec((20, 6, 4)), _greys(_data()), _greys(_data(n=40, seed=3))  # (one compiled variant)
    config = TrainConfig(epochs=30, batch_size=10, eta=2.0, seed=1, patience=2, engine=engine)
    result = train(spec, config, data, val, check=NO_CHECK)
    accuracies = [r.validation_accuracy for r in result.history]
    assert result.ended_by is not None and len(accuracies) == result.best_epoch + 2
    assert accuracies[result.best_epoch - 1] == max(accuracies) > max(accuracies[: result.best_epoch - 1], default=0)
    again = train(
        spec,
        TrainConfig(epochs=result.best_epoch, batch_size=10, eta=2.0, seed=1, engine=engine),
        data,
        val,
        check=NO_CHECK,
    )
    for x, y in zip(result.params.layers, again.params.layers):
        np.testing.assert_array_equal(x, y)


def test_a_callback_that_stops_at_a_new_best_epoch_keeps_that_epochs_parameters():
    """Schedule takes in the epoch before the callback sees it: a run stopped by its callback
    (a sweep's deadline) at an epoch that beat the earlier best keeps that epoch, not the earlier."""
    spec, data, val = NetworkSpec((20, 6, 4)), _greys(_data()), _greys(_data(n=40, seed=3))
    config = TrainConfig(epochs=30, batch_size=10, eta=2.0, seed=1, patience=30)
    accuracies = [r.validation_accuracy for r in train(spec, config, data, val, check=NO_CHECK).history]
    new_bests = [i + 1 for i, a in enumerate(accuracies) if a > max(accuracies[:i], default=-1)]
    assert len(new_bests) >= 2
    stop_at = new_bests[1]
    result = train(spec, config, data, val, check=NO_CHECK, callback=lambda record: record.epoch == stop_at)
    assert (result.stopped_early, result.best_epoch, len(result.history)) == (True, stop_at, stop_at)
    again = train(spec, TrainConfig(epochs=stop_at, batch_size=10, eta=2.0, seed=1), data, val, check=NO_CHECK)
    for x, y in zip(result.params.layers, again.params.layers):
        np.testing.assert_array_equal(x, y)


def test_train_halves_eta_as_the_schedule_says_and_records_it():
    spec, data, val = NetworkSpec((20, 6, 4)), _data(), _data(n=40, seed=3)
    config = TrainConfig(epochs=40, batch_size=10, eta=1.0, seed=2, eta_patience=1, eta_min_factor=16, engine="numpy")
    result = train(spec, config, data, val, check=NO_CHECK)
    replay = Schedule(config)
    for record in result.history:
        assert record.eta == replay.eta
        replay.after(record)
    assert result.history[-1].eta == 1 / 8 and result.ended_by == "η fell to η₀/16"


def test_schedule_and_patience_need_a_monitored_validation_set():
    with pytest.raises(ValueError, match="patience needs monitor_validation_accuracy"):
        TrainConfig(epochs=1, batch_size=1, eta=1.0, patience=2, monitor_validation_accuracy=False)
    with pytest.raises(ValueError, match="need a validation set"):
        train(NetworkSpec((20, 4)), TrainConfig(epochs=1, batch_size=1, eta=1.0, eta_patience=2), _data())


@pytest.mark.parametrize(
    "field, value",
    [
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("momentum", True),
        ("momentum", float("nan")),
        ("dropout", 1.0),
        ("dropout", -0.5),
        ("dropout", "0.5"),
        ("patience", -1),
        ("patience", 2.5),
        ("patience", True),
        ("eta_patience", -3),
        ("eta_patience", 1.0),
        ("eta_min_factor", 1.0),
        ("eta_min_factor", 0.5),
        ("eta_min_factor", float("inf")),
        ("eta_min_factor", None),
        ("max_norm", 0),
        ("max_norm", -3.0),
        ("max_norm", float("inf")),
        ("max_norm", "3"),
        ("max_norm", True),
    ],
)
def test_config_rejects_bad_option_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        TrainConfig(epochs=1, batch_size=1, eta=1.0, **{field: value})


def test_max_norm_out_of_range_is_refused_in_one_line():
    for value, requirement in [(0, "positive"), (-3.0, "positive"), (float("inf"), "a finite number")]:
        with pytest.raises(OptionError) as info:
            TrainConfig(epochs=1, batch_size=1, eta=1.0, max_norm=value)
        assert str(info.value) == f"max_norm must be {requirement}, got {value!r}"
    with pytest.raises(OptionError, match="^max_norm must be a finite number, got 'high'$"):
        TrainConfig(epochs=1, batch_size=1, eta=1.0, max_norm="high")
    assert TrainConfig(epochs=1, batch_size=1, eta=1.0).max_norm is None  # off by default


# Max-norm is a projection after each step, not a term of the cost: it has no gradient, so the
# finite-difference check above does not apply; these check the projection itself.


def _unit_norms(params):
    """The norm of each unit's incoming weights (biases aside), layer by layer."""
    return [np.linalg.norm(block[:, :-1].astype(np.float64), axis=1) for block in params.layers]


def test_max_norm_step_matches_a_hand_computed_projection():
    """One full batch: w₁ = w₀ − η∇C(w₀), then each hidden unit's incoming weights (a row of [Wᵀ | b]
    without b) longer than c scaled to c; the biases and the output layer as SGD left them."""
    spec, data = NetworkSpec((20, 8, 6, 4)), _data(n=60, dtype=np.float64)
    eta, lmbda, c = 0.4, 2.0, 0.6
    config = TrainConfig(epochs=1, batch_size=60, eta=eta, lmbda=lmbda, max_norm=c, engine="numpy")
    w = init_params(spec, np.random.default_rng(0), dtype=np.float64)
    result = train(spec, config, data, params=w, check=NO_CHECK)
    grads = gradients(spec, w, data.X, data.y, lmbda, len(data.X))
    want = [block - eta * g for block, g in zip(w.layers, grads.layers)]
    for block in want[:-1]:
        norms = np.linalg.norm(block[:, :-1], axis=1)
        block[:, :-1] *= np.minimum(1.0, c / norms)[:, None]
    assert all((norms > c).any() for norms in _unit_norms(Params(tuple(w.layers)))[:-1])  # it has work to do
    for got, expected in zip(result.params.layers, want):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", ["numpy", pytest.param("compiled", marks=needs_numba)])
@pytest.mark.parametrize("options", [{}, {"lmbda": 0.1}, {"momentum": 0.8}], ids=["sgd", "l2", "momentum"])
@pytest.mark.parametrize("spec", [NetworkSpec((20, 8, 4)), NetworkSpec((20, 9, 7, 4))], ids=["1hidden", "2hidden"])
def test_max_norm_bounds_every_hidden_units_incoming_weights(spec, options, engine):
    """After training with max_norm c (small enough that units reach it: untrained, they are near
    norm 1), no hidden unit's incoming weights are longer than c and some are at c (the last step
    pushed them out), while each hidden layer trained without the limit, and the output layer,
    which is not limited, are longer: without the limit the first check would fail."""
    c, data = 0.5, _greys(_data())
    settings = {"epochs": 2, "batch_size": 7, "eta": 0.3, "seed": 5, "engine": engine, **options}
    limited = train(spec, TrainConfig(**settings, max_norm=c), data, check=NO_CHECK)
    free = train(spec, TrainConfig(**settings), data, check=NO_CHECK)
    *hidden, output = _unit_norms(limited.params)
    for norms, unlimited in zip(hidden, _unit_norms(free.params)):
        assert norms.max() <= c * (1 + 1e-6) and unlimited.max() > c * 1.2
    assert any(np.isclose(norms, c, rtol=1e-5).any() for norms in hidden) and output.max() > c * 1.2


def test_the_table_holds_one_rule_per_config_field_and_the_packing_lists():
    assert tuple(OPTIONS) == tuple(field.name for field in dataclasses.fields(TrainConfig))
    assert list(PACKED_FIELDS) == ["epochs", "batch_size", *(f"monitor_{part}" for part in CURVES), "engine"]
    assert list(UNPACKED_OPTIONS) == ["momentum", "dropout", "max_norm", "patience", "eta_patience"]
    assert [name for name, rule in OPTIONS.items() if rule.pack is Pack.DIFFER] == ["eta", "lmbda", "seed"]
    assert unmet_need({"eta_patience": 2, "monitor_validation_accuracy": False}) == (
        "eta_patience",
        "monitor_validation_accuracy",
    )
    assert unmet_need({"patience": 0, "monitor_validation_accuracy": False}) is None  # 0: off
    with pytest.raises(UnmetNeed) as info:
        TrainConfig(epochs=1, batch_size=1, eta=1.0, eta_patience=2, monitor_validation_accuracy=False)
    assert (info.value.name, info.value.needed) == ("eta_patience", "monitor_validation_accuracy")


@pytest.mark.parametrize(
    "option", [{"momentum": 0.9}, {"dropout": 0.5}, {"max_norm": 3.0}, {"patience": 3}, {"eta_patience": 2}]
)
def test_packs_refuse_the_options_they_do_not_train(option):
    plain = TrainConfig(epochs=1, batch_size=10, eta=0.1)
    other = TrainConfig(epochs=1, batch_size=10, eta=0.2, **option)
    assert can_pack(plain, TrainConfig(epochs=1, batch_size=10, eta=0.2)) and not can_pack(plain, other)
    assert not can_pack(other, other)
    with pytest.raises(ValueError, match=f"configs\\[1\\] cannot be packed: {next(iter(option))}"):
        train_packed(NetworkSpec((20, 4)), [plain, other], _data(), _data(n=20, seed=1))


@needs_numba
@pytest.mark.parametrize(
    "options",
    [
        {"momentum": 0.9},
        {"momentum": 0.5, "lmbda": 3.0},
        {"momentum": 0.9, "batch_size": 50, "lmbda": 1.0},
        {"dropout": 0.5},
        {"dropout": 0.2, "lmbda": 3.0},
        {"dropout": 0.5, "momentum": 0.8, "lmbda": 1.0},
        {"eta_patience": 1, "eta_min_factor": 8, "epochs": 8},
        {"patience": 2, "epochs": 8, "eta": 1.0},
        {"max_norm": 0.5},
        {"max_norm": 0.5, "lmbda": 3.0},
        {"max_norm": 0.5, "momentum": 0.8},
        {"max_norm": 0.5, "momentum": 0.8, "lmbda": 1.0},
        {"max_norm": 0.5, "dropout": 0.3, "lmbda": 1.0},
    ],
    ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()),
)
@pytest.mark.parametrize(
    "spec",
    [NetworkSpec((20, 8, 4)), NetworkSpec((20, 9, 7, 4), "sigmoid"), NetworkSpec((20, 9, 7, 4), "relu", "quadratic")],
    ids=lambda s: f"{len(s.sizes) - 2}hidden-{s.activation}-{s.cost}",
)
def test_the_engines_train_the_options_alike(spec, options):
    """Same seed → same weights, masks and η per epoch → the same weights and curves to float32 rounding."""
    from tests.core.test_packed import _assert_same

    data, val = _greys(_data()), _greys(_data(n=50, seed=3))
    settings = {"epochs": 3, "batch_size": 7, "eta": 0.3, "seed": 5, **options}
    runs = [
        train(spec, TrainConfig(**settings, engine=engine), data, val, check=NO_CHECK)
        for engine in ("numpy", "compiled")
    ]
    assert [r.engine for r in runs] == ["numpy", "compiled"]
    _assert_same(runs[1], runs[0], RTOL, 50)
    assert [r.eta for r in runs[0].history] == [r.eta for r in runs[1].history]
    assert (runs[0].best_epoch, runs[0].ended_by) == (runs[1].best_epoch, runs[1].ended_by)
