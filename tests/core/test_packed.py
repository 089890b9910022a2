"""Packed training: every trial of a pack comes out as ``train`` would train it alone."""

import time

import numpy as np
import pytest

import core.packed
from core.config import TrainConfig
from core.data import load_dataset
from core.history import CURVES, NO_CHECK, NonFiniteError, NotLearningError
from core.model import NetworkSpec, Workspace, evaluate, init_params, with_ones
from core.packed import Stack, can_pack, evaluate_stack, train_packed
from core.train import train
from tests.core.test_train import MONITOR_PAUSE, SGD_PAUSE, slowed, took
from tests.core.toy import toy_data as _data

SPECS = [NetworkSpec((20, 9, 7, 4)), NetworkSpec((20, 9, 7, 4), "sigmoid", "quadratic")]
SPEC_IDS = ["relu-ce-2hidden", "sigmoid-quad-2hidden"]


def _configs(k, epochs=4, batch_size=10, **kwargs):
    """k configs with their own eta, lmbda (some 0) and seed."""
    return [
        TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            eta=0.1 + 0.15 * i,
            lmbda=(0.0, 2.0, 0.5)[i % 3],
            seed=10 + i,
            **kwargs,
        )
        for i in range(k)
    ]


def _assert_same(packed, alone, rtol, n_examples):
    """Same history and weights up to rtol; accuracies within one example."""
    assert len(packed.history) == len(alone.history) and packed.stopped_early == alone.stopped_early
    for p, a in zip(packed.history, alone.history):
        assert p.epoch == a.epoch
        for curve in CURVES:
            pv, av = getattr(p, curve), getattr(a, curve)
            if av is None or pv is None:
                assert pv is av, curve
            elif curve.endswith("accuracy"):
                assert abs(pv - av) <= 1 / n_examples + 1e-12, curve
            else:
                np.testing.assert_allclose(pv, av, rtol=rtol, err_msg=curve)
    for p, a in zip(packed.params.layers, alone.params.layers):
        assert p.dtype == a.dtype
        # a weight near zero carries the rounding of updates as large as the layer's weights:
        # its absolute error is judged against the layer's scale (float32 on another CPU: 3e-7 at 0.6)
        np.testing.assert_allclose(p, a, rtol=rtol, atol=rtol * 1e-2 * np.abs(a).max())


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_float64_pack_matches_each_trial_alone(spec, k):
    """Own initial weights (given), own permutations, own eta and lmbda: same to rtol 1e-9."""
    data, val = _data(dtype=np.float64), _data(n=50, seed=3, dtype=np.float64)
    configs = _configs(k)
    inits = [init_params(spec, np.random.default_rng(c.seed), np.float64) for c in configs]
    results = train_packed(spec, configs, data, val, params=inits, check=NO_CHECK)  # arithmetic, not learning
    for config, init, result in zip(configs, inits, results):
        alone = train(spec, config, data, val, params=init, check=NO_CHECK)
        _assert_same(result, alone, 1e-9, 50)
        assert all(a.validation_accuracy == b.validation_accuracy for a, b in zip(result.history, alone.history))


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_float32_pack_matches_each_trial_alone(spec, k):
    """The default path: initial weights drawn from each config's seed, float32."""
    data, val = _data(), _data(n=50, seed=3)
    configs = _configs(k)
    for config, result in zip(configs, train_packed(spec, configs, data, val, check=NO_CHECK)):
        _assert_same(result, train(spec, config, data, val, check=NO_CHECK), 1e-4, 50)


@pytest.mark.parametrize("batch_size", [1, 7, 203, 500])
def test_batch_sizes_from_one_to_more_than_the_set(batch_size):
    spec, data = SPECS[0], _data(dtype=np.float64)
    configs = _configs(3, epochs=2, batch_size=batch_size)
    inits = [init_params(spec, np.random.default_rng(c.seed), np.float64) for c in configs]
    for config, init, result in zip(configs, inits, train_packed(spec, configs, data, params=inits)):
        _assert_same(result, train(spec, config, data, params=init), 1e-9, len(data.y))


def test_monitoring_flags_and_missing_validation_as_alone():
    spec, data = NetworkSpec((20, 8, 4)), _data()
    configs = _configs(2, monitor_training_cost=False, monitor_validation_accuracy=False)
    for val in (_data(n=40, seed=4), None):
        for config, result in zip(configs, train_packed(spec, configs, data, val)):
            _assert_same(result, train(spec, config, data, val), 1e-4, 40)
            assert result.history[0].training_cost is None


