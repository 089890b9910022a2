"""The homework's way of training: network2.py-style, one column vector at a time.

Kept as the oracle that the fast trainer is tested against and the baseline that
benchmarks compare with. It draws its randomness exactly as ``core.train.train`` does
(initial weights, then one permutation per epoch), so the same seed gives the same
mini-batches and, up to rounding, the same weights.
"""

from __future__ import annotations

import numpy as np

from core.config import TrainConfig
from core.functions import OUTPUT_ACTIVATION
from core.model import NetworkSpec, Params, init_params


def _act(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z - z.max())  # softmax of one column
    return e / e.sum()


def _act_prime(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return (z > 0).astype(z.dtype)
    s = _act("sigmoid", z)
    return s * (1 - s)


class ReferenceNetwork:
    """Weights as network2 keeps them: ``w[l] (fan_out, fan_in)``, ``b[l] (fan_out, 1)``."""

    def __init__(self, spec: NetworkSpec, params: Params) -> None:
        self.spec = spec
        self.w = [np.array(w.T) for w in params.weights]
        self.b = [np.array(b)[:, None] for b in params.biases]

    def params(self) -> Params:
        return Params.from_arrays([w.T for w in self.w], [b[:, 0] for b in self.b])

    def backprop(self, x: np.ndarray, y: np.ndarray) -> tuple[list, list]:
        """Gradients of one example's cost; x (d, 1), y one-hot (k, 1)."""
        spec, last = self.spec, len(self.w) - 1
        a, activations, zs = x, [x], []
        for l, (w, b) in enumerate(zip(self.w, self.b)):
            z = w @ a + b
            zs.append(z)
            a = _act(OUTPUT_ACTIVATION[spec.cost] if l == last else spec.activation, z)
            activations.append(a)
        delta = a - y  # BP1 for softmax + cross-entropy
        if spec.cost == "quadratic":
            delta = delta * _act_prime("sigmoid", zs[-1])
        nabla_w, nabla_b = [None] * len(self.w), [None] * len(self.w)
        for l in range(last, -1, -1):
            nabla_b[l] = delta
            nabla_w[l] = delta @ activations[l].T
            if l:
                delta = (self.w[l].T @ delta) * _act_prime(spec.activation, zs[l - 1])
        return nabla_w, nabla_b

    def update_mini_batch(self, X: np.ndarray, Y: np.ndarray, eta: float, lmbda: float, n: int) -> None:
        """One SGD step over the rows of X (m, d) and one-hot Y (m, k), example by example."""
        nabla_w = [np.zeros_like(w) for w in self.w]
        nabla_b = [np.zeros_like(b) for b in self.b]
        for x, y in zip(X, Y):
            dw, db = self.backprop(x[:, None], y[:, None])
            nabla_w = [nw + d for nw, d in zip(nabla_w, dw)]
            nabla_b = [nb + d for nb, d in zip(nabla_b, db)]
        m = len(X)
        self.w = [(1 - eta * lmbda / n) * w - (eta / m) * nw for w, nw in zip(self.w, nabla_w)]
        self.b = [b - (eta / m) * nb for b, nb in zip(self.b, nabla_b)]


def reference_train(
    spec: NetworkSpec, config: TrainConfig, X: np.ndarray, y: np.ndarray, params: Params | None = None
) -> ReferenceNetwork:
    """Train like ``core.train.train`` (same random draws), without monitoring."""
    rng = np.random.default_rng(config.seed)
    params = init_params(spec, rng) if params is None else params
    net = ReferenceNetwork(spec, params)
    X = np.asarray(X, dtype=params.dtype)
    Y = np.eye(spec.sizes[-1], dtype=params.dtype)[y]
    n, m = len(X), config.batch_size
    for _ in range(config.epochs):
        perm = rng.permutation(n)
        for k in range(0, n, m):
            rows = perm[k : k + m]
            net.update_mini_batch(X[rows], Y[rows], config.eta, config.lmbda, n)
    return net
