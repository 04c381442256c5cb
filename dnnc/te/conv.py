"""The choice of convolution algorithm per layer: direct, im2col + GEMM, or Winograd.

Each is a rewrite of a convolution statement

    C[n, f, i, j] = b[f] + sum(k, r, s) x[n, k, i*S + r - P, j*S + s - P] * w[f, k, r, s]

into statements that compute the same C, so scheduling, fusion and autodiff treat them like
any others (the backward of a Winograd layer is derived through its transforms).

im2col copies each receptive field into a column, `C.col[n, q, p]`, and the convolution
becomes a matrix product over q = (k, r, s).

Winograd F(2x2, 3x3) (Lavin and Gray, 2016), for 3x3 kernels at stride 1, computes each 2x2
output tile from a 4x4 input tile with 16 multiplications per channel instead of 36:

    C.wino_u[a, b, f, k] = (G w[f, k] G^T)[a, b]          the filters, transformed once
    C.wino_v[a, b, n, k, th, tw] = (B^T d B)[a, b]        the input tile at (2 th, 2 tw)
    C.wino_m[a, b, n, f, th, tw] = sum(k) U[a, b, f, k] V[a, b, n, k, th, tw]   16 products
    C[n, f, i, j] = b[f] + (A^T M[.., i / 2, j / 2] A)[i % 2, j % 2]

Reads of the input outside it (padding, and a ragged last tile) contribute nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import affine
from ..base.errors import DnncError
from .expr import Binary, Const, Expr, Load, Reduce, Select, Var, free_vars
from .stmt import TStmt

ALGORITHMS = ("direct", "im2col", "winograd")

# F(2x2, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A
BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
AT = ((1, 1, 1, 0), (0, 1, -1, -1))


@dataclass(frozen=True)
class Algorithm:
    """A schedule step: compute the convolution writing `tensor` with `name`."""

    tensor: str
    name: str

    def __str__(self) -> str:
        return f"algorithm({self.tensor}, {self.name})"


@dataclass(frozen=True)
class Conv:
    """The parts of a matched convolution statement."""

    st: TStmt
    x: str
    w: str
    bias: Expr | None
    stride: int
    pad: int
    kernel: tuple[int, int]
    channels: int


def match_conv(st: TStmt, shapes: dict) -> Conv | None:
    """The convolution st computes, if it is one (one group, square stride and padding)."""
    if st.index is not None or st.accumulate or len(st.axes) != 4:
        return None
    v, bias = st.value, None
    if isinstance(v, Binary) and v.op == "+" and isinstance(v.b, Reduce):
        v, bias = v.b, v.a
    if not (isinstance(v, Reduce) and v.op == "sum" and len(v.axes) == 3 and isinstance(v.body, Binary)
            and v.body.op == "*" and isinstance(v.body.a, Load) and isinstance(v.body.b, Load)):
        return None
    n, f, i, j = (Var(a) for a, _ in st.axes)
    k, r, s = (Var(a) for a, _ in v.axes)
    for x, w in ((v.body.a, v.body.b), (v.body.b, v.body.a)):
        if w.index != (f, k, r, s) or len(x.index) != 4 or x.index[:2] != (n, k):
            continue
        rows, cols = affine.affine(x.index[2]), affine.affine(x.index[3])
        if rows is None or cols is None or rows.get(r.name) != 1 or cols.get(s.name) != 1:
            continue
        stride, pad = rows.get(i.name), -rows.get(1, 0)
        if set(rows) - {i.name, r.name, 1} or set(cols) - {j.name, s.name, 1} or stride is None or (
                cols.get(j.name), -cols.get(1, 0)) != (stride, pad):
            continue
        if bias is not None and (free_vars(bias) - {f.name}):
            return None
        return Conv(st, x.tensor, w.tensor, bias, stride, pad, (v.axes[1][1], v.axes[2][1]), v.axes[0][1])
    return None


WINOGRAD_CHANNELS = 128  # measured: below this the transforms cost more than the products save


def default_algorithms(groups, shapes: dict) -> list[Algorithm]:
    """Winograd for 3x3 stride-1 convolutions with at least 128 input and output channels.

    On this machine's core it ran VGG-16's conv3_2 forward in 30 ms against 39 ms direct and
    conv5_2 in 12.6 against 14.7, but conv1_2 (64 channels) in 48 against 46; in a training
    step the backward through the transforms ate the gain, so training programs stay direct.

    Re-measured at batch 1 against the filter-lane direct schedule (one thread, medians, the
    filter transform and weight packs not counted, as they leave the per-call program), for
    ResNet-18's shapes: 512 channels at 7x7, Winograd 4.0-4.3 ms against direct 5.2-5.5;
    256 at 14x14, 2.2-3.1 against 3.5-6.1; 128 at 28x28, 1.8-2.7 against 3.8. Winograd still
    wins where few output tiles (16 at 7x7) meet many channels: the direct conv at batch 1
    is bound by streaming its weights, whose filter-last packing reads each filter panel in
    strided 128-byte pieces, so no rule on batch x tiles pays yet and this one stays.
    """
    out = []
    for _, stmts in groups:
        for st in stmts:
            c = match_conv(st, shapes)
            if c and c.kernel == (3, 3) and c.stride == 1 and min(c.channels, st.axes[1][1]) >= WINOGRAD_CHANNELS:
                out.append(Algorithm(st.tensor, "winograd"))
    return out


def apply_algorithms(groups, steps: list, shapes: dict):
    """Invariant: every tensor keeps its values (up to rounding: Winograd's transforms change
    the order and number of operations). Returns the groups and the new temporaries."""
    chosen = {s.tensor: s for s in steps if isinstance(s, Algorithm) and s.name != "direct"}
    if not chosen:
        return groups, []
    out, temps, done = [], [], set()
    for name, stmts in groups:
        new: list[TStmt] = []
        for st in stmts:
            step = chosen.get(st.tensor)
            if step is None or st.tensor in done:
                new.append(st)
                continue
            conv = match_conv(st, shapes)
            if conv is None:
                raise DnncError(f"schedule step {step}: {st.tensor} is not a convolution with one group")
            made = (winograd if step.name == "winograd" else im2col)(conv, shapes, step)
            for t in made[:-1]:  # each transform a kernel of its own, before the layer's
                temps.append((t.tensor, tuple(x for _, x in t.axes)))
                out.append((f"{name}.{t.tensor.rsplit('.', 1)[-1]}", [t]))
            new.append(made[-1])
            done.add(st.tensor)
        out.append((name, new))
    missing = set(chosen) - done
    if missing:
        first = min(missing)
        raise DnncError(f"schedule step {chosen[first]}: no statement writes {first}")
    return out, temps


def _table(rows, a: Expr, b: Expr) -> Expr:
    """rows[a][b] for index expressions a and b, as selects folded to constants where known."""
    def row(vals) -> Expr:
        e: Expr = Const(float(vals[-1]))
        for m in range(len(vals) - 2, -1, -1):
            e = Select(Binary("==", b, Const(m)), Const(float(vals[m])), e)
        return e

    e = row(rows[-1])
    for m in range(len(rows) - 2, -1, -1):
        e = Select(Binary("==", a, Const(m)), row(rows[m]), e)
    return e


def _add_bias(c: Conv, e: Expr) -> Expr:
    return e if c.bias is None else Binary("+", c.bias, e)


def winograd(c: Conv, shapes: dict, step) -> list[TStmt]:
    st = c.st
    if c.kernel != (3, 3) or c.stride != 1:
        raise DnncError(f"schedule step {step}: Winograd F(2x2, 3x3) needs a 3x3 kernel at stride 1 "
                        f"({st.tensor} has {c.kernel[0]}x{c.kernel[1]} at stride {c.stride})")
    (n, N), (f, F), (i, OH), (j, OW) = st.axes
    K = c.channels
    TH, TW = -(-OH // 2), -(-OW // 2)
    a, b, u, v, th, tw, k, r, s = (Var(x) for x in ("ta", "tb", "tu", "tv", "th", "tw", "tk", "tr", "ts"))
    if {n, f, i, j} & {x.name for x in (a, b, u, v, th, tw, k, r, s)}:
        raise DnncError(f"schedule step {step}: rename {st.tensor}'s axes (ta, tb, ... are taken)")
    U, V, M = (f"{st.tensor}.wino_{x}" for x in "uvm")

    def mul(*xs: Expr) -> Expr:
        e = xs[0]
        for x in xs[1:]:
            e = Binary("*", e, x)
        return e

    def at(x: Expr, m: int, z: Expr) -> Expr:  # x * m + z - pad
        return affine.simplify(Binary("-", Binary("+", Binary("*", x, Const(m)), z), Const(c.pad)))

    u_st = TStmt(U, (("ta", 4), ("tb", 4), (f, F), ("tk", K)), Reduce("sum", (("tr", 3), ("ts", 3)), mul(
        _table(G, a, r), _table(G, b, s), Load(c.w, (Var(f), k, r, s)))), st.loc)
    # tiles on a (th, tw) grid: along tw the input is read at stride 2, the products are contiguous
    v_st = TStmt(V, (("ta", 4), ("tb", 4), (n, N), ("tk", K), ("th", TH), ("tw", TW)), Reduce(
        "sum", (("tu", 4), ("tv", 4)), mul(_table(BT, a, u), _table(BT, b, v),
                                           Load(c.x, (Var(n), k, at(th, 2, u), at(tw, 2, v))))), st.loc)
    m_st = TStmt(M, (("ta", 4), ("tb", 4), (n, N), (f, F), ("th", TH), ("tw", TW)), Reduce(
        "sum", (("tk", K),), mul(Load(U, (a, b, Var(f), k)), Load(V, (a, b, Var(n), k, th, tw)))), st.loc)
    out = Reduce("sum", (("ta", 4), ("tb", 4)), mul(
        _table(AT, Binary("%", Var(i), Const(2)), a), _table(AT, Binary("%", Var(j), Const(2)), b),
        Load(M, (a, b, Var(n), Var(f), Binary("/", Var(i), Const(2)), Binary("/", Var(j), Const(2))))))
    y_st = TStmt(st.tensor, st.axes, _add_bias(c, out), st.loc)
    for x in (u_st, v_st, m_st):
        shapes[x.tensor] = tuple(e for _, e in x.axes)
    return [u_st, v_st, m_st, y_st]


def im2col(c: Conv, shapes: dict, step) -> list[TStmt]:
    st = c.st
    (n, N), (f, F), (i, OH), (j, OW) = st.axes
    R, S = c.kernel
    H, W = shapes[c.x][2], shapes[c.x][3]
    K = c.channels
    Q, P = K * R * S, OH * OW
    q, p = Var("cq"), Var("cp")
    if {n, f, i, j} & {"cq", "cp"}:
        raise DnncError(f"schedule step {step}: rename {st.tensor}'s axes (cq, cp are taken)")
    col_name = f"{st.tensor}.col"

    def e(x) -> Expr:
        return affine.simplify(x)

    kk = e(Binary("/", q, Const(R * S)))
    rr = e(Binary("%", Binary("/", q, Const(S)), Const(R)))
    ss = e(Binary("%", q, Const(S)))
    row = e(Binary("-", Binary("+", Binary("*", Binary("/", p, Const(OW)), Const(c.stride)), rr), Const(c.pad)))
    col = e(Binary("-", Binary("+", Binary("*", Binary("%", p, Const(OW)), Const(c.stride)), ss), Const(c.pad)))
    inside = Binary("and", Binary("and", Binary(">=", row, Const(0)), Binary("<", row, Const(H))),
                    Binary("and", Binary(">=", col, Const(0)), Binary("<", col, Const(W))))
    col_st = TStmt(col_name, ((n, N), ("cq", Q), ("cp", P)),
                   Select(inside, Load(c.x, (Var(n), kk, row, col)), Const(0.0)), st.loc)
    w_at = Load(c.w, (Var(f), kk, rr, ss))
    gemm = Reduce("sum", (("cq", Q),), Binary("*", w_at, Load(col_name, (
        Var(n), q, e(Binary("+", Binary("*", Var(i), Const(OW)), Var(j)))))))
    shapes[col_name] = (N, Q, P)
    return [col_st, TStmt(st.tensor, st.axes, _add_bias(c, gemm), st.loc)]
