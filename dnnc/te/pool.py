"""conv+ReLU+pool as one loop nest: two rewrites of tensor-expression statements.

`pool_first` moves a monotone activation after the max pooling that reads it,
max(W) f(C[g]) = f(max(W) C[g]), so the activation runs on the pooled tensor (a quarter of
the elements for 2x2 pooling) and its backward reads the pooled pre-activation `Y.pre`.

`fuse_pool` then computes each pool window straight from the convolution: the conv's
expression is substituted into the window reduction, max(p, q) (b[f] + sum(k, r, s) ...),
so the full-size conv output is never written. In a training program the backward reads
only the pooled values and the argmax position (`Y.pre.arg`, computed in the same nest);
the conv's own gradient is a gather from those.
"""
from __future__ import annotations

from functools import partial

from . import affine
from .expr import Binary, Const, Expr, Load, Reduce, Unary, Var, subst_vars, substitute
from ..te.affine import canon_loads as _canon_loads
from .fuse import _reads, reader_counts
from .stmt import TStmt

Groups = list[tuple[str, list[TStmt]]]


def _plain(st: TStmt) -> bool:
    return st.index is None and not st.accumulate


# ----------------------------------------------------------------------------- pool_first

def monotone(e: Expr, x: Load) -> bool:
    """e is a non-decreasing function of the read x and of nothing else that varies."""
    if e == x:
        return True
    if isinstance(e, Const):
        return True
    if isinstance(e, Binary) and e.op in ("max", "min", "+"):
        return monotone(e.a, x) and monotone(e.b, x)
    if isinstance(e, Binary) and e.op == "-":
        return monotone(e.a, x) and isinstance(e.b, Const)
    if isinstance(e, Binary) and e.op == "*":
        a, b = (e.a, e.b) if isinstance(e.b, Const) else (e.b, e.a)
        return isinstance(b, Const) and b.value >= 0 and monotone(a, x)
    if isinstance(e, Unary) and e.op in ("sigmoid", "tanh", "exp"):
        return monotone(e.a, x)
    return False


def _activation(st: TStmt) -> Load | None:
    """The one read of an elementwise monotone statement T[I] = f(C[I])."""
    reads = _reads(st)
    identity = tuple(Var(n) for n, _ in st.axes)
    if not _plain(st) or not reads or any(r != reads[0] for r in reads) or reads[0].index != identity:
        return None
    return reads[0] if monotone(st.value, reads[0]) else None


def _window_max(st: TStmt) -> Load | None:
    """The read of a pooling statement Y[I] = max(W) R[g(I, W)]."""
    v = st.value
    if _plain(st) and isinstance(v, Reduce) and v.op == "max" and isinstance(v.body, Load):
        return v.body
    return None


def pool_first(groups: Groups, keep: set[str]) -> Groups:
    """Invariant: every tensor in `keep` gets the same values (and, where the activation is
    flat, a gradient that differs only at ties). `R = f(C); Y = max(W) R[g]`, R read by
    nothing else, becomes `Y.pre = max(W) C[g]; Y = f(Y.pre)`, in a group named after both.
    """
    return _merge_pairs(groups, partial(_pool_first_pair, keep=keep, readers=reader_counts(groups)))


def _pool_first_pair(group, nxt, keep: set[str], readers: dict[str, int]):
    """The activation group and the pool group after it as one group, or None."""
    name, stmts = group
    if not (len(stmts) == 1 and len(nxt[1]) == 1 and stmts[0].tensor not in keep
            and readers.get(stmts[0].tensor) == 1):
        return None
    act, pool = stmts[0], nxt[1][0]
    c, r = _activation(act), _window_max(pool)
    if c is None or r is None or r.tensor != act.tensor:
        return None
    pre = f"{pool.tensor}.pre"
    red = pool.value
    pooled = TStmt(pre, pool.axes, Reduce("max", red.axes, Load(c.tensor, r.index, r.loc), red.loc), pool.loc)
    rename = {n: Var(m) for (n, _), (m, _) in zip(act.axes, pool.axes, strict=True)}
    at_pre = Load(pre, tuple(Var(m) for m, _ in pool.axes))
    value = substitute(subst_vars(act.value, rename),
                       lambda x: at_pre if isinstance(x, Load) and x.tensor == c.tensor else None)
    return f"{nxt[0]}+{name.split('.')[-1]}", [pooled, TStmt(pool.tensor, pool.axes, value, act.loc)]


def _merge_pairs(groups: Groups, merge) -> Groups:
    """Each group merged with the next where merge(group, next) gives one group (None: keep
    both); the rest as they are."""
    out: Groups = []
    k = 0
    while k < len(groups):
        merged = merge(groups[k], groups[k + 1]) if k + 1 < len(groups) else None
        if merged is not None:
            out.append(merged)
            k += 2
        else:
            out.append((groups[k][0], list(groups[k][1])))
            k += 1
    return out


