"""The compiled engine trains as the NumPy reference does, alone and packed; choosing the engine."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import core.engine
from core.config import TrainConfig
from core.engine import ENV_VAR, EngineUnavailable, resolve
from core.history import NO_CHECK, NotLearningError
from core.model import NetworkSpec, evaluate, init_params
from core.packed import train_packed
from core.train import train
from tests.core.test_packed import _assert_same
from tests.core.toy import toy_data as _data

# Not importorskip: numba must first be imported by core.compiled, which points its cache first.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")

SPECS = [
    NetworkSpec(sizes, activation, cost)
    for sizes in [(20, 8, 4), (20, 9, 7, 4)]
    for activation in ("relu", "sigmoid")
    for cost in ("cross_entropy", "quadratic")
]
RTOL = 1e-4  # float32 rounding after three epochs of SGD (see _assert_same for near-zero weights)


@pytest.fixture(autouse=True)
def no_engine_override(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _config(engine, **kwargs):
    return TrainConfig(**{"epochs": 3, "batch_size": 7, "eta": 0.3, "seed": 5, **kwargs, "engine": engine})


def _greys(data):
    """The set with its pixels rounded to k/255 (zeros included), as MNIST's are."""
    data.X = np.divide(np.round(np.maximum(data.X - 0.3, 0) * 255), np.float32(255), dtype=np.float32)
    return data


@pytest.mark.parametrize("pixels", [_greys, lambda data: data], ids=["k/255", "any"])
@pytest.mark.parametrize("lmbda", [0.0, 3.0])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{len(s.sizes) - 2}hidden-{s.activation}-{s.cost}")
def test_compiled_engine_matches_the_numpy_reference(spec, lmbda, pixels):
    """Same seed → same initial weights and mini-batches (203 rows at 7: a short last one) →
    the same weights and curves to float32 rounding, whatever the pixels (see SparseRows)."""
    data, val = pixels(_data()), pixels(_data(n=50, seed=3))
    numpy_run, compiled_run = (
        train(spec, _config(engine, lmbda=lmbda), data, val, check=NO_CHECK) for engine in ("numpy", "compiled")
    )
    assert (numpy_run.engine, compiled_run.engine) == ("numpy", "compiled")
    _assert_same(compiled_run, numpy_run, RTOL, 50)
    assert compiled_run.history[-1].training_cost < compiled_run.history[0].training_cost * 1.5


def test_a_network_without_hidden_layer_and_a_tiny_decay_scale_match_too():
    """sizes (20, 4): the first layer is the output; ηλ/n = 0.95 drives the first layer's lazy
    scale below its floor within a few steps, so it is folded back mid-epoch."""
    data = _data()
    for spec in (NetworkSpec((20, 4)), NetworkSpec((20, 6, 4), "sigmoid")):
        runs = [
            train(spec, _config(engine, eta=0.5, lmbda=0.95 * 203 / 0.5), data, check=NO_CHECK)
            for engine in ("numpy", "compiled")
        ]
        _assert_same(runs[1], runs[0], RTOL, len(data.y))


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[4]], ids=["1hidden", "2hidden"])
def test_max_norm_folds_the_lazy_scales_it_shrinks_and_matches_too(spec):
    """max_norm 1e-6 at η 3: the steps scale the first layer's units back through their lazy scales
    (W⁰ = s·V, its units' norms those of s·V), which in the one-hidden-layer network fall below
    their floor (to 1e-28 within an epoch) and are folded back mid-epoch, unit by unit; with L2
    the decay shrinks them too."""
    data = _data()
    for lmbda in (0.0, 1.0):
        runs = [
            train(spec, _config(engine, eta=3.0, lmbda=lmbda, max_norm=1e-6), data, check=NO_CHECK)
            for engine in ("numpy", "compiled")
        ]
        _assert_same(runs[1], runs[0], RTOL, len(data.y))


