"""The compiled engine: ``core.train``'s SGD as one numba loop over an epoch (float32).

Same maths as the NumPy reference (``SGD``), arranged for speed at small batches:
* forward, backward and update of a mini-batch are fused in one compiled loop, so a
  step pays no per-call overhead;
* the first layer reads only the non-zero pixels of each input (``SparseRows``, built
  once per data set: about 81 % of MNIST's pixels are zero), for its product and for its
  weight gradient, which then only touches the rows of W⁰ of pixels the batch lit up;
* so that untouched rows need not be decayed, the first layer's L2 decay is a lazy
  scale per trial, W⁰ = s·V (s ← (1 − ηλ/n) s each step, folded back into V after each
  epoch); the other, small layers are decayed as in the reference;
* K trials that see the same mini-batches (same seed) train as one pack: their first
  layers sit side by side in one (d, K·h) matrix, so each input row and its non-zero
  pixels are read once for the pack; their other layers stay apart.
Importing this module imports numba; its compiled code is cached on disk under
``cache_dir()/numba`` ($NUMBA_CACHE_DIR wins when set; numba reads it when first imported,
so a process that imported numba before this module keeps numba's own cache location).
"""

from __future__ import annotations

import os

from core.data import cache_dir

os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))

from dataclasses import dataclass  # noqa: E402  (numba reads NUMBA_CACHE_DIR when imported)
from typing import Sequence  # noqa: E402

import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402  (numba's code generator: the first layer's vector steps)
from numba import njit, types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from core.model import NetworkSpec, Params  # noqa: E402
from core.train import TrainConfig  # noqa: E402

ACTIVATION_CODES = {"relu": 0, "sigmoid": 1}
COST_CODES = {"cross_entropy": 0, "quadratic": 1}  # with softmax and sigmoid outputs
TINY_SCALE = 1e-20  # a lazy scale this small is folded into the weights before it underflows
LANES = 8  # float32 lanes of an AVX2 vector: the first layers' width is padded to a multiple
FAST = {"reassoc", "contract"}  # let LLVM vectorise sums and fuse multiply-adds; NaNs still propagate

_ONE, _ZERO = np.float32(1.0), np.float32(0.0)


@dataclass(frozen=True)
class SparseRows:
    """The non-zero entries of X (N, d), row by row (CSR): row r's are at columns
    ``indices[indptr[r]:indptr[r+1]]`` with values ``table[codes[...]]``. Pixels of k/255
    (MNIST's) take one byte each, codes into GREYS; other data index a table of their values."""

    indptr: np.ndarray  # (N + 1,) int64
    indices: np.ndarray  # (nnz,) uint16 (uint32 beyond 65536 columns): unsigned, no wrap-around checks
    codes: np.ndarray  # (nnz,) uint8 into GREYS, or uint32 into a table of every value
    table: np.ndarray  # float32


@njit(cache=True)
def _count(X):
    """indptr of X (N, d) float32: where each row's non-zero entries start."""
    N, d = X.shape
    indptr = np.zeros(N + 1, np.int64)
    for r in range(N):
        count = 0
        for i in range(d):
            if X[r, i] != 0:
                count += 1
        indptr[r + 1] = indptr[r] + count
    return indptr


GREYS = np.divide(np.arange(256, dtype=np.float32), np.float32(255), dtype=np.float32)  # as core.data decodes


@njit(cache=True)
def _fill(X, indptr, indices, codes, table, greys):
    """The non-zero entries of X: columns into ``indices``, ``codes`` into ``table`` at ``indptr``.

    With ``greys`` (uint8 codes, GREYS as the table), returns False at the first value not
    in it; without, ``table`` gets every value and ``codes`` count up.
    """
    N, d = X.shape
    for r in range(N):
        p = indptr[r]
        for i in range(d):
            v = X[r, i]
            if v != 0:
                indices[p] = i
                if greys:
                    k = int(v * 255 + 0.5)
                    if k > 255 or table[k] != v:
                        return False
                    codes[p] = k
                else:
                    table[p] = v
                    codes[p] = p
                p += 1
    return True


_sparse_cache: list = []  # [(X, SparseRows)] for the last data set: X is held, so its address stays its own