# ----------------------------------------------------------------------------- fuse_pool

def _injective_window(load: Load, st: TStmt, win: tuple[tuple[str, int], ...], shape) -> bool:
    """Each element of the read tensor is read by at most one window position, all in range:
    every index is an output axis, or out*s + w (+ c) with the window axis w shorter than s."""
    ranges = {n: (0, x - 1) for n, x in tuple(st.axes) + tuple(win)}
    wext = dict(win)
    used: set[str] = set()
    for k, ix in enumerate(load.index):
        b = affine.bounds(ix, ranges)
        form = affine.affine(ix)
        if b is None or b[0] < 0 or b[1] >= shape[k] or form is None:
            return False
        terms = {t: c for t, c in form.items() if t != 1}
        if any(not isinstance(t, str) for t in terms) or used & set(terms):
            return False
        used |= set(terms)
        ws = [t for t in terms if t in wext]
        outs = [t for t in terms if t not in wext]
        if not ws and len(outs) == 1 and terms[outs[0]] == 1:
            continue
        if len(ws) == 1 and len(outs) == 1 and terms[ws[0]] == 1 and wext[ws[0]] <= terms[outs[0]]:
            continue
        return False
    return True


def _fresh_reductions(e: Expr, taken: set[str]) -> Expr:
    """e with each reduction's axes renamed away from `taken` (so substitution cannot capture)."""
    def fix(x):
        if isinstance(x, Reduce) and any(n in taken for n, _ in x.axes):
            mapping, axes = {}, []
            for n, ext in x.axes:
                m = n
                while m in taken:
                    m += "_"
                mapping[n] = Var(m)
                axes.append((m, ext))
            return Reduce(x.op, tuple(axes), subst_vars(x.body, mapping), x.loc)
        return None

    return substitute(e, fix)


def _conv_like(st: TStmt) -> bool:
    return _plain(st) and any(isinstance(x, Reduce) and x.op == "sum" for x in st.value.walk()) and not any(
        isinstance(x, Reduce) and x.op != "sum" for x in st.value.walk())


def fuse_pool(groups: Groups, keep: set[str], shapes: dict[str, tuple[int, ...]]) -> Groups:
    """Invariant: every tensor in `keep` and every tensor still read gets the same values.

    A conv-like statement P (a sum, alone in its group) whose every reader is a window max
    or argmax of the next group, over non-overlapping in-range windows, is substituted into
    those readers; P itself is no longer computed.
    """
    return _merge_pairs(groups, partial(_fuse_pool_pair, keep=keep, shapes=shapes, readers=reader_counts(groups)))


def _fuse_pool_pair(group, nxt, keep: set[str], shapes: dict[str, tuple[int, ...]], readers: dict[str, int]):
    """The conv group substituted into the pool group after it, as one group, or None."""
    name, stmts = group
    if not (len(stmts) == 1 and _conv_like(stmts[0]) and stmts[0].tensor not in keep):
        return None
    p = stmts[0]
    users = [st for st in nxt[1] if any(x.tensor == p.tensor for x in _reads(st))]
    if not (users and readers.get(p.tensor) == len(users) and all(_fusable(st, p, shapes) for st in users)):
        return None
    return f"{name}+{nxt[0].split('.', 1)[-1]}", [_substitute(st, p) if st in users else st for st in nxt[1]]


def _window(st: TStmt) -> Reduce | None:
    """The statement's one reduction, if it is a max or argmax over a window of one read."""
    reds = [x for x in st.value.walk() if isinstance(x, Reduce)]
    if len(reds) == 1 and reds[0].op in ("max", "argmax") and isinstance(reds[0].body, Load):
        return reds[0]
    return None


def _fusable(st: TStmt, p: TStmt, shapes) -> bool:
    red = _window(st)
    if not _plain(st) or red is None or red.body.tensor != p.tensor:
        return False
    if sum(1 for x in _reads(st) if x.tensor == p.tensor) != 1:
        return False
    return _injective_window(red.body, st, red.axes, shapes[p.tensor])


def _substitute(st: TStmt, p: TStmt) -> TStmt:
    red = _window(st)
    taken = {n for n, _ in st.axes} | {n for n, _ in red.axes}
    value = _fresh_reductions(p.value, taken)
    at = dict(zip((n for n, _ in p.axes), red.body.index, strict=True))
    fused = Reduce(red.op, red.axes, _canon_loads(subst_vars(value, at)), red.loc)
    return TStmt(st.tensor, st.axes, substitute(st.value, lambda x: fused if x == red else None), st.loc)