def test_a_compiled_pack_refuses_the_options_packs_do_not_train():
    from core.compiled import CompiledSGD

    spec, data = SPECS[0], _data()
    params = [init_params(spec, np.random.default_rng(seed)) for seed in (0, 1)]
    configs = [_config("compiled"), _config("compiled", max_norm=3.0)]
    with pytest.raises(ValueError, match="^max_norm trains one trial at a time, not a pack$"):
        CompiledSGD(spec, params, data.X, data.y, configs)


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[-1]], ids=["relu-ce", "sigmoid-quad-2hidden"])
def test_compiled_packs_match_each_trial_alone_and_the_numpy_pack(spec):
    """One seed for the η axis (one shared first-layer product), plus trials of two other
    seeds and with L2, which pack apart: each comes out as it would alone, and as NumPy packs it."""
    data, val = _data(), _data(n=50, seed=3)
    grid = [dict(eta=0.1 * (i + 1), seed=5) for i in range(5)] + [
        dict(eta=0.2, seed=6, lmbda=1.0),
        dict(eta=0.4, seed=7),
        dict(eta=0.3, seed=6),
    ]
    packed = {
        engine: train_packed(spec, [_config(engine, batch_size=10, **g) for g in grid], data, val, check=NO_CHECK)
        for engine in ("numpy", "compiled")
    }
    for i, g in enumerate(grid):
        alone = train(spec, _config("compiled", batch_size=10, **g), data, val, check=NO_CHECK)
        assert packed["compiled"][i].engine == "compiled"
        _assert_same(packed["compiled"][i], alone, 1e-6, 50)
        _assert_same(packed["compiled"][i], packed["numpy"][i], RTOL, 50)


@pytest.mark.parametrize("max_norm", [None, 0.5])
@pytest.mark.parametrize("sizes", [(20, 30, 4), (20, 70, 18, 4)], ids=["width-32", "width-80-fan-out-18"])
def test_wider_layers_match_the_numpy_reference(sizes, max_norm):
    """First layers padded to 32 and 80 floats (the product and update run 64, 32 and 16 columns
    at a time) and a dense fan-out of 18 (two vectors of weights per row, one reading past it);
    with max_norm, their padding is left out of the units' norms."""
    data, val = _greys(_data()), _greys(_data(n=50, seed=3))
    spec = NetworkSpec(sizes)
    runs = [
        train(spec, _config(engine, lmbda=3.0, max_norm=max_norm), data, val, check=NO_CHECK)
        for engine in ("numpy", "compiled")
    ]
    _assert_same(runs[1], runs[0], RTOL, 50)


def test_a_wide_pack_matches_each_trial_alone():
    """Eleven trials of one seed side by side: a first layer of 88 columns, padded to 96."""
    spec, data = SPECS[0], _greys(_data())
    configs = [_config("compiled", batch_size=10, eta=0.05 * (i + 1)) for i in range(11)]
    for packed, config in zip(train_packed(spec, configs, data, check=NO_CHECK), configs):
        _assert_same(packed, train(spec, config, data, check=NO_CHECK), 1e-6, len(data.y))


def _trained(spec, seeds, data):
    """Networks of ``spec`` after an epoch of SGD (weights that no longer look like their start)."""
    return [train(spec, _config("numpy", epochs=1, seed=s), data, check=NO_CHECK).params for s in seeds]


@pytest.mark.parametrize("pixels", [_greys, lambda data: data], ids=["k/255", "any"])
@pytest.mark.parametrize(
    "spec",
    SPECS + [NetworkSpec((20, 4)), NetworkSpec((20, 70, 18, 4), "sigmoid")],
    ids=lambda s: f"{'-'.join(map(str, s.sizes))}-{s.activation}-{s.cost}",
)
def test_compiled_evaluation_matches_evaluate(spec, pixels):
    """Costs (with the L2 term) and accuracies of one network and of a pack of five, packed
    first layers 5·h wide (padded), against core.model.evaluate and core.packed's NumPy way."""
    from core.compiled import evaluate_compiled
    from core.packed import Stack, evaluate_stack

    data = pixels(_data())
    params = _trained(spec, range(5), data)
    lmbdas = [0.0, 1.5, 4.0, 0.0, 0.3]
    costs, accuracies = evaluate_compiled(spec, params, data.X, data.y, lmbdas, 500)
    stacked = evaluate_stack(spec, Stack.of(params), data.X, data.y, np.array(lmbdas), 500, engine="compiled")
    assert stacked == (costs, accuracies)
    for k, (p, lmbda) in enumerate(zip(params, lmbdas)):
        cost, accuracy = evaluate(spec, p, data.X, data.y, lmbda, 500)
        np.testing.assert_allclose(costs[k], cost, rtol=1e-5)
        assert abs(accuracies[k] - accuracy) * len(data.y) <= 1  # a tie between two outputs may round apart
        assert evaluate_compiled(spec, [p], data.X, data.y, [lmbda], 500) == ([costs[k]], [accuracies[k]])
    assert evaluate_compiled(spec, params, data.X, data.y, lmbdas, 500, want_cost=False) == (None, accuracies)


