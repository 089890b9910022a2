"""The network: its shape, its parameters, and side-effect-free maths on them.

Arrays are batch-first: inputs ``X (n, 784)``, labels ``y (n,)``; layer ``l`` has
weights ``W[l] (fan_in, fan_out)`` and biases ``b[l] (fan_out,)``, so a layer is
``z = a @ W + b``. The cost of a set of n examples, as in the textbook, is
``C = (1/n) Σₓ Cₓ + λ/(2 n_train) Σ‖W‖²`` (biases are not regularised).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from core.functions import ACTIVATIONS, COSTS

EVAL_CHUNK = 8192  # rows per forward pass when evaluating a whole set: bounds memory


@dataclass(frozen=True)
class NetworkSpec:
    """Layer sizes, hidden activation and cost (which fixes the output layer)."""

    sizes: tuple[int, ...]
    activation: str = "relu"
    cost: str = "cross_entropy"

    def __post_init__(self) -> None:
        sizes = tuple(self.sizes) if isinstance(self.sizes, (list, tuple)) else self.sizes
        if (
            not isinstance(sizes, tuple)
            or len(sizes) < 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
        ):
            raise ValueError(f"sizes must be two or more positive integers, got {self.sizes!r}")
        object.__setattr__(self, "sizes", sizes)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {sorted(COSTS)}, got {self.cost!r}")

    @property
    def n_layers(self) -> int:
        """Number of weight layers (hidden layers + output)."""
        return len(self.sizes) - 1


@dataclass(frozen=True)
class Params:
    """The parameters, stored layer by layer as one block ``[Wᵀ | b]`` of shape (fan_out, fan_in + 1).

    One block per layer lets a single matrix product apply weights and bias to inputs
    that carry a trailing column of ones, and this transposed layout is the one BLAS
    multiplies fastest for small batches. ``weights`` and ``biases`` are views into the
    blocks with the textbook shapes ``W[l] (fan_in, fan_out)`` and ``b[l] (fan_out,)``.
    """

    layers: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise ValueError("layers must hold at least one layer")
        for l, block in enumerate(self.layers):
            if block.ndim != 2 or block.shape[1] < 2:
                raise ValueError(f"layer {l}: block must be (fan_out, fan_in + 1), got {block.shape}")
            if l and self.layers[l - 1].shape[0] != block.shape[1] - 1:
                raise ValueError(
                    f"layer {l}: fan_in {block.shape[1] - 1} != previous fan_out {self.layers[l - 1].shape[0]}"
                )

    @classmethod
    def from_arrays(cls, weights, biases, dtype: type | None = None) -> Params:
        """Build from textbook arrays ``W[l] (fan_in, fan_out)`` and ``b[l] (fan_out,)``."""
        if len(weights) != len(biases):
            raise ValueError(f"weights and biases must pair up, got {len(weights)} and {len(biases)}")
        layers = []
        for l, (w, b) in enumerate(zip(weights, biases)):
            w, b = np.asarray(w), np.asarray(b)
            if w.ndim != 2 or b.shape != (w.shape[1],):
                raise ValueError(f"layer {l}: weights {w.shape} and biases {b.shape} do not match")
            layers.append(np.ascontiguousarray(np.hstack([w.T, b[:, None]]), dtype=dtype or w.dtype))
        return cls(tuple(layers))

    @property
    def weights(self) -> tuple[np.ndarray, ...]:
        return tuple(block[:, :-1].T for block in self.layers)

    @property
    def biases(self) -> tuple[np.ndarray, ...]:
        return tuple(block[:, -1] for block in self.layers)

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.layers[0].shape[1] - 1, *(block.shape[0] for block in self.layers))

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0].dtype

    def copy(self, dtype: type | None = None) -> Params:
        """A deep copy, optionally cast (e.g. to float64 for gradient checks)."""
        return Params(tuple(np.array(block, dtype=dtype or block.dtype) for block in self.layers))

    def is_finite(self) -> bool:
        return all(np.isfinite(block).all() for block in self.layers)

    def l2(self) -> float:
        """Σ‖W‖² over all weight matrices, biases excluded (float64 accumulation)."""
        return float(sum(np.square(block[:, :-1], dtype=np.float64).sum() for block in self.layers))


def init_params(spec: NetworkSpec, rng: np.random.Generator, dtype: type = np.float32) -> Params:
    """Weights drawn from N(0, 1/fan_in); biases start at zero.

    (network2 also draws biases from N(0, 1); with ReLU that silences about half of
    the hidden units from the start, so they begin at zero here.)
    """
    weights = [
        rng.standard_normal((fan_in, fan_out)) / math.sqrt(fan_in)
        for fan_in, fan_out in zip(spec.sizes[:-1], spec.sizes[1:])
    ]
    return Params.from_arrays(weights, [np.zeros(w.shape[1]) for w in weights], dtype)


def one_hot(y: np.ndarray, k: int, dtype: type = np.float32) -> np.ndarray:
    """Labels (n,) → one-hot rows (n, k)."""
    out = np.zeros((len(y), k), dtype=dtype)
    out[np.arange(len(y)), y] = 1.0
    return out


def with_ones(X: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """X (n, d) → (n, d + 1) with a trailing column of ones, the bias input."""
    out = np.ones((len(X), X.shape[1] + 1), dtype=dtype or X.dtype)
    out[:, :-1] = X
    return out


class Workspace:
    """Preallocated buffers for forward and backward passes over batches of ``rows`` examples.

    Inputs to a layer carry a trailing column of ones (see ``Params``): the batch input
    ``x`` is (rows, sizes[0] + 1), and hidden activations live in ``inputs[l]`` of shape
    (rows, sizes[l] + 1). ``z[l]`` and ``delta[l]`` are (rows, sizes[l+1]); ``grads[l]``
    has the shape of ``params.layers[l]``. Nothing is allocated per batch, which is what
    makes mini-batches of 10 fast in NumPy; for the same reason the per-layer work is
    planned once per parameter set (``_plan``) rather than looked up on every batch.

    With ``trials`` = K every buffer gets a leading axis of K, and the passes run K
    networks stacked as blocks (K, fan_out, fan_in + 1) on their own K batches at once
    by batched matmul (``params`` is then anything whose ``layers`` are such stacks).
    Either way x may also come without its ones column (see ``forward``).
    """

    def __init__(self, spec: NetworkSpec, rows: int, dtype: type = np.float32, trials: int | None = None) -> None:
        self.activation = ACTIVATIONS[spec.activation]
        self.cost = COSTS[spec.cost]
        self._mm = np.dot if trials is None else np.matmul  # np.dot: less call overhead in 2-D
        lead = () if trials is None else (trials,)
        outs = spec.sizes[1:]
        self.inputs = [np.ones((*lead, rows, k + 1), dtype) for k in outs[:-1]]  # hidden activations + 1s
        self.z = [np.empty((*lead, rows, k), dtype) for k in outs]
        self.output = np.empty((*lead, rows, outs[-1]), dtype)
        self.delta = [np.empty((*lead, rows, k), dtype) for k in outs]
        self._delta_t = [d.swapaxes(-1, -2) for d in self.delta]
        self.scratch = [np.empty((*lead, rows, k), dtype) for k in outs]
        self.grads = [np.empty((*lead, k, i + 1), dtype) for i, k in zip(spec.sizes[:-1], outs)]
        self._grad_w0, self._grad_b0 = self.grads[0][..., :-1], self.grads[0][..., -1]  # for x without 1s
        self._ones = np.ones(rows, dtype)
        self._planned_for: Params | None = None
        self._x: np.ndarray | None = None
        self._masks: list[np.ndarray] | None = None  # the last forward's dropout masks
        self._raw: list[np.ndarray] | None = None  # with masks: the hidden activations before masking

    def _plan(self, params: Params) -> None:
        """Bind the views each layer needs: forward (Wᵀ|b)ᵀ, z, f, output; backward W, f', buffers."""
        last = len(self.z) - 1
        outs = [a[..., :-1] for a in self.inputs] + [self.output]  # where f(z[l]) goes
        self._forward = [
            (
                block.swapaxes(-1, -2),
                self.z[l],
                self.cost.output if l == last else self.activation.forward,
                outs[l],
                self.inputs[l] if l < last else self.output,
            )
            for l, block in enumerate(params.layers)
        ]
        self._first = (self._forward[0][0][..., :-1, :], self._forward[0][0][..., -1:, :])  # Wᵀ, b
        self._backward = [
            (
                l - 1,
                self.delta[l],
                self._delta_t[l],
                self.grads[l],
                self.inputs[l - 1],
                params.layers[l][..., :-1],
                self.delta[l - 1],
                self.z[l - 1],
                outs[l - 1],
                self.scratch[l - 1],
            )
            for l in range(last, 0, -1)
        ]
        self._planned_for = params

    def forward(self, params: Params, x: np.ndarray, masks: list[np.ndarray] | None = None) -> np.ndarray:
        """Fill z and the activations; return the output (rows, k).

        x is (rows, sizes[0] + 1) with the ones column, or a plain (rows, sizes[0]) input
        whose bias is then added apart (and summed apart in backward), as SGD feeds it:
        rows gather faster without the column. That product is always np.matmul, which
        reads the strided Wᵀ in place (np.dot copies it) and rounds alike in 2-D and stacked.
        ``masks`` (dropout, 2-D only): one (rows, sizes[l + 1]) array per hidden layer, 0 for a
        dropped unit and 1/(1 − p) for a kept one, multiplied into its activations.
        """
        if params is not self._planned_for:
            self._plan(params)
        if masks is not None and self._raw is None:
            self._raw = [np.empty_like(a) for a in self.scratch[:-1]]
        a, mm = x, self._mm
        for l, (block_t, z, f, out, a_next) in enumerate(self._forward):
            if l == 0 and x.shape[-1] == block_t.shape[-2] - 1:  # no ones column: add b apart
                np.matmul(x, self._first[0], z)
                z += self._first[1]
            else:
                mm(a, block_t, z)
            f(z, out)
            if masks is not None and l < len(masks):
                np.copyto(self._raw[l], out)  # f(z), for the derivative (sigmoid's is a (1 − a))
                out *= masks[l]
            a = a_next
        self._x, self._masks = x, masks
        return self.output

    def backward(self, params: Params, y_onehot: np.ndarray, scale: float) -> None:
        """Fill ``grads`` with ``scale · Σₓ ∂Cₓ/∂[Wᵀ | b]`` by backpropagation.

        Needs the activations of the last ``forward``. BP1 is the cost's own δᴸ; BP2
        δˡ = (δˡ⁺¹ Wˡ⁺¹ᵀ) ⊙ f'(zˡ); BP3 ∂C/∂bˡ = Σ δˡ and BP4 ∂C/∂Wˡ = aˡ⁻¹ᵀ δˡ come from
        one product with the ones column (two for a first layer whose x has none). The
        scale (η/m in training) is applied to δᴸ once, so it reaches every gradient.
        """
        if params is not self._planned_for or self._x is None:
            raise RuntimeError("backward needs a forward pass first")
        delta = self.delta[-1]
        self.cost.delta(self.output, y_onehot, delta, self.scratch[-1])
        delta *= scale
        derivative, mm, masks = self.activation.inplace_derivative, self._mm, self._masks
        for hidden, delta, delta_t, grad, a_prev, w, below, z, a, scratch in self._backward:
            mm(delta_t, a_prev, grad)
            mm(delta, w, below)
            if masks is None:
                derivative(z, a, below, scratch)
            else:  # a dropped unit passes no error back; a kept one its share, scaled as forward
                derivative(z, self._raw[hidden], below, scratch)
                below *= masks[hidden]
        if self._x.shape[-1] == self.grads[0].shape[-1]:
            mm(self._delta_t[0], self._x, self.grads[0])
        else:  # x without the ones column; matmul, as np.dot cannot write into a strided view
            np.matmul(self._delta_t[0], self._x, self._grad_w0)
            np.matmul(self._delta_t[0], self._ones, self._grad_b0)  # Σ over rows, faster than sum()


