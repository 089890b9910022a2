"""The compiled engine: ``core.train``'s SGD as one numba loop over an epoch (float32).

Same maths as the NumPy reference (``SGD``), arranged for speed at small batches:
* forward, backward and update of a mini-batch are fused in one compiled loop, so a
  step pays no per-call overhead;
* the first layer reads only the non-zero pixels of each input (``SparseRows``, built
  once per data set: about 81 % of MNIST's pixels are zero), for its product and for its
  weight gradient, which then only touches the rows of W⁰ of pixels the batch lit up;
* so that untouched rows need not be decayed, the first layer's L2 decay is a lazy
  scale per column (hidden unit), W⁰ = s·V (s ← (1 − ηλ/n) s each step, folded back into V
  after each epoch); the other, small layers are decayed as in the reference;
* K trials that see the same mini-batches (same seed) train as one pack: their first
  layers sit side by side in one (d, K·h) matrix, so each input row and its non-zero
  pixels are read once for the pack; their other layers stay apart; a wide first layer sits
  on 2 MB pages (``_rows_matrix``), as its rows are read in a random order;
* momentum (one trial, or a pack of one μ) gives every weight a velocity that moves it on
  every step, so the first layer's update is then dense: its lit rows' gradients go into
  the velocity, then one pass over W⁰ applies μ, the L2 term and the velocity;
* dropout (one trial) masks the hidden activations as the epoch's ``keep`` says;
* max-norm (one trial) reads every hidden unit's incoming weights after each step (a pass over
  W⁰) and scales those longer than c back to c: in the first layer through its lazy scales.
Importing this module imports numba; its compiled code is cached on disk under
``cache_dir()/numba`` ($NUMBA_CACHE_DIR wins when set; numba reads it when first imported,
so a process that imported numba before this module keeps numba's own cache location).
"""

from __future__ import annotations

import mmap
import os

from core.data import cache_dir

os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))

from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402  (numba reads NUMBA_CACHE_DIR when imported)

import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402  (numba's code generator: the first layer's vector steps)
from numba import njit, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from core.config import Pack, TrainConfig, packed  # noqa: E402
from core.model import NetworkSpec, Params  # noqa: E402

RELU, SIGMOID = 0, 1  # the kernels' codes of the hidden activations
CROSS_ENTROPY, QUADRATIC = 0, 1  # and of the costs, with softmax and sigmoid outputs
ACTIVATION_CODES = {"relu": RELU, "sigmoid": SIGMOID}
COST_CODES = {"cross_entropy": CROSS_ENTROPY, "quadratic": QUADRATIC}
TINY_SCALE = 1e-20  # a lazy scale this small is folded into the weights before it underflows
LANES = 16  # float32 lanes of an AVX-512 vector: the first layers' width is padded to a multiple
CACHE_LINE = 64  # bytes
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


SPARSE_SETS = 4  # data sets whose SparseRows are kept: a worker's training, validation and test sets
_sparse_cache: list = []  # [(X, SparseRows)], newest last: X is held, so its address stays its own


def sparse_rows(X: np.ndarray) -> SparseRows:
    """X's non-zero pixels, computed once per data set (the last SPARSE_SETS are kept, by the
    address and shape of their pixels: any view of a set, a memory map's included, finds them),
    so neither epochs nor the evaluations after them rebuild them."""
    X = np.ascontiguousarray(X, np.float32)
    key = (X.__array_interface__["data"][0], X.shape)
    for i, (held, rows) in enumerate(_sparse_cache):
        if (held.__array_interface__["data"][0], held.shape) == key:
            _sparse_cache.append(_sparse_cache.pop(i))
            return rows
    indptr = _count(X)
    indices = np.empty(indptr[-1], np.uint16 if X.shape[1] <= 2**16 else np.uint32)
    rows = SparseRows(indptr, indices, np.empty(indptr[-1], np.uint8), GREYS)
    if not _fill(X, indptr, indices, rows.codes, GREYS, True):
        rows = SparseRows(indptr, indices, np.empty(indptr[-1], np.uint32), np.empty(indptr[-1], np.float32))
        _fill(X, indptr, indices, rows.codes, rows.table, False)
    _sparse_cache[:] = [*_sparse_cache[1 - SPARSE_SETS :], (X, rows)]
    return rows


# --- the first layer over one input's lit pixels: LLVM vector loops of 16 floats ----------
# Written as LLVM IR because numba's loops over a runtime width of a few vectors pay, per
# lit pixel, for alias checks between the rows and the accumulator, loop set-up and
# remainder loops. Here one call runs the whole pixel loop of one input for up to four
# 16-float vectors of columns, which stay in registers for the whole loop: the product's
# sums (four sets, one per pixel of a group of four, so that the multiply-adds' latency
# overlaps), the update's step. Offsets count floats; nothing is bounds-checked.
SPAN = 4  # vectors of columns per call: 4 × 4 sums + rows in flight fit AVX-512's 32 registers
GROUP = 4  # pixels per pass of the product, each into its own set of sums


def _splat(builder, value):
    """A vector of LANES copies of the float ``value``."""
    vector = ir.VectorType(ir.FloatType(), LANES)
    lane0 = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(
        lane0, ir.Constant(vector, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    )


def _fma(builder, a, b, c):
    """a·b + c lane by lane, one rounding (llvm.fma)."""
    name = f"llvm.fma.v{LANES}f32"
    fn = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(a.type, [a.type] * 3), name)
    return builder.call(fn, [a, b, c])