def test_compiled_evaluation_of_a_diverged_network_is_not_finite():
    from core.compiled import evaluate_compiled

    spec, data = SPECS[0], _data()
    params = init_params(spec, np.random.default_rng(0))
    params.layers[1][0, 0] = np.nan
    assert np.isnan(evaluate_compiled(spec, [params], data.X, data.y, [0.0], 203)[0][0])


@pytest.mark.parametrize("greys", [True, False], ids=["k/255 pixels", "any values"])
def test_sparse_rows_hold_exactly_the_non_zero_entries(greys):
    from core.compiled import sparse_rows

    X = _data(n=64).X
    X[X < 0.6] = 0.0  # about 60 % zeros, a row of them too
    X[5] = 0.0
    if greys:
        X = np.divide(np.round(X * 255), np.float32(255), dtype=np.float32)
    rows = sparse_rows(X)
    assert (rows.codes.dtype == np.uint8) == greys
    dense = np.zeros_like(X)
    for r in range(len(X)):
        span = slice(rows.indptr[r], rows.indptr[r + 1])
        dense[r, rows.indices[span]] = rows.table[rows.codes[span]]
    np.testing.assert_array_equal(dense, X)
    assert rows.indptr[-1] == np.count_nonzero(X) and sparse_rows(X) is rows  # once per data set
    other = _data(n=8, seed=1).X
    assert sparse_rows(other) is not rows and sparse_rows(X) is rows  # every live set keeps its rows


def test_both_engines_stop_a_run_that_does_not_learn_alike():
    spec = NetworkSpec((20, 8, 4))
    errors = []
    for engine in ("numpy", "compiled"):
        with pytest.raises(NotLearningError) as info:
            train(spec, _config(engine, eta=1e30), _data())
        errors.append((type(info.value), info.value.epoch, info.value.what))
    assert errors[0] == errors[1]


def test_the_engine_is_chosen_by_config_environment_dtype_and_numba(monkeypatch):
    assert resolve("auto", np.float32) == "compiled" and resolve("numpy", np.float32) == "numpy"
    assert resolve("auto", np.float64) == "numpy"  # float32 only: auto falls back
    with pytest.raises(EngineUnavailable, match="float32"):
        resolve("compiled", np.float64)
    monkeypatch.setenv(ENV_VAR, "numpy")
    assert resolve("auto", np.float32) == "numpy" and resolve("compiled", np.float32) == "compiled"
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"{ENV_VAR}.*'fast'"):
        resolve("auto", np.float32)
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setattr(core.engine, "_unavailable", "numba cannot be imported (No module named 'numba')")
    assert resolve("auto", np.float32) == "numpy"
    with pytest.raises(EngineUnavailable, match="No module named 'numba'"):
        resolve("compiled", np.float32)
    with pytest.raises(ValueError, match="engine must be one of auto, numpy, compiled, got 'gpu'"):
        TrainConfig(epochs=1, batch_size=1, eta=0.1, engine="gpu")


def test_float64_params_train_on_numpy_by_default():
    spec = NetworkSpec((20, 8, 4))
    init = init_params(spec, np.random.default_rng(0), np.float64)
    assert train(spec, _config("auto"), _data(dtype=np.float64), params=init).engine == "numpy"


def test_compiled_code_is_cached_under_the_user_cache_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["MLP_SWEEP_CACHE"] = str(tmp_path)
    code = "import os, core.compiled; print(os.environ['NUMBA_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "numba")