def _chunks(n: int):
    for start in range(0, n, EVAL_CHUNK):
        yield slice(start, min(start + EVAL_CHUNK, n))


def logits(spec: NetworkSpec, params: Params, X: np.ndarray) -> np.ndarray:
    """Output-layer weighted inputs zᴸ (n, sizes[-1]) for a whole set, in chunks."""
    out = np.empty((len(X), spec.sizes[-1]), dtype=params.dtype)
    for rows in _chunks(len(X)):
        ws = Workspace(spec, rows.stop - rows.start, params.dtype)
        ws.forward(params, np.asarray(X[rows], params.dtype))
        out[rows] = ws.z[-1]
    return out


def predict(spec: NetworkSpec, params: Params, X: np.ndarray) -> np.ndarray:
    """Most likely digit for each row of X: labels (n,)."""
    return logits(spec, params, X).argmax(axis=1)


def evaluate(
    spec: NetworkSpec, params: Params, X: np.ndarray, y: np.ndarray, lmbda: float = 0.0, n_train: int | None = None
) -> tuple[float, float]:
    """(cost, accuracy) of the network on (X, y).

    The cost is the mean per-example cost plus the L2 term λ/(2 n_train) Σ‖W‖², where
    n_train is the size of the training set (defaults to len(X)).
    """
    cost_fn = COSTS[spec.cost]
    total, correct = 0.0, 0
    for rows in _chunks(len(X)):
        ws = Workspace(spec, rows.stop - rows.start, params.dtype)
        a = ws.forward(params, np.asarray(X[rows], params.dtype))
        total += float(cost_fn.value(ws.z[-1], a, y[rows]))
        correct += int((a.argmax(axis=1) == y[rows]).sum())
    cost = total / len(X)
    if lmbda:
        cost += 0.5 * lmbda / (n_train or len(X)) * params.l2()
    return cost, correct / len(X)


