"""A small learnable problem for training tests."""

import numpy as np


class Set:
    """A labelled set: X (n, d), y (n,)."""

    def __init__(self, X, y):
        self.X, self.y = X, y


def toy_data(n=203, d=20, k=4, seed=0, dtype=np.float32) -> Set:
    """n examples whose label is the argmax of the first k features; 203 leaves a short last batch at 10."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, d)).astype(dtype)
    return Set(X, X[:, :k].argmax(axis=1).astype(np.int64))


def assert_gradient_matches(params, analytic, cost, eps: float = 1e-6, tolerance: float = 1e-7) -> None:
    """Every partial derivative of ``cost()`` (a function of ``params``' current values) by central
    differences in float64, against the ``analytic`` gradient (Params of the same shapes)."""
    for block, grad in zip(params.layers, analytic.layers):
        numeric = np.empty_like(block)
        for idx in np.ndindex(block.shape):
            old = block[idx]
            block[idx] = old + eps
            up = cost()
            block[idx] = old - eps
            down = cost()
            block[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        rel = np.linalg.norm(grad - numeric) / max(np.linalg.norm(grad) + np.linalg.norm(numeric), 1e-300)
        assert rel < tolerance, f"relative error {rel:.2e}"