def sparse_rows(X: np.ndarray) -> SparseRows:
    """X's non-zero pixels, computed once per data set (the last one is kept, by address)."""
    X = np.ascontiguousarray(X, np.float32)
    key = (X.__array_interface__["data"][0], X.shape)
    for held, rows in _sparse_cache:
        if (held.__array_interface__["data"][0], held.shape) == key:
            return rows
    indptr = _count(X)
    indices = np.empty(indptr[-1], np.uint16 if X.shape[1] <= 2**16 else np.uint32)
    rows = SparseRows(indptr, indices, np.empty(indptr[-1], np.uint8), GREYS)
    if not _fill(X, indptr, indices, rows.codes, GREYS, True):
        rows = SparseRows(indptr, indices, np.empty(indptr[-1], np.uint32), np.empty(indptr[-1], np.float32))
        _fill(X, indptr, indices, rows.codes, rows.table, False)
    _sparse_cache[:] = [(X, rows)]
    return rows


# --- the first layer's steps: SIMD vectors of 16 and 8 floats ------------------------------
# Written as LLVM vector code because numba's loops over a runtime width of a few vectors
# pay, per lit pixel, for alias checks between the rows and the accumulator, loop set-up and
# remainder loops (the width 16 got only 4-float vectors); constant-width loops instead get
# the pixel loop itself vectorised with gathers. Offsets count floats; nothing is bounds-checked.


def _vector_steps(lanes: int):
    """(add_rows, add_row): numba intrinsics that step ``lanes`` floats at a time."""
    vector = ir.VectorType(ir.FloatType(), lanes)

    def at(context, builder, array_type, array, offset_type, offset):
        """Pointer to the ``lanes`` floats of a float32 array from ``offset``."""
        data = context.make_array(array_type)(context, builder, array).data
        offset = context.cast(builder, offset, offset_type, types.intp)
        return builder.bitcast(builder.gep(data, [offset]), vector.as_pointer())

    def splat(builder, value):
        lane0 = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(lane0, ir.Constant(vector, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))

    def fma(builder, a, b, c):
        """a·b + c lane by lane, one rounding (llvm.fma)."""
        name = f"llvm.fma.v{lanes}f32"
        fn = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(vector, [vector] * 3), name)
        return builder.call(fn, [a, b, c])

    @intrinsic
    def add_rows(typingctx, z, zo, W, o0, o1, o2, o3, v0, v1, v2, v3):
        """z[zo:zo+lanes] += (v0·W[o0:o0+lanes] + v1·W[o1:…]) + (v2·W[o2:…] + v3·W[o3:…]): four lit pixels."""
        def codegen(context, builder, sig, args):
            t = sig.args
            rows = [builder.load(at(context, builder, t[2], args[2], t[i], args[i]), align=4) for i in range(3, 7)]
            v = [splat(builder, x) for x in args[7:]]
            pair01 = fma(builder, v[1], rows[1], builder.fmul(v[0], rows[0]))
            pair23 = fma(builder, v[3], rows[3], builder.fmul(v[2], rows[2]))
            target = at(context, builder, t[0], args[0], t[1], args[1])
            builder.store(builder.fadd(builder.load(target, align=4), builder.fadd(pair01, pair23)), target, align=4)
            return context.get_dummy_value()
        return types.void(z, zo, W, o0, o1, o2, o3, v0, v1, v2, v3), codegen

    @intrinsic
    def add_row(typingctx, z, zo, W, o, v):
        """z[zo:zo+lanes] += v·W[o:o+lanes] (one rounding per lane)."""
        def codegen(context, builder, sig, args):
            t = sig.args
            target = at(context, builder, t[0], args[0], t[1], args[1])
            row = builder.load(at(context, builder, t[2], args[2], t[3], args[3]), align=4)
            builder.store(fma(builder, splat(builder, args[4]), row, builder.load(target, align=4)), target, align=4)
            return context.get_dummy_value()
        return types.void(z, zo, W, o, v), codegen

    return add_rows, add_row