def test_a_trial_stopped_by_its_callback_leaves_and_the_others_go_on():
    spec, data, val = SPECS[0], _data(dtype=np.float64), _data(n=50, seed=3, dtype=np.float64)
    configs = _configs(4, epochs=5)
    inits = [init_params(spec, np.random.default_rng(c.seed), np.float64) for c in configs]
    seen = [[] for _ in configs]

    def watcher(i):
        def callback(record):
            seen[i].append(record.epoch)
            return i == 1 and record.epoch == 2

        return callback

    start = time.perf_counter()
    results = train_packed(
        spec, configs, data, val, params=inits, callbacks=[watcher(i) for i in range(4)], check=NO_CHECK
    )
    wall = time.perf_counter() - start
    assert seen == [[1, 2, 3, 4, 5], [1, 2], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]
    assert results[1].stopped_early and len(results[1].history) == 2
    shares = [r.seconds + r.eval_seconds for result in results for r in result.history]
    for e in range(5):  # the pack's epoch time, shared equally by the trials in it
        records = [r.history[e] for r in results if len(r.history) > e]
        assert len({r.seconds for r in records}) == 1 and records[0].seconds > 0
    assert sum(shares) <= wall  # the shares add up to the pack's times, parts of the call
    for i, (config, init, result) in enumerate(zip(configs, inits, results)):
        alone = train(
            spec, config, data, val, params=init, callback=lambda r, i=i: i == 1 and r.epoch == 2, check=NO_CHECK
        )
        _assert_same(result, alone, 1e-9, 50)


def test_a_packs_epoch_times_are_shared_by_the_trials_still_in_it(monkeypatch):
    """Each record holds its share of the pack's SGD pass (``seconds``) and of the monitoring
    after it (``eval_seconds``), each made slower by a known pause: the shares of an epoch add up
    to the pack's time, over the 4 trials of epochs 1-2 and the 3 left after one stops; all of
    it within the call's wall time."""
    monkeypatch.setattr(core.packed.PackedSGD, "epoch", slowed(core.packed.PackedSGD.epoch, SGD_PAUSE))
    monkeypatch.setattr(core.packed, "monitored", slowed(core.packed.monitored, MONITOR_PAUSE))
    configs = _configs(4, epochs=4, engine="numpy")
    start = time.perf_counter()
    results = train_packed(
        SPECS[0],
        configs,
        _data(),
        _data(n=50, seed=3),
        callbacks=[None, lambda r: r.epoch == 2, None, None],
        check=NO_CHECK,
    )
    wall = time.perf_counter() - start
    assert [len(r.history) for r in results] == [4, 2, 4, 4]
    total = 0.0
    for e in range(4):
        records = [r.history[e] for r in results if len(r.history) > e]
        assert len(records) == (4 if e < 2 else 3) and len({(r.seconds, r.eval_seconds) for r in records}) == 1
        pack_sgd, pack_monitoring = (len(records) * records[0].seconds, len(records) * records[0].eval_seconds)
        assert took(pack_sgd, SGD_PAUSE) and took(pack_monitoring, MONITOR_PAUSE), records[0]
        total += pack_sgd + pack_monitoring
    assert total <= wall


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_diverging_trial_fails_as_alone_and_the_others_are_unaffected(dtype):
    spec, data, val = SPECS[0], _data(dtype=dtype), _data(n=50, seed=3, dtype=dtype)
    configs = _configs(3)
    eta = 1e30 if dtype == np.float32 else 1e100  # float64 survives 1e30 here (dead ReLUs)
    configs[1] = TrainConfig(epochs=4, batch_size=10, eta=eta, seed=99)
    inits = [init_params(spec, np.random.default_rng(c.seed), dtype) for c in configs]
    results = train_packed(spec, configs, data, val, params=inits, check=NO_CHECK)
    with pytest.raises(NonFiniteError) as alone_error:
        train(spec, configs[1], data, val, params=inits[1], check=NO_CHECK)
    assert isinstance(results[1], NonFiniteError)
    assert (results[1].epoch, results[1].what) == (alone_error.value.epoch, alone_error.value.what)
    for i in (0, 2):
        _assert_same(
            results[i],
            train(spec, configs[i], data, val, params=inits[i], check=NO_CHECK),
            1e-9 if dtype == np.float64 else 1e-4,
            50,
        )


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("cost", ["cross_entropy", "quadratic"])
def test_a_pack_stops_its_trials_that_do_not_learn_as_alone_and_only_them(activation, cost):
    """η = 50 and 1e12 beside healthy η: the first are stopped as ``train`` stops them, the rest go on."""
    data = load_dataset("mnist-5k", n_train=300, n_validation=100, n_test=100)
    spec = NetworkSpec((784, 8, 10), activation, cost)
    configs = [
        TrainConfig(epochs=5, batch_size=10, eta=eta, seed=seed)
        for eta, seed in ((0.5, 0), (50.0, 1), (1e12, 2), (0.3, 3))
    ]
    results = train_packed(spec, configs, data.train, data.validation)
    for config, result in zip(configs, results):
        if config.eta < 1:
            assert len(result.history) == config.epochs
            _assert_same(result, train(spec, config, data.train, data.validation), 1e-4, 100)
            continue
        with pytest.raises(NotLearningError) as alone:
            train(spec, config, data.train, data.validation)
        assert type(result) is type(alone.value) and f"at epoch {result.epoch}" in str(result)
        assert (result.epoch, result.what) == (alone.value.epoch, alone.value.what)


