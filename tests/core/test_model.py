"""The model's maths: gradients by finite differences, shapes, save and load."""

import numpy as np
import pytest

from core.functions import COSTS, log_softmax, softmax
from core.model import NetworkSpec, Params, evaluate, gradients, init_params, load_params, predict, save_params
from tests.core.toy import assert_gradient_matches

SPECS = [
    NetworkSpec(sizes, activation, cost)
    for sizes in [(6, 5, 4), (7, 6, 5, 3), (5, 4, 4, 4, 3)]
    for activation in ("relu", "sigmoid")
    for cost in ("cross_entropy", "quadratic")
]


def _problem(spec, seed=0, n=9):
    rng = np.random.default_rng(seed)
    params = init_params(spec, rng, dtype=np.float64)
    for b in params.biases:  # non-zero biases so BP3 is exercised
        b[:] = rng.normal(0, 0.5, b.shape)
    X = rng.random((n, spec.sizes[0]))
    y = rng.integers(0, spec.sizes[-1], n)
    return params, X, y


@pytest.mark.parametrize("lmbda", [0.0, 0.7])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.sizes}-{s.activation}-{s.cost}")
def test_backprop_gradient_matches_finite_differences(spec, lmbda):
    """BP1–BP4 and the L2 term: every partial derivative, central differences in float64."""
    params, X, y = _problem(spec)
    n_train = 50
    analytic = gradients(spec, params, X, y, lmbda, n_train)
    assert_gradient_matches(params, analytic, lambda: evaluate(spec, params, X, y, lmbda, n_train)[0])


def test_relu_kink_is_avoided_by_the_check_data():
    """Guard for the check above: no ReLU pre-activation sits within ε of 0."""
    spec = NetworkSpec((6, 5, 4))
    params, X, _ = _problem(spec)
    z = X @ params.weights[0] + params.biases[0]
    assert np.abs(z).min() > 1e-4


def test_softmax_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    out = softmax(z, np.empty_like(z))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    assert np.isfinite(log_softmax(z)).all()
    assert np.isfinite(COSTS["cross_entropy"].value(z, out, np.array([2, 0])))


def test_params_views_have_textbook_shapes():
    spec = NetworkSpec((784, 30, 10))
    params = init_params(spec, np.random.default_rng(1))
    assert [w.shape for w in params.weights] == [(784, 30), (30, 10)]
    assert [b.shape for b in params.biases] == [(30,), (10,)]
    assert params.sizes == spec.sizes and params.dtype == np.float32
    assert abs(params.weights[0].std() - 1 / np.sqrt(784)) < 0.002  # N(0, 1/fan_in)
    assert not params.biases[0].any()
    params.weights[0][3, 4] = 7.0  # a view: writes reach the stored block
    assert params.layers[0][4, 3] == 7.0


def test_from_arrays_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="layer 0"):
        Params.from_arrays([np.zeros((3, 2))], [np.zeros(3)])
    with pytest.raises(ValueError, match="fan_in"):
        Params.from_arrays([np.zeros((3, 2)), np.zeros((4, 2))], [np.zeros(2), np.zeros(2)])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"sizes": (784,)}, "sizes"),
        ({"sizes": (784, 0, 10)}, "sizes"),
        ({"sizes": (784, 2.5, 10)}, "sizes"),
        ({"sizes": (4, 3), "activation": "tanh"}, "activation"),
        ({"sizes": (4, 3), "cost": "hinge"}, "cost"),
    ],
)
def test_spec_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        NetworkSpec(**kwargs)


def test_spec_accepts_a_list():
    assert NetworkSpec([784, 15, 10]).sizes == (784, 15, 10)


def test_save_and_load_round_trip_without_pickle(tmp_path):
    spec = NetworkSpec((12, 7, 5, 3), "sigmoid", "quadratic")
    params = init_params(spec, np.random.default_rng(2))
    path = tmp_path / "net.npz"
    save_params(path, spec, params)
    with np.load(path, allow_pickle=False) as f:  # nothing in the file needs pickle
        assert {"spec", "W0", "b2"} <= set(f.files)
    spec2, params2 = load_params(path)
    assert spec2 == spec
    for a, b in zip(params.layers, params2.layers):
        np.testing.assert_array_equal(a, b)
    X = np.random.default_rng(3).random((20, 12), dtype=np.float32)
    np.testing.assert_array_equal(predict(spec, params, X), predict(spec2, params2, X))


def test_load_rejects_a_bad_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        load_params(bad)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved network"):
        load_params(tmp_path / "other.npz")


def test_evaluate_counts_accuracy_and_adds_l2():
    spec = NetworkSpec((4, 3))
    params = Params.from_arrays([np.eye(4, 3)], [np.zeros(3)])
    X = np.eye(4)[:3]  # row i activates output i
    cost0, acc = evaluate(spec, params, X, np.array([0, 1, 0]))
    assert acc == pytest.approx(2 / 3)
    cost1, _ = evaluate(spec, params, X, np.array([0, 1, 0]), lmbda=2.0, n_train=10)
    assert cost1 - cost0 == pytest.approx(2.0 / (2 * 10) * 3)  # λ/(2n) Σ‖W‖², ‖I‖² = 3