_add_rows16, _add_row16 = _vector_steps(2 * LANES)  # a 512-bit register: half the instructions per row
_add_rows8, _add_row8 = _vector_steps(LANES)  # the last 8 of a width that is no multiple of 16


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _first_product(zr, flat, Hp, pixels, codes, table):
    """zr (Hp,) += the first layer's rows of one input's lit ``pixels`` (values table[codes]);
    row i of W0 is flat[i·Hp : (i+1)·Hp]. One row's pixels as views indexed from 0: no
    wrap-around arithmetic on the indices, and a small function of its own keeps them in registers."""
    n = pixels.shape[0]
    for q in range(0, n - 3, 4):  # four pixels per pass over z: a quarter of its loads and stores
        v0, v1, v2, v3 = table[codes[q]], table[codes[q + 1]], table[codes[q + 2]], table[codes[q + 3]]
        o0, o1, o2, o3 = pixels[q] * Hp, pixels[q + 1] * Hp, pixels[q + 2] * Hp, pixels[q + 3] * Hp
        for c in range(0, Hp - LANES, 2 * LANES):
            _add_rows16(zr, c, flat, o0 + c, o1 + c, o2 + c, o3 + c, v0, v1, v2, v3)
        if Hp % (2 * LANES):
            c = Hp - LANES
            _add_rows8(zr, c, flat, o0 + c, o1 + c, o2 + c, o3 + c, v0, v1, v2, v3)
    for q in range(n - n % 4, n):
        v, o = table[codes[q]], pixels[q] * Hp
        for c in range(0, Hp - LANES, 2 * LANES):
            _add_row16(zr, c, flat, o + c, v)
        if Hp % (2 * LANES):
            _add_row8(zr, Hp - LANES, flat, o + Hp - LANES, v)


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _first_update(flat, Hp, pixels, codes, table, step):
    """The rows of one input's lit ``pixels`` −= value · step (Hp,), as _first_product reads them."""
    for q in range(pixels.shape[0]):
        v, o = table[codes[q]], pixels[q] * Hp
        for c in range(0, Hp - LANES, 2 * LANES):
            _add_row16(flat, o + c, step, c, -v)
        if Hp % (2 * LANES):
            _add_row8(flat, o + Hp - LANES, step, Hp - LANES, -v)