@pytest.mark.parametrize("spec", [NetworkSpec((20, 4)), SPECS[1]], ids=["no-hidden", "sigmoid-quad-2hidden"])
def test_evaluate_stack_matches_evaluate_over_several_chunks(spec, monkeypatch):
    monkeypatch.setattr(core.packed, "EVAL_CHUNK", 40)  # 3 networks: chunks of 13 rows, the last short
    data = _data(n=50, dtype=np.float64)
    params = [init_params(spec, np.random.default_rng(s), np.float64) for s in range(3)]
    lmbda = np.array([0.0, 1.5, 4.0])
    costs, accuracies = evaluate_stack(spec, Stack.of(params), data.X, data.y, lmbda, 200)
    for p, l, cost, accuracy in zip(params, lmbda, costs, accuracies):
        expected = evaluate(spec, p, data.X, data.y, l, 200)
        np.testing.assert_allclose(cost, expected[0], rtol=1e-12)
        assert accuracy == expected[1]
    assert evaluate_stack(spec, Stack.of(params), data.X, data.y, lmbda, 200, want_cost=False)[0] is None


@pytest.mark.parametrize("trials", [None, 3])
def test_workspace_gradients_need_no_ones_column(trials):
    """The pack feeds inputs without the ones column: same gradients, 2-D or stacked."""
    spec = SPECS[1]
    params = [init_params(spec, np.random.default_rng(s), np.float64) for s in range(trials or 1)]
    stack = params[0] if trials is None else Stack.of(params)
    rng = np.random.default_rng(7)
    x = rng.random((*([trials] if trials else []), 6, 20))
    y = np.eye(4)[rng.integers(0, 4, x.shape[:-1])]
    grads = []
    for inputs in (with_ones(x.reshape(-1, 20)).reshape(*x.shape[:-1], 21), x):
        ws = Workspace(spec, 6, np.float64, trials)
        ws.forward(stack, inputs)
        ws.backward(stack, y, 0.5)
        grads.append([g.copy() for g in ws.grads])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_can_pack_allows_only_eta_lmbda_and_seed_to_differ():
    base = TrainConfig(epochs=3, batch_size=10, eta=0.1)
    assert can_pack(base, TrainConfig(epochs=3, batch_size=10, eta=0.7, lmbda=2.0, seed=5))
    for other in (
        TrainConfig(epochs=4, batch_size=10, eta=0.1),
        TrainConfig(epochs=3, batch_size=20, eta=0.1),
        TrainConfig(epochs=3, batch_size=10, eta=0.1, monitor_validation_cost=False),
    ):
        assert not can_pack(base, other)


def test_validation_names_what_is_wrong():
    spec, data = NetworkSpec((20, 8, 4)), _data()
    base = TrainConfig(epochs=1, batch_size=10, eta=0.1)
    with pytest.raises(ValueError, match=r"configs\[2\].*batch_size is 20, not 10"):
        train_packed(spec, [base, base, TrainConfig(epochs=1, batch_size=20, eta=0.1)], data)
    with pytest.raises(ValueError, match="monitor_training_accuracy"):
        train_packed(spec, [base, TrainConfig(epochs=1, batch_size=10, eta=0.1, monitor_training_accuracy=False)], data)
    with pytest.raises(ValueError, match="callbacks"):
        train_packed(spec, [base, base], data, callbacks=[None])
    with pytest.raises(ValueError, match="params"):
        train_packed(spec, [base], data, params=[init_params(NetworkSpec((20, 5, 4)), np.random.default_rng(0))])
    assert train_packed(spec, [], data) == []