def _span_steps(vectors: int):
    """A numba intrinsic over the lit pixels p0 … p1 − 1 of one input, for the ``vectors`` ·
    LANES columns c … of the first layer (row i of W⁰ at flat[i·Hp]):
    span(out, flat, Hp, c, indices, codes, table, p0, p1, updating) is the product
    out[c:…] = Σ value · row[c:…], or with ``updating`` the update: each row[c:…] −= value · out[c:…].
    """
    vector = ir.VectorType(ir.FloatType(), LANES)
    widths = [ir.Constant(ir.IntType(64), LANES * j) for j in range(vectors)]

    def operands(context, builder, sig, args):
        """Data pointers of the arrays, the integers as intp, and pixel(p) → (row offset + c, value)."""
        data = [
            context.make_array(t)(context, builder, a).data
            if isinstance(t, types.Array)
            else context.cast(builder, a, t, types.intp)
            for t, a in zip(sig.args, args)
        ]
        out, flat, Hp, c, indices, codes, table, p0, p1 = data

        def pixel(p):
            i = builder.zext(builder.load(builder.gep(indices, [p])), Hp.type)
            code = builder.zext(builder.load(builder.gep(codes, [p])), Hp.type)
            return builder.add(builder.mul(i, Hp), c), builder.load(builder.gep(table, [code]))

        return out, flat, c, p0, p1, pixel

    def at(builder, base, offset, j):
        """The j-th vector of floats from base[offset]."""
        return builder.bitcast(builder.gep(base, [builder.add(offset, widths[j])]), vector.as_pointer())

    def product(builder, z, flat, c, p0, p1, pixel):
        sums = [[cgutils.alloca_once_value(builder, ir.Constant(vector, None)) for _ in widths] for _ in range(GROUP)]

        def add(p, sums):
            offset, value = pixel(p)
            value = _splat(builder, value)
            for j, total in enumerate(sums):
                row = builder.load(at(builder, flat, offset, j), align=4)
                builder.store(_fma(builder, value, row, builder.load(total)), total)

        groups = builder.udiv(builder.sub(p1, p0), p1.type(GROUP))
        with cgutils.for_range(builder, groups) as loop:
            first = builder.add(p0, builder.mul(loop.index, p1.type(GROUP)))
            for g in range(GROUP):
                add(builder.add(first, p1.type(g)), sums[g])
        with cgutils.for_range(builder, p1, start=builder.add(p0, builder.mul(groups, p1.type(GROUP)))) as loop:
            add(loop.index, sums[0])
        for j in range(len(widths)):
            s = [builder.load(sums[g][j]) for g in range(GROUP)]
            builder.store(
                builder.fadd(builder.fadd(s[0], s[1]), builder.fadd(s[2], s[3])), at(builder, z, c, j), align=4
            )

    def update(builder, step, flat, c, p0, p1, pixel):
        steps = [builder.load(at(builder, step, c, j), align=4) for j in range(len(widths))]
        with cgutils.for_range(builder, p1, start=p0) as loop:
            offset, value = pixel(loop.index)
            value = _splat(builder, builder.fmul(value, ir.Constant(ir.FloatType(), -1.0)))
            for j, s in enumerate(steps):
                row = at(builder, flat, offset, j)
                builder.store(_fma(builder, value, s, builder.load(row, align=4)), row, align=4)

    @intrinsic
    def span(typingctx, out, flat, Hp, c, indices, codes, table, p0, p1, updating):
        def codegen(context, builder, sig, args):
            operand = operands(context, builder, sig.replace(args=sig.args[:-1]), args[:-1])
            with builder.if_else(context.is_true(builder, sig.args[-1], args[-1])) as (then, otherwise):
                with then:
                    update(builder, *operand)
                with otherwise:
                    product(builder, *operand)
            return context.get_dummy_value()

        return types.void(out, flat, Hp, c, indices, codes, table, p0, p1, updating), codegen

    return span


@intrinsic
def _dense(typingctx, out, oo, M, mo, ms, x, xo, xs, n):
    """out's LANES floats from oo = Σ_{t<n} x[xo + t·xs] · (M's LANES floats from mo + t·ms), offsets
    and strides counting floats of the (C-ordered) arrays: LANES outputs of a dense layer's
    product (x its inputs, M its weights' rows) or of its weight gradient (x one input over the
    batch, M the errors above), the sums in registers (two sets, so multiply-adds overlap)."""

    def codegen(context, builder, sig, args):
        out, oo, M, mo, ms, x, xo, xs, n = [
            context.make_array(t)(context, builder, a).data
            if isinstance(t, types.Array)
            else context.cast(builder, a, t, types.intp)
            for t, a in zip(sig.args, args)
        ]
        vector = ir.VectorType(ir.FloatType(), LANES)
        sums = [cgutils.alloca_once_value(builder, ir.Constant(vector, None)) for _ in range(2)]

        def add(t, total):
            value = builder.load(builder.gep(x, [builder.add(xo, builder.mul(t, xs))]))
            row = builder.bitcast(builder.gep(M, [builder.add(mo, builder.mul(t, ms))]), vector.as_pointer())
            builder.store(_fma(builder, _splat(builder, value), builder.load(row, align=4), builder.load(total)), total)

        pairs = builder.udiv(n, n.type(2))
        with cgutils.for_range(builder, pairs) as loop:
            t = builder.mul(loop.index, n.type(2))
            add(t, sums[0])
            add(builder.add(t, n.type(1)), sums[1])
        with cgutils.for_range(builder, n, start=builder.mul(pairs, n.type(2))) as loop:
            add(loop.index, sums[0])
        target = builder.bitcast(builder.gep(out, [oo]), vector.as_pointer())
        builder.store(builder.fadd(builder.load(sums[0]), builder.load(sums[1])), target, align=4)
        return context.get_dummy_value()

    return types.void(out, oo, M, mo, ms, x, xo, xs, n), codegen


