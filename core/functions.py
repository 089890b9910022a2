"""Activations and costs as pure functions in registries (scikit-learn's MLP layout).

Every function writes into an ``out`` array it is given, so the training loop
allocates nothing per mini-batch. Costs come as a matched pair with their output
layer: the cost's value and the output error δᴸ = ∂C/∂zᴸ (Nielsen's BP1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# --- hidden activations: f(z, out), and δ ← δ ⊙ f'(z) in place, from z or from a = f(z) ---


def relu(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0, out=out)


def inplace_relu_derivative(z: np.ndarray, a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> None:
    """δ ← δ ⊙ relu'(z): the slope is 1 where z > 0, else 0."""
    np.greater(z, 0.0, out=scratch)
    np.multiply(delta, scratch, out=delta)


def sigmoid(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    # 1 / (1 + e^-z) overflows harmlessly to 0 for very negative z; silence that warning.
    with np.errstate(over="ignore"):
        np.negative(z, out=out)
        np.exp(out, out=out)
        out += 1.0
        return np.reciprocal(out, out=out)


def inplace_sigmoid_derivative(z: np.ndarray, a: np.ndarray, delta: np.ndarray, scratch: np.ndarray) -> None:
    """δ ← δ ⊙ σ'(z), with σ'(z) = a (1 − a)."""
    np.subtract(1.0, a, out=scratch)
    scratch *= a
    np.multiply(delta, scratch, out=delta)


@dataclass(frozen=True)
class Activation:
    """A hidden-layer activation and the in-place product of its derivative with δ."""

    forward: Callable[[np.ndarray, np.ndarray], np.ndarray]
    inplace_derivative: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]  # (z, a, δ, scratch)


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(relu, inplace_relu_derivative),
    "sigmoid": Activation(sigmoid, inplace_sigmoid_derivative),
}


# --- output layers with their costs ----------------------------------------------------


def softmax(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of z (…, k), stable: the row maximum is subtracted first."""
    np.subtract(z, z.max(axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log softmax via log-sum-exp, finite for any finite z."""
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy_value(z: np.ndarray, a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Σ over the batch of −ln aᵧ, from the logits so that it never takes log(0)."""
    return -log_softmax(z)[..., np.arange(len(y)), y].sum(axis=-1, dtype=np.float64)


def cross_entropy_delta(a: np.ndarray, y_onehot: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """BP1 for softmax + cross-entropy: δᴸ = aᴸ − y."""
    np.subtract(a, y_onehot, out=out)


def quadratic_value(z: np.ndarray, a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Σ over the batch of ½‖a − y‖²."""
    diff = a.astype(np.float64)
    diff[..., np.arange(len(y)), y] -= 1.0
    return 0.5 * np.einsum("...ij,...ij->...", diff, diff)


def quadratic_delta(a: np.ndarray, y_onehot: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """BP1 for sigmoid + quadratic cost: δᴸ = (aᴸ − y) ⊙ σ'(zᴸ), σ' = a (1 − a)."""
    np.subtract(a, y_onehot, out=out)
    inplace_sigmoid_derivative(a, a, out, scratch)


@dataclass(frozen=True)
class Cost:
    """An output activation matched with its cost: value (summed over rows) and δᴸ."""

    output: Callable[[np.ndarray, np.ndarray], np.ndarray]
    value: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (…, rows, k) → (…): stacked nets at once
    delta: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]  # (a, y_onehot, out, scratch)


COSTS: dict[str, Cost] = {
    "cross_entropy": Cost(softmax, cross_entropy_value, cross_entropy_delta),
    "quadratic": Cost(sigmoid, quadratic_value, quadratic_delta),
}

OUTPUT_ACTIVATION = {"cross_entropy": "softmax", "quadratic": "sigmoid"}
