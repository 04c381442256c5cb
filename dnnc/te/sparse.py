"""Sparse dense layers: a pruned weight matrix read in ELL form instead of in full.

`y[n, u] = b[u] + sum(k < K) x[n, k] * W[u, k]` becomes

    y[n, u] = b[u] + sum(j < R) W.ell[j, u] * x[n, index(W.cols[j, u])]

where row u's nonzero weights lie in W.ell[0.., u] with their columns in W.cols (as floats,
exact below 2^24), padded to R = the longest row with zero weights at column 0. Lanes run
along u, where both arrays are contiguous; x is gathered. A column outside [0, K) contributes
nothing (the read is guarded like any read in a reduction), so a damaged index array cannot
reach outside x.
"""
from __future__ import annotations

import numpy as np

from .expr import Load, Reduce, Unary, Var, substitute
from .stmt import TStmt


def ell(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values [R, U], columns [R, U]) of a [U, K] matrix's nonzeros, rows padded to R."""
    nz = [np.flatnonzero(row) for row in w]
    R = max(1, max(len(c) for c in nz))
    vals = np.zeros((R, w.shape[0]), np.float32)
    cols = np.zeros((R, w.shape[0]), np.float32)
    for u, c in enumerate(nz):
        vals[:len(c), u] = w[u, c]
        cols[:len(c), u] = c
    return vals, cols


# measured (benchmarks/sparse_dense.py, one thread, batch 1): ELL wins below about 13% density
# for a 4096x4096 layer, whose dense product is bound by memory, and below about 3% for a
# 784x300 layer that fits in cache
SPARSE_BELOW_LARGE, SPARSE_BELOW_SMALL = 0.10, 0.03


def choose(params: dict[str, np.ndarray], candidates, cache_bytes: int) -> dict[str, int]:
    """The dense-layer weights worth reading in ELL form, with their rows' longest length;
    `cache_bytes` is the target's cache per core (a weight larger than it streams from memory)."""
    out = {}
    for w in candidates:
        a = params[w]
        if a.ndim != 2:
            continue
        density = np.count_nonzero(a) / a.size
        if density <= (SPARSE_BELOW_LARGE if a.nbytes > cache_bytes else SPARSE_BELOW_SMALL):
            out[w] = rows_needed(a)
    return out


def rows_needed(w: np.ndarray) -> int:
    return max(1, int((w != 0).sum(axis=1).max()))


def sparsify(groups, sparse: dict[str, int]):
    """Invariant: computes what the dense statements compute, given W.ell and W.cols filled
    by ell(W). Returns the groups and the new buffers (name, shape)."""
    if not sparse:
        return groups, []
    out, new = [], []
    for name, stmts in groups:
        rewritten = []
        for st in stmts:
            r = _dense(st, sparse)
            if r is None:
                rewritten.append(st)
                continue
            red, w, u, k = r
            R = sparse[w.tensor]
            U = dict(st.axes)[u]
            vals, cols = f"{w.tensor}.ell", f"{w.tensor}.cols"
            j = Var("ej")
            col = Unary("index", Load(cols, (j, Var(u))))

            # the weight first (its own index mentions k), then every other use of k
            body = substitute(red.body, lambda x, w=w, u=u: Load(vals, (j, Var(u))) if x == w else None)
            body = substitute(body, lambda x, k=k, col=col: col if isinstance(x, Var) and x.name == k else None)
            fused = Reduce("sum", (("ej", R),), body, red.loc)
            rewritten.append(TStmt(st.tensor, st.axes, substitute(st.value, lambda x: fused if x == red else None),
                                   st.loc))
            new += [(vals, (R, U)), (cols, (R, U))]
        out.append((name, rewritten))
    return out, new


def _dense(st: TStmt, sparse):
    """(the reduction, the weight read, the output axis u, the reduced axis k) of a dense
    layer statement whose weight is in `sparse`."""
    if st.index is not None or st.accumulate:
        return None
    reds = [x for x in st.value.walk() if isinstance(x, Reduce)]
    if len(reds) != 1 or reds[0].op != "sum" or len(reds[0].axes) != 1:
        return None
    red = reds[0]
    k = red.axes[0][0]
    loads = [x for x in red.body.walk() if isinstance(x, Load)]
    for w in loads:
        if w.tensor in sparse and len(w.index) == 2 and isinstance(w.index[0], Var) and w.index[1] == Var(k) \
                and w.index[0].name in dict(st.axes):
            return red, w, w.index[0].name, k
    return None