# --- the kernel: one epoch of K packed trials --------------------------------------------
# Layer l's weighted inputs, activations and errors for row r of the batch are
# z[l, r, k·w:(k+1)·w] for trial k (w = sizes[l+1]); buffers are padded to the widest layer.


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _hidden(z, a, w, code):
    """a[:w] = f(z[:w]) for a hidden activation (0 relu, 1 sigmoid)."""
    if code == 0:
        for j in range(w):
            a[j] = z[j] if z[j] > _ZERO else _ZERO
    else:
        for j in range(w):
            a[j] = _ONE / (_ONE + np.exp(-z[j]))


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _output(z, a, start, w, cost):
    """a = softmax (cost 0) or sigmoid (cost 1) of z over [start, start + w)."""
    if cost == 0:
        top = z[start]
        for j in range(start + 1, start + w):
            top = max(top, z[j])
        total = _ZERO
        for j in range(start, start + w):
            a[j] = np.exp(z[j] - top)
            total += a[j]
        for j in range(start, start + w):
            a[j] /= total
    else:
        for j in range(start, start + w):
            a[j] = _ONE / (_ONE + np.exp(-z[j]))


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _epoch(perm, m, indptr, indices, codes, table, labels, sizes, act, cost, W0, b0, W, b, eta, decay):
    """One epoch of SGD for K trials on the row order ``perm`` (n,), batch size m.

    sizes (L+1,): one trial's layer sizes. W0 (d, ≥ K·h) and b0 (≥ K·h,): the first layers
    side by side, padded with zeros to a whole number of SIMD vectors; W (L-1, K, fan_in,
    fan_out) and b (L-1, K, fan_out): the others, padded to the widest. The pixels of row e
    are ``indices`` and ``table[codes]`` at ``indptr[e]:indptr[e+1]`` (see SparseRows).
    eta, decay (K,): η and 1 − ηλ/n. Updates W0, b0, W, b in place.
    """
    K, L, n = eta.shape[0], sizes.shape[0] - 1, perm.shape[0]
    widest = 0
    for l in range(1, L + 1):
        widest = max(widest, K * sizes[l])
    H, Hp = K * sizes[1], W0.shape[1]  # the pack's first-layer width, and padded to whole vectors
    flat = W0.reshape(W0.size)  # row i of W0 from i·Hp
    widest = max(widest, Hp)
    z = np.zeros((L, m, widest), np.float32)  # zeros: the padding stays zero throughout
    a = np.zeros((L, m, widest), np.float32)
    delta = np.zeros((L, m, widest), np.float32)
    h = sizes[1]
    s = np.ones(K)  # lazy scales: W⁰ of trial k is s[k] · W0[:, k·h:(k+1)·h]
    col_s = np.ones(Hp, np.float32)  # s per column of W0
    col_c = np.ones(Hp, np.float32)  # 1 / s after the step's decay, per column
    step = np.zeros(Hp, np.float32)
    grad = np.empty(widest, np.float32)
    for start in range(0, n, m):
        mb = min(m, n - start)
        # forward: the first layer from the non-zero pixels, for the whole pack at once
        for r in range(mb):
            e = perm[start + r]
            zr = z[0, r]
            for j in range(Hp):
                zr[j] = _ZERO
            _first_product(zr, flat, Hp, indices[indptr[e]:indptr[e + 1]], codes[indptr[e]:indptr[e + 1]], table)
            for j in range(Hp):
                zr[j] = zr[j] * col_s[j] + b0[j]
            if L == 1:
                for k in range(K):
                    _output(zr, a[0, r], k * h, h, cost)
            else:
                _hidden(zr, a[0, r], H, act)
        for l in range(1, L):
            fi, fo = sizes[l], sizes[l + 1]
            for r in range(mb):
                for k in range(K):
                    zr = z[l, r]
                    for j in range(fo):
                        zr[k * fo + j] = b[l - 1, k, j]
                    for i in range(fi):
                        v = a[l - 1, r, k * fi + i]
                        w = W[l - 1, k, i]
                        for j in range(fo):
                            zr[k * fo + j] += v * w[j]
                if l == L - 1:
                    for k in range(K):
                        _output(z[l, r], a[l, r], k * fo, fo, cost)
                else:
                    _hidden(z[l, r], a[l, r], K * fo, act)
        # output error δᴸ, scaled by η/m as in the reference
        k_out = sizes[L]
        for r in range(mb):
            y = labels[perm[start + r]]
            out, d = a[L - 1, r], delta[L - 1, r]
            for k in range(K):
                scale = np.float32(eta[k] / mb)
                for j in range(k * k_out, (k + 1) * k_out):
                    d[j] = out[j]
                d[k * k_out + y] -= _ONE
                for j in range(k * k_out, (k + 1) * k_out):
                    if cost == 1:
                        d[j] *= out[j] * (_ONE - out[j])
                    d[j] *= scale
        # backward through the dense layers, each updated once the error below it is known
        for l in range(L - 1, 0, -1):
            fi, fo = sizes[l], sizes[l + 1]
            for r in range(mb):
                for k in range(K):
                    for i in range(fi):
                        w = W[l - 1, k, i]
                        total = _ZERO
                        for j in range(fo):
                            total += delta[l, r, k * fo + j] * w[j]
                        delta[l - 1, r, k * fi + i] = total
                below, zb, ab = delta[l - 1, r], z[l - 1, r], a[l - 1, r]
                if act == 0:
                    for i in range(K * fi):
                        if zb[i] <= _ZERO:
                            below[i] = _ZERO
                else:
                    for i in range(K * fi):
                        below[i] *= ab[i] * (_ONE - ab[i])
            for k in range(K):
                dk = np.float32(decay[k])
                for i in range(fi):
                    for j in range(fo):
                        grad[j] = _ZERO
                    for r in range(mb):
                        v = a[l - 1, r, k * fi + i]
                        for j in range(fo):
                            grad[j] += v * delta[l, r, k * fo + j]
                    w = W[l - 1, k, i]
                    for j in range(fo):
                        w[j] = w[j] * dk - grad[j]
                for j in range(fo):
                    total = _ZERO
                    for r in range(mb):
                        total += delta[l, r, k * fo + j]
                    b[l - 1, k, j] -= total
        # the first layer: decay by the lazy scale, subtract the gradient on lit rows only
        for k in range(K):
            scaled = s[k] * decay[k]
            if abs(scaled) < TINY_SCALE:  # fold before it underflows: V ← s·d·V, s ← 1
                for i in range(W0.shape[0]):
                    for j in range(k * h, (k + 1) * h):
                        W0[i, j] *= np.float32(scaled)
                scaled = 1.0
            s[k] = scaled
            for j in range(k * h, (k + 1) * h):
                col_s[j] = np.float32(scaled)
                col_c[j] = np.float32(1.0 / scaled)
        for r in range(mb):
            e = perm[start + r]
            d = delta[0, r]
            for j in range(Hp):
                step[j] = d[j] * col_c[j]
            _first_update(flat, Hp, indices[indptr[e]:indptr[e + 1]], codes[indptr[e]:indptr[e + 1]], table, step)
        for j in range(H):
            total = _ZERO
            for r in range(mb):
                total += delta[0, r, j]
            b0[j] -= total
    for j in range(H):  # fold the scales back: W0 holds the weights again
        if col_s[j] != _ONE:
            for i in range(W0.shape[0]):
                W0[i, j] *= col_s[j]