def gradients(
    spec: NetworkSpec,
    params: Params,
    X: np.ndarray,
    y: np.ndarray,
    lmbda: float = 0.0,
    n_train: int | None = None,
    masks: list[np.ndarray] | None = None,
) -> Params:
    """∂C/∂(W, b) of ``evaluate``'s cost on (X, y), by the same backprop that trains.

    Returned as a ``Params`` whose weights and biases are the matching gradients. With
    dropout ``masks`` (see ``Workspace.forward``) it is the gradient of the masked network's cost.
    """
    ws = Workspace(spec, len(X), params.dtype)
    ws.forward(params, with_ones(X, params.dtype), masks)
    ws.backward(params, one_hot(y, spec.sizes[-1], params.dtype), 1.0 / len(X))
    grads = Params(tuple(ws.grads))
    decay = lmbda / (n_train or len(X))
    for g, w in zip(grads.weights, params.weights):
        g += decay * w  # ∂/∂W of λ/(2n) Σ‖W‖²; biases are not regularised
    return grads


def save_params(path: str | os.PathLike, spec: NetworkSpec, params: Params) -> None:
    """Write spec and parameters to a .npz that loads without pickle."""
    arrays = {f"W{l}": w for l, w in enumerate(params.weights)}
    arrays.update({f"b{l}": b for l, b in enumerate(params.biases)})
    meta = {"sizes": list(spec.sizes), "activation": spec.activation, "cost": spec.cost}
    np.savez(path, spec=np.array(json.dumps(meta)), **arrays)


def load_params(path: str | os.PathLike) -> tuple[NetworkSpec, Params]:
    """Read a file written by ``save_params``; ValueError names the file and the problem."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["spec"]))
            spec = NetworkSpec(tuple(meta["sizes"]), meta["activation"], meta["cost"])
            params = Params.from_arrays(
                [f[f"W{l}"] for l in range(spec.n_layers)], [f[f"b{l}"] for l in range(spec.n_layers)]
            )
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{os.fspath(path)}: not a saved network ({exc})") from None
    if params.sizes != spec.sizes:
        raise ValueError(f"{os.fspath(path)}: weights of sizes {params.sizes} do not match spec {spec.sizes}")
    return spec, params