@intrinsic
def _prefetch(typingctx, array, offset):
    """Ask for the cache line of array[offset] (llvm.prefetch, for reading, kept close)."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        at = builder.bitcast(
            builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)]), ir.IntType(8).as_pointer()
        )
        i32 = ir.IntType(32)
        fn = builder.module.globals.get("llvm.prefetch.p0") or ir.Function(
            builder.module, ir.FunctionType(ir.VoidType(), [at.type, i32, i32, i32]), "llvm.prefetch.p0"
        )
        builder.call(fn, [at, i32(0), i32(3), i32(1)])  # for reading, kept in every cache level, data
        return context.get_dummy_value()

    return types.void(array, offset), codegen


_span1, _span2, _span3, _span4 = (_span_steps(v) for v in range(1, SPAN + 1))


@njit(cache=True, error_model="numpy")
def _prefetch_rows(rows, indptr, indices, codes):
    """Fetch the pixel lists of ``rows`` (the next mini-batch's: in random order they miss the cache)."""
    for e in rows:
        for p in range(indptr[e], indptr[e + 1], CACHE_LINE // indices.itemsize):
            _prefetch(indices, p)
        for p in range(indptr[e], indptr[e + 1], CACHE_LINE // codes.itemsize):
            _prefetch(codes, p)


@njit(cache=True, error_model="numpy")
def _first_layer(out, flat, Hp, indices, codes, table, p0, p1, updating):
    """The first layer over the lit pixels p0 … p1 − 1 (values table[codes]) of one input: its
    product out (Hp,) = Σ value · row, or ``updating``, its update: each row −= value · out."""
    for c in range(0, Hp, SPAN * LANES):
        rest = Hp - c
        if rest >= 4 * LANES:
            _span4(out, flat, Hp, c, indices, codes, table, p0, p1, updating)
        elif rest == 3 * LANES:
            _span3(out, flat, Hp, c, indices, codes, table, p0, p1, updating)
        elif rest == 2 * LANES:
            _span2(out, flat, Hp, c, indices, codes, table, p0, p1, updating)
        else:
            _span1(out, flat, Hp, c, indices, codes, table, p0, p1, updating)


# --- the kernel: one epoch of K packed trials, in parts ------------------------------------
# Layer l's weighted inputs, activations and errors for row r of the batch are
# z[l, r, k·w:(k+1)·w] for trial k (w = sizes[l+1]); buffers are padded to the widest layer.
# The parts are inlined into the kernel in numba's IR (``inlined``): no calls, the kernel's flags.

inlined = njit(inline="always", fastmath=FAST, error_model="numpy")


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _hidden(z, a, w, code):
    """a[:w] = f(z[:w]) for a hidden activation (RELU or SIGMOID)."""
    if code == RELU:
        for j in range(w):
            a[j] = z[j] if z[j] > _ZERO else _ZERO
    else:
        for j in range(w):
            a[j] = _ONE / (_ONE + np.exp(-z[j]))


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _mask(a, keep, at, w, scale):
    """Inverted dropout of a[:w]: kept units (keep[at + j]) scaled by ``scale`` = 1/(1 − p), others 0."""
    for j in range(w):
        a[j] = a[j] * scale if keep[at + j] else _ZERO


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _output(z, a, start, w, cost):
    """a = softmax (CROSS_ENTROPY) or sigmoid (QUADRATIC) of z over [start, start + w)."""
    if cost == CROSS_ENTROPY:
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


@inlined
def _widest(sizes, K, Hp):
    """The buffers' row width: the pack's widest layer (the first padded to Hp), and LANES
    more for a vector read past the last trial's units."""
    widest = 0
    for l in range(1, sizes.shape[0]):
        widest = max(widest, K * sizes[l])
    return max(widest, Hp) + LANES


@inlined
def _dense_product(zr, grad, W, b, l, K, fi, fo, a, at):
    """Dense layer l's weighted inputs of one row for each trial k: zr[k·fo + j] =
    Σ_i a[at + k·fi + i] · W[l − 1, k, i, j] + b[l − 1, k, j] (``at`` counting floats of a)."""
    fan_in, fop = W.shape[2], W.shape[3]
    for k in range(K):
        for c in range(0, fo, LANES):
            _dense(grad, c, W, ((l - 1) * K + k) * fan_in * fop + c, fop, a, at + k * fi, 1, fi)
        for j in range(fo):
            zr[k * fo + j] = grad[j] + b[l - 1, k, j]


@inlined
def _batch_sum(delta, l, j, mb):
    """Σ over the batch's rows of delta[l, r, j]: a bias's gradient (its step, as δ holds η/m)."""
    total = _ZERO
    for r in range(mb):
        total += delta[l, r, j]
    return total


@inlined
def _forward_first(z, a, rows, flat, Hp, pixels, col_s, b0, sizes, K, act, cost, keep, ks):
    """The first layer of the pack for the batch's examples ``rows`` (mb,), from their lit pixels
    (``pixels`` = indptr, indices, codes, table): z[0, r] = s · x W⁰ + b⁰ (s the lazy scales per
    column), then a[0, r] its activations (the outputs if it is the last layer), dropout's mask
    keep[r] (empty: none) on the hidden units."""
    indptr, indices, codes, table = pixels
    L, h = sizes.shape[0] - 1, sizes[1]
    for r in range(rows.shape[0]):
        e = rows[r]
        zr = z[0, r]
        _first_layer(zr, flat, Hp, indices, codes, table, indptr[e], indptr[e + 1], False)
        for j in range(Hp):
            zr[j] = zr[j] * col_s[j] + b0[j]
        if L == 1:
            for k in range(K):
                _output(zr, a[0, r], k * h, h, cost)
        else:
            _hidden(zr, a[0, r], K * h, act)
            if keep.shape[0] > 0:
                _mask(a[0, r], keep[r], 0, h, ks)


@inlined
def _forward_dense(z, a, l, mb, W, b, grad, sizes, K, act, cost, keep, ks):
    """Dense layer l of the pack for the batch's mb rows: z[l] from a[l − 1], then a[l] (the
    outputs at the last layer; else hidden units, masked by keep[r] if not empty)."""
    L, m, widest = sizes.shape[0] - 1, z.shape[1], z.shape[2]
    fi, fo = sizes[l], sizes[l + 1]
    for r in range(mb):
        _dense_product(z[l, r], grad, W, b, l, K, fi, fo, a, ((l - 1) * m + r) * widest)
        if l == L - 1:
            for k in range(K):
                _output(z[l, r], a[l, r], k * fo, fo, cost)
        else:
            _hidden(z[l, r], a[l, r], K * fo, act)
            if keep.shape[0] > 0:  # hidden layer l's columns of keep start after those of the layers before
                _mask(a[l, r], keep[r], sizes[1 : l + 1].sum(), fo, ks)


@inlined
def _output_error(delta, a, labels, rows, eta, k_out, cost):
    """δᴸ of the batch's examples ``rows`` (mb,): a − one-hot(label), times σ'(z) for QUADRATIC,
    scaled by η/mb (each trial's η) as in the reference."""
    L, K, mb = a.shape[0], eta.shape[0], rows.shape[0]
    for r in range(mb):
        y = labels[rows[r]]
        out, d = a[L - 1, r], delta[L - 1, r]
        for k in range(K):
            scale = np.float32(eta[k] / mb)
            for j in range(k * k_out, (k + 1) * k_out):
                d[j] = out[j]
            d[k * k_out + y] -= _ONE
            for j in range(k * k_out, (k + 1) * k_out):
                if cost == QUADRATIC:
                    d[j] *= out[j] * (_ONE - out[j])
                d[j] *= scale


@inlined
def _error_below(delta, z, a, W, l, mb, sizes, K, act, drop, ks, kept):
    """δ of layer l − 1 for the batch's mb rows: δˡ back through layer l's weights (W before
    their update), times the activation's derivative there (with dropout, of the masked a:
    ks = 1/(1 − p), kept = 1 − p)."""
    fi, fo = sizes[l], sizes[l + 1]
    for r in range(mb):
        for k in range(K):
            for i in range(fi):
                total = _ZERO
                for j in range(fo):
                    total += delta[l, r, k * fo + j] * W[l - 1, k, i, j]
                delta[l - 1, r, k * fi + i] = total
        below, zb, ab = delta[l - 1, r], z[l - 1, r], a[l - 1, r]
        if drop:  # from the masked a = f(z)·mask/(1 − p): f'(z)·mask/(1 − p) without the mask
            if act == RELU:
                for i in range(K * fi):
                    below[i] = below[i] * ks if ab[i] > _ZERO else _ZERO
            else:
                for i in range(K * fi):
                    below[i] *= ab[i] * (_ONE - ab[i] * kept)
        elif act == RELU:
            for i in range(K * fi):
                if zb[i] <= _ZERO:
                    below[i] = _ZERO
        else:
            for i in range(K * fi):
                below[i] *= ab[i] * (_ONE - ab[i])


@inlined
def _update_dense(W, b, VW, Vb, delta, a, grad, l, mb, sizes, decay, mu):
    """Dense layer l's step from the batch's δˡ and a[l − 1]: W ← (1 − ηλ/n) W − Σ δ aᵀ and
    b ← b − Σ δ, or with momentum μ > 0 through the velocities VW, Vb."""
    K, m, widest = decay.shape[0], delta.shape[1], delta.shape[2]
    fi, fo = sizes[l], sizes[l + 1]
    for k in range(K):
        dk, ck = np.float32(decay[k]), np.float32(1.0 - decay[k])
        for i in range(fi):
            for c in range(0, fo, LANES):  # lanes past fo read other units: not used
                _dense(
                    grad,
                    c,
                    delta,
                    l * m * widest + k * fo + c,
                    widest,
                    a,
                    (l - 1) * m * widest + k * fi + i,
                    widest,
                    mb,
                )
            if mu > _ZERO:
                for j in range(fo):
                    v = mu * VW[l - 1, k, i, j] - grad[j] - ck * W[l - 1, k, i, j]
                    VW[l - 1, k, i, j] = v
                    W[l - 1, k, i, j] += v
            else:
                for j in range(fo):
                    W[l - 1, k, i, j] = W[l - 1, k, i, j] * dk - grad[j]
        for j in range(fo):
            total = _batch_sum(delta, l, k * fo + j, mb)
            if mu > _ZERO:
                Vb[l - 1, k, j] = mu * Vb[l - 1, k, j] - total
                b[l - 1, k, j] += Vb[l - 1, k, j]
            else:
                b[l - 1, k, j] -= total


@inlined
def _update_first_momentum(W0, V0, b0, Vb0, step, delta, rows, pixels, col_l2, mu, H):
    """The first layer's step with momentum μ: the lit rows' gradients go into the velocity
    (V ← V − g/μ, from the batch's examples ``rows``), then V ← μV − (ηλ/n) W, W ← W + V
    over all of W⁰ (every weight moves), and likewise the biases."""
    indptr, indices, codes, table = pixels
    Hp = W0.shape[1]
    vflat = V0.reshape(V0.size)
    for r in range(rows.shape[0]):
        e = rows[r]
        d = delta[0, r]
        for j in range(Hp):
            step[j] = d[j] / mu
        _first_layer(step, vflat, Hp, indices, codes, table, indptr[e], indptr[e + 1], True)
    for i in range(W0.shape[0]):
        for j in range(Hp):
            v = mu * V0[i, j] - col_l2[j] * W0[i, j]
            V0[i, j] = v
            W0[i, j] += v
    for j in range(H):
        total = _batch_sum(delta, 0, j, rows.shape[0])  # before μ·Vb0[j], which may then fuse with it
        Vb0[j] = mu * Vb0[j] - total
        b0[j] += Vb0[j]


@inlined
def _decay_lazily(W0, s, col_s, col_c, decay, h):
    """The first layer's L2 decay as its lazy scales: s[j] ← s[j] · (1 − ηλ/n) for each column j
    of trial k, folded into the column of W0 (then s[j] ← 1) before it falls below TINY_SCALE;
    col_s and col_c get each column's s and 1/s. (Loops without a branch: LLVM vectorises them.)"""
    H, tiny = decay.shape[0] * h, False
    for k in range(decay.shape[0]):
        for j in range(k * h, (k + 1) * h):
            s[j] *= decay[k]
            tiny |= abs(s[j]) < TINY_SCALE
    if tiny:  # fold before it underflows: V ← s·V, s ← 1
        for j in range(H):
            if abs(s[j]) < TINY_SCALE:
                for i in range(W0.shape[0]):
                    W0[i, j] *= np.float32(s[j])
                s[j] = 1.0
    for j in range(H):
        col_s[j] = np.float32(s[j])
        col_c[j] = np.float32(1.0 / s[j])


@inlined
def _update_first(flat, b0, step, col_c, delta, rows, pixels, H):
    """The first layer's step without momentum, once decayed (``_decay_lazily``): each lit row of
    W⁰ (flat, its rows from i·Hp) −= pixel · δ⁰/s, for the batch's examples ``rows``; b⁰ −= Σ δ⁰."""
    indptr, indices, codes, table = pixels
    Hp = step.shape[0]
    for r in range(rows.shape[0]):
        e = rows[r]
        d = delta[0, r]
        for j in range(Hp):
            step[j] = d[j] * col_c[j]
        _first_layer(step, flat, Hp, indices, codes, table, indptr[e], indptr[e + 1], True)
    for j in range(H):
        b0[j] -= _batch_sum(delta, 0, j, rows.shape[0])


@inlined
def _column_norms(M, sq, w):
    """sq[j] = Σᵢ M[i, j]² for the first w columns of M (rows i): squared norms of units' incoming weights."""
    for j in range(w):
        sq[j] = _ZERO
    for i in range(M.shape[0]):
        for j in range(w):
            sq[j] += M[i, j] * M[i, j]


@inlined
def _limit_columns(M, sq, w, c):
    """Max-norm on the first w columns of M, each a unit's incoming weights: those longer than c
    are scaled to norm c (sq, (≥ w,), then holds each column's factor)."""
    _column_norms(M, sq, w)
    over = False
    for j in range(w):
        norm = np.sqrt(sq[j])
        over |= norm > c
        sq[j] = np.float32(c / norm) if norm > c else _ONE
    if over:
        for i in range(M.shape[0]):
            for j in range(w):
                M[i, j] *= sq[j]


@njit(cache=True, fastmath=FAST, error_model="numpy")  # not inlined: the step's loop stays as it was without it
def _limit_norms(W0, s, col_s, W, sq, c, sizes, K, lazily):
    """Max-norm after a step, if c > 0 (Srivastava et al. 2014): every hidden unit's incoming
    weights, its bias aside, scaled to norm c if longer (sq: scratch, ≥ every layer's width). In
    the first layer they are a column of s·W0: with ``lazily`` (no momentum) its norm is
    |s|·‖column‖ and the scaling goes into s and col_s; else s is 1 and the column itself is
    scaled. The output layer is not limited."""
    if c <= 0:  # off
        return
    L = sizes.shape[0] - 1
    if L > 1:
        H = K * sizes[1]
        if lazily:
            _column_norms(W0, sq, H)
            for j in range(H):
                norm = abs(s[j]) * np.sqrt(np.float64(sq[j]))
                if norm > c:
                    s[j] *= c / norm
                    col_s[j] = np.float32(s[j])
        else:
            _limit_columns(W0, sq, H, c)
    for l in range(1, L - 1):
        for k in range(K):
            _limit_columns(W[l - 1, k, : sizes[l]], sq, sizes[l + 1], c)


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _epoch(
    perm,
    m,
    indptr,
    indices,
    codes,
    table,
    labels,
    sizes,
    act,
    cost,
    W0,
    b0,
    W,
    b,
    eta,
    decay,
    momentum,
    V0,
    Vb0,
    VW,
    Vb,
    keep,
    keep_scale,
    max_norm,
):
    """One epoch of SGD for K trials on the row order ``perm`` (n,), batch size m.

    sizes (L+1,): one trial's layer sizes. W0 (d, ≥ K·h) and b0 (≥ K·h,): the first layers
    side by side, padded with zeros to a whole number of SIMD vectors; W (L-1, K, fan_in,
    fan_out) and b (L-1, K, fan_out): the others, padded to the widest (W's rows, with zeros,
    to whole vectors). The pixels of row e are ``indices`` and ``table[codes]`` at
    ``indptr[e]:indptr[e+1]`` (see SparseRows). eta, decay (K,): η and 1 − ηλ/n. Updates W0,
    b0, W, b in place. momentum μ > 0: the velocities V0, Vb0, VW, Vb (shaped as W0, b0, W, b)
    are used and updated too (else they may be empty). keep (n, Σ hidden widths) bool, one
    trial only: the t-th example's dropout masks (core.train.draw_keep), kept units scaled by
    keep_scale; an empty keep: no dropout. max_norm c > 0: hidden units' incoming weights
    longer than c are scaled back to norm c after every step (0: off).
    """
    K, L, n = eta.shape[0], sizes.shape[0] - 1, perm.shape[0]
    H, Hp = K * sizes[1], W0.shape[1]  # the pack's first-layer width, and padded to whole vectors
    flat = W0.reshape(W0.size)  # row i of W0 from i·Hp
    widest = _widest(sizes, K, Hp)
    z = np.zeros((L, m, widest), np.float32)  # zeros: the padding stays zero throughout
    a = np.zeros((L, m, widest), np.float32)
    delta = np.zeros((L, m, widest), np.float32)
    h = sizes[1]
    s = np.ones(Hp)  # lazy scales: column j of W⁰ is s[j] · W0[:, j]
    col_s = np.ones(Hp, np.float32)  # s per column of W0
    col_c = np.ones(Hp, np.float32)  # 1 / s after the step's decay, per column
    step = np.zeros(Hp, np.float32)
    grad = np.empty(max(widest, W.shape[3]), np.float32)  # scratch: a row's sums, then max-norm's norms
    mu = np.float32(momentum)
    drop, ks, kept = keep.shape[0] > 0, np.float32(keep_scale), np.float32(1.0 / keep_scale)
    col_l2 = np.zeros(Hp, np.float32)  # with momentum: ηλ/n per column of W0
    for k in range(K):
        for j in range(k * h, (k + 1) * h):
            col_l2[j] = np.float32(1.0 - decay[k])
    pixels = indptr, indices, codes, table
    for start in range(0, n, m):
        mb = min(m, n - start)
        rows, masks = perm[start : start + mb], keep[start : start + mb]  # the batch's examples
        _prefetch_rows(perm[start + m : start + 2 * m], indptr, indices, codes)
        _forward_first(z, a, rows, flat, Hp, pixels, col_s, b0, sizes, K, act, cost, masks, ks)
        for l in range(1, L):
            _forward_dense(z, a, l, mb, W, b, grad, sizes, K, act, cost, masks, ks)
        _output_error(delta, a, labels, rows, eta, sizes[L], cost)
        for l in range(L - 1, 0, -1):  # each dense layer updated once the error below it is known
            _error_below(delta, z, a, W, l, mb, sizes, K, act, drop, ks, kept)
            _update_dense(W, b, VW, Vb, delta, a, grad, l, mb, sizes, decay, mu)
        if mu > _ZERO:
            _update_first_momentum(W0, V0, b0, Vb0, step, delta, rows, pixels, col_l2, mu, H)
        else:
            _decay_lazily(W0, s, col_s, col_c, decay, h)
            _update_first(flat, b0, step, col_c, delta, rows, pixels, H)
        _limit_norms(W0, s, col_s, W, grad, max_norm, sizes, K, mu == _ZERO)
    for j in range(H):  # fold the scales back: W0 holds the weights again
        if col_s[j] != _ONE:
            for i in range(W0.shape[0]):
                W0[i, j] *= col_s[j]


HUGE_PAGE = 2 << 20  # bytes of a transparent huge page (x86-64)
HUGE_FROM = 64 * mmap.PAGESIZE  # a first layer this large reads its rows from 2 MB pages


def _rows_matrix(shape: tuple[int, int]) -> np.ndarray:
    """Zeros (d, w) float32 for a first layer, from 2 MB pages when it is HUGE_FROM or larger.

    The kernels read the rows of lit pixels in a random order; spread over more 4 KB pages
    than the TLB holds (a pack of 11 × 15 units spans 135), they miss it often enough to
    take 2× as long, while one or a few 2 MB pages hold them all. Linux backs a 2 MB-aligned,
    MADV_HUGEPAGE range with them where it can; elsewhere these are ordinary pages."""
    size = shape[0] * shape[1] * 4
    if size < HUGE_FROM or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.zeros(shape, np.float32)
    span = -(-size // HUGE_PAGE) * HUGE_PAGE
    memory = mmap.mmap(-1, span + HUGE_PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zeros; room to align
    start = -np.frombuffer(memory, np.uint8).ctypes.data % HUGE_PAGE
    try:
        memory.madvise(mmap.MADV_HUGEPAGE, start, span)
    except OSError:  # a kernel without transparent huge pages (EINVAL): ordinary pages, as they are
        pass
    return np.frombuffer(memory, np.float32, shape[0] * shape[1], start).reshape(shape)


def _kernel_layout(spec: NetworkSpec, trials: Sequence[Params]) -> tuple[np.ndarray, ...]:
    """K networks' weights as the kernels read them (copies): W0 (d, K·h + padding) and b0, the
    first layers side by side; W (L-1, K, fan_in, fan_out padded to whole vectors) and b, the others."""
    K, L, h = len(trials), spec.n_layers, spec.sizes[1]
    width = -(-K * h // LANES) * LANES
    W0 = _rows_matrix((spec.sizes[0], width))
    b0 = np.zeros(width, np.float32)
    fan_in, fan_out = max(spec.sizes[1:-1], default=1), max(spec.sizes[2:], default=1)
    W = np.zeros((L - 1, K, fan_in, -(-fan_out // LANES) * LANES), np.float32)
    b = np.zeros((L - 1, K, fan_out), np.float32)
    for k, p in enumerate(trials):
        W0[:, k * h : (k + 1) * h] = p.layers[0][:, :-1].T  # trial by trial: no first layer's worth of temporary
        b0[k * h : (k + 1) * h] = p.layers[0][:, -1]
        for l in range(1, L):
            block = p.layers[l]  # (fan_out, fan_in + 1)
            W[l - 1, k, : block.shape[1] - 1, : block.shape[0]] = block[:, :-1].T
            b[l - 1, k, : block.shape[0]] = block[:, -1]
    return W0, b0, W, b


# --- evaluation: the forward pass of K networks over a whole set, costs and accuracies ----


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _evaluate(indptr, indices, codes, table, labels, sizes, act, cost, W0, b0, W, b, want_cost, totals, correct):
    """Forward K networks (``_kernel_layout``'s arrays) over every row of a set (its SparseRows
    and labels (N,)): adds its right answers (argmax of the output, the first of ties) to
    correct (K,) int64 and, ``want_cost``, each network's per-example costs to totals (K,)
    float64, as core.functions computes them (−ln softmax(z)ᵧ from the logits, ½‖a − y‖²)."""
    K, L, N = totals.shape[0], sizes.shape[0] - 1, labels.shape[0]
    H, Hp = K * sizes[1], W0.shape[1]
    widest = _widest(sizes, K, Hp)
    flat = W0.reshape(W0.size)
    z = np.zeros((L, widest), np.float32)
    a = np.zeros((L, widest), np.float32)  # (its last row unused: the output is judged from its logits)
    grad = np.empty(max(widest, W.shape[3]), np.float32)
    k_out = sizes[L]
    for e in range(N):
        zr = z[0]
        _first_layer(zr, flat, Hp, indices, codes, table, indptr[e], indptr[e + 1], False)
        for j in range(H):
            zr[j] += b0[j]
        if L > 1:
            _hidden(zr, a[0], H, act)
        for l in range(1, L):
            fi, fo = sizes[l], sizes[l + 1]
            _dense_product(z[l], grad, W, b, l, K, fi, fo, a, (l - 1) * widest)
            if l < L - 1:
                _hidden(z[l], a[l], K * fo, act)
        y, out = labels[e], z[L - 1]
        for k in range(K):
            start = k * k_out
            best = start  # argmax of the logits: the output's too, softmax and sigmoid being monotone
            top = out[start]  # out[best], held so each step waits on a compare, not on a load
            for j in range(start + 1, start + k_out):
                if out[j] > top:
                    best, top = j, out[j]
            if best - start == y:
                correct[k] += 1
            if not want_cost:
                continue
            if cost == CROSS_ENTROPY:
                total = _ZERO
                for j in range(start, start + k_out):
                    total += np.exp(out[j] - top)
                totals[k] -= np.float64((out[start + y] - top) - np.log(total))
            else:
                squares = 0.0
                for j in range(start, start + k_out):
                    diff = np.float64(_ONE / (_ONE + np.exp(-out[j]))) - (1.0 if j == start + y else 0.0)
                    squares += diff * diff
                totals[k] += 0.5 * squares


def evaluate_compiled(
    spec: NetworkSpec,
    trials: Sequence[Params],
    X: np.ndarray,
    y: np.ndarray,
    lmbdas: Sequence[float],
    n_train: int,
    want_cost: bool = True,
) -> tuple[list[float] | None, list[float]]:
    """``core.model.evaluate`` of K networks of one spec on (X, y) at once: (costs, or None
    unless ``want_cost``, and accuracies).

    One pass over X's non-zero pixels (``sparse_rows``, built once per set) serves every
    network; the cost adds each one's L2 term λ/(2 n_train) Σ‖W‖² (``lmbdas`` (K,)) as
    evaluate does. Agrees with it to float32 rounding (an accuracy may differ by a tie).
    """
    rows = sparse_rows(X)
    K = len(trials)
    totals, correct = np.zeros(K), np.zeros(K, np.int64)
    _evaluate(
        rows.indptr,
        rows.indices,
        rows.codes,
        rows.table,
        np.ascontiguousarray(y, np.int64),
        np.array(spec.sizes, np.int64),
        ACTIVATION_CODES[spec.activation],
        COST_CODES[spec.cost],
        *_kernel_layout(spec, trials),
        want_cost,
        totals,
        correct,
    )
    n = len(y)
    costs = (
        [
            total / n + (0.5 * lmbda / n_train * p.l2() if lmbda else 0.0)
            for total, lmbda, p in zip(totals.tolist(), lmbdas, trials)
        ]
        if want_cost
        else None
    )
    return costs, [int(c) / n for c in correct]


class CompiledSGD:
    """Epochs of mini-batch SGD for K trials on the same permutations, by the compiled kernel.

    ``trials`` are the K networks' Params; their blocks are read once and written back
    after every epoch, so they always hold the weights, as ``SGD``'s do. X (n, d) float32
    and its labels y (n,) are the training set. The options packs do not train (``Pack.OFF``:
    momentum, dropout, max-norm) train one trial alone (ValueError for a pack of K > 1 with
    one on: see ``core.packed.packs``).
    """

    def __init__(
        self, spec: NetworkSpec, trials: Sequence[Params], X: np.ndarray, y: np.ndarray, configs: Sequence[TrainConfig]
    ) -> None:
        self.spec, self.trials = spec, list(trials)
        alone = next((name for name in packed(Pack.OFF) for c in configs if getattr(c, name)), None)
        if len(configs) > 1 and alone:
            raise ValueError(f"{alone} trains one trial at a time, not a pack")
        self.n = n = len(X)
        self.rows = sparse_rows(X)
        self.labels = np.ascontiguousarray(y, np.int64)
        self.m = min(configs[0].batch_size, n)
        self.eta = np.array([c.eta for c in configs], np.float64)
        self.lmbda = np.array([c.lmbda for c in configs])
        self.momentum = configs[0].momentum
        self.keep_scale = 1.0 / (1.0 - configs[0].dropout)
        self.max_norm = float(configs[0].max_norm or 0.0)  # 0: off
        self.sizes = np.array(spec.sizes, np.int64)
        self.codes = ACTIVATION_CODES[spec.activation], COST_CODES[spec.cost]
        self.W0, self.b0, self.W, self.b = _kernel_layout(spec, self.trials)
        arrays = self.W0, self.b0, self.W, self.b  # their velocities, or empty ones without momentum
        self.velocity = [np.zeros(a.shape if self.momentum else (0,) * a.ndim, np.float32) for a in arrays]
        self.no_keep = np.zeros((0, 0), bool)

    def epoch(self, perm: np.ndarray, eta: float | None = None, keep: np.ndarray | None = None) -> None:
        """One pass in the order ``perm`` (n,), at learning rate ``eta`` for every trial (None: the
        configs' own), the t-th example keeping the hidden units ``keep[t]`` (core.train.draw_keep;
        None: all); then the trials' Params hold the new weights."""
        if eta is not None:
            self.eta[:] = eta
        decay = 1.0 - self.eta * self.lmbda / self.n  # as SGD computes it
        rows = self.rows
        V0, Vb0, VW, Vb = self.velocity
        _epoch(
            np.ascontiguousarray(perm, np.int64),
            self.m,
            rows.indptr,
            rows.indices,
            rows.codes,
            rows.table,
            self.labels,
            self.sizes,
            *self.codes,
            self.W0,
            self.b0,
            self.W,
            self.b,
            self.eta,
            decay,
            self.momentum,
            V0,
            Vb0,
            VW,
            Vb,
            self.no_keep if keep is None else np.ascontiguousarray(keep),
            self.keep_scale,
            self.max_norm,
        )
        h = self.spec.sizes[1]
        for k, p in enumerate(self.trials):
            p.layers[0][:, :-1] = self.W0[:, k * h : (k + 1) * h].T
            p.layers[0][:, -1] = self.b0[k * h : (k + 1) * h]
            for l in range(1, len(p.layers)):
                block = p.layers[l]
                block[:, :-1] = self.W[l - 1, k, : block.shape[1] - 1, : block.shape[0]].T
                block[:, -1] = self.b[l - 1, k, : block.shape[0]]


class PackedCompiledSGD:
    """``core.packed.PackedSGD`` on the compiled engine: trials of the same seed (so the same
    permutations) train as one ``CompiledSGD`` pack, trials of other seeds in packs of their own."""

    def __init__(self, spec: NetworkSpec, stack, X: np.ndarray, y: np.ndarray, configs: Sequence[TrainConfig]) -> None:
        self.stack = stack  # a core.packed.Stack: its trials' slices are written after every epoch
        seeds: dict[int, list[int]] = {}
        for k, config in enumerate(configs):
            seeds.setdefault(config.seed, []).append(k)
        self.packs = [
            (ks[0], CompiledSGD(spec, [stack.trial(k) for k in ks], X, y, [configs[k] for k in ks]))
            for ks in seeds.values()
        ]

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
    evaluate_compiled(spec, [params], X, np.arange(3), [0.0], 3)