class CompiledSGD:
    """Epochs of mini-batch SGD for K trials on the same permutations, by the compiled kernel.

    ``trials`` are the K networks' Params; their blocks are read once and written back
    after every epoch, so they always hold the weights, as ``SGD``'s do. X (n, d) float32
    and its labels y (n,) are the training set.
    """

    def __init__(self, spec: NetworkSpec, trials: Sequence[Params], X: np.ndarray, y: np.ndarray,
                 configs: Sequence[TrainConfig]) -> None:
        self.spec, self.trials = spec, list(trials)
        n = len(X)
        self.rows = sparse_rows(X)
        self.labels = np.ascontiguousarray(y, np.int64)
        self.m = min(configs[0].batch_size, n)
        self.eta = np.array([c.eta for c in configs], np.float64)
        self.decay = 1.0 - self.eta * np.array([c.lmbda for c in configs]) / n  # as SGD computes it
        self.sizes = np.array(spec.sizes, np.int64)
        self.codes = ACTIVATION_CODES[spec.activation], COST_CODES[spec.cost]
        K, L = len(self.trials), spec.n_layers
        width = -(-K * spec.sizes[1] // LANES) * LANES
        self.W0 = np.zeros((spec.sizes[0], width), np.float32)  # (d, K·h + padding)
        self.W0[:, :K * spec.sizes[1]] = np.concatenate([p.layers[0][:, :-1].T for p in self.trials], axis=1)
        self.b0 = np.zeros(width, np.float32)
        self.b0[:K * spec.sizes[1]] = np.concatenate([p.layers[0][:, -1] for p in self.trials])
        fan_in, fan_out = max(spec.sizes[1:-1], default=1), max(spec.sizes[2:], default=1)
        self.W = np.zeros((L - 1, K, fan_in, fan_out), np.float32)
        self.b = np.zeros((L - 1, K, fan_out), np.float32)
        for k, p in enumerate(self.trials):
            for l in range(1, L):
                block = p.layers[l]  # (fan_out, fan_in + 1)
                self.W[l - 1, k, :block.shape[1] - 1, :block.shape[0]] = block[:, :-1].T
                self.b[l - 1, k, :block.shape[0]] = block[:, -1]

    def epoch(self, perm: np.ndarray) -> None:
        """One pass in the order ``perm`` (n,); then the trials' Params hold the new weights."""
        rows = self.rows
        _epoch(np.ascontiguousarray(perm, np.int64), self.m, rows.indptr, rows.indices, rows.codes, rows.table,
               self.labels, self.sizes, *self.codes, self.W0, self.b0, self.W, self.b, self.eta, self.decay)
        h = self.spec.sizes[1]
        for k, p in enumerate(self.trials):
            p.layers[0][:, :-1] = self.W0[:, k * h:(k + 1) * h].T
            p.layers[0][:, -1] = self.b0[k * h:(k + 1) * h]
            for l in range(1, len(p.layers)):
                block = p.layers[l]
                block[:, :-1] = self.W[l - 1, k, :block.shape[1] - 1, :block.shape[0]].T
                block[:, -1] = self.b[l - 1, k, :block.shape[0]]


class PackedCompiledSGD:
    """``core.packed.PackedSGD`` on the compiled engine: trials of the same seed (so the same
    permutations) train as one ``CompiledSGD`` pack, trials of other seeds in packs of their own."""

    def __init__(self, spec: NetworkSpec, stack, X: np.ndarray, y: np.ndarray,
                 configs: Sequence[TrainConfig]) -> None:
        self.stack = stack  # a core.packed.Stack: its trials' slices are written after every epoch
        seeds: dict[int, list[int]] = {}
        for k, config in enumerate(configs):
            seeds.setdefault(config.seed, []).append(k)
        self.packs = [(ks[0], CompiledSGD(spec, [stack.trial(k) for k in ks], X, y, [configs[k] for k in ks]))
                      for ks in seeds.values()]

    def epoch(self, perms: np.ndarray) -> None:
        """One pass; trial k visits rows perms[k] (K, n), the same for every trial of a seed."""
        for first, pack in self.packs:
            pack.epoch(perms[first])


def warm_up() -> None:
    """Load (or compile) every kernel now: a fork server calls this before workers fork."""
    X = np.eye(3, 784, dtype=np.float32)
    spec = NetworkSpec((784, 2, 3))
    params = Params.from_arrays([np.zeros((784, 2)), np.zeros((2, 3))], [np.zeros(2), np.zeros(3)], np.float32)
    CompiledSGD(spec, [params], X, np.arange(3), [TrainConfig(epochs=1, batch_size=2, eta=0.1)]).epoch(np.arange(3))
