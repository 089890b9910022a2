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
