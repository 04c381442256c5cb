"""Folding a per-channel scale and shift into the weights of the product before it (inference).

An inference batchnorm after a convolution computes, per channel f,

    C[n, f, i, j] = b[f] + sum(k, r, s) x[n, k, i + r, j + s] * w[f, k, r, s]
    Y[n, f, i, j] = (C[n, f, i, j] - mean[f]) / sqrt(var[f] + eps) * gamma[f] + beta[f]

Y is affine in C with coefficients of f alone, Y = a[f] C + c[f], so

    Y.folded_w[f, k, r, s] = w[f, k, r, s] * a[f]
    Y.folded_b[f] = a[f] * b[f] + c[f]
    Y[n, f, i, j] = Y.folded_b[f] + sum(k, r, s) x[n, k, i + r, j + s] * Y.folded_w[f, k, r, s]

The two new statements read only weights, so the `weights` stage moves them out of the
forward pass: the epilogue that was a subtraction, a square root, a division, a product and a
sum per output element becomes one addition. Any statement of that shape folds: a dense
layer's batchnorm, a per-channel scale written by hand, a depthwise convolution's.
"""
from __future__ import annotations

from .expr import Binary, Const, Expr, Load, Reduce, Unary, Var, free_vars, subst_vars
from .fuse import reader_counts
from .stmt import TStmt
from .weights import weight_only

ZERO, ONE = Const(0.0), Const(1.0)


def _add(a: Expr, b: Expr) -> Expr:
    return b if a == ZERO else a if b == ZERO else Binary("+", a, b)


def _sub(a: Expr, b: Expr) -> Expr:
    return a if b == ZERO else Unary("neg", b) if a == ZERO else Binary("-", a, b)


def _mul(a: Expr, b: Expr) -> Expr:
    if ZERO in (a, b):
        return ZERO
    return b if a == ONE else a if b == ONE else Binary("*", a, b)


def _div(a: Expr, b: Expr) -> Expr:
    return ZERO if a == ZERO else Binary("/", a, b)


def split_affine(e: Expr, c: Load) -> tuple[Expr, Expr] | None:
    """(a, b) with e == a * c + b, where neither a nor b reads c's tensor; None if e is not
    affine in c (c under a max, a square root, a product with itself ...)."""
    if e == c:
        return ONE, ZERO
    if not any(isinstance(x, Load) and x.tensor == c.tensor for x in e.walk()):
        return ZERO, e
    if isinstance(e, Unary) and e.op == "neg":
        s = split_affine(e.a, c)
        return None if s is None else (_sub(ZERO, s[0]), _sub(ZERO, s[1]))
    if not isinstance(e, Binary) or e.op not in "+-*/":
        return None
    left, right = split_affine(e.a, c), split_affine(e.b, c)
    if left is None or right is None:
        return None
    (a1, b1), (a2, b2) = left, right
    if e.op == "+":
        return _add(a1, a2), _add(b1, b2)
    if e.op == "-":
        return _sub(a1, a2), _sub(b1, b2)
    if e.op == "*" and a1 == ZERO:
        return _mul(e.a, a2), _mul(e.a, b2)
    if e.op == "*" and a2 == ZERO:
        return _mul(a1, e.b), _mul(b1, e.b)
    if e.op == "/" and a2 == ZERO:
        return _div(a1, e.b), _div(b1, e.b)
    return None


def _product(st: TStmt) -> tuple[Expr | None, Reduce] | None:
    """(bias, the sum) of `T[...] = [bias +] sum(...) x * w`."""
    v, bias = st.value, None
    if isinstance(v, Binary) and v.op == "+" and isinstance(v.b, Reduce):
        v, bias = v.b, v.a
    ok = isinstance(v, Reduce) and v.op == "sum" and isinstance(v.body, Binary) and v.body.op == "*"
    return (bias, v) if ok else None


def _weight(r: Reduce, axis: str, weights: set[str]) -> tuple[Load, int] | None:
    """The factor of the sum that is a weight indexed by `axis` once, as itself, and otherwise
    by reduction axes only; and the position of `axis` in its index."""
    red = {n for n, _ in r.axes}
    for w in (r.body.b, r.body.a):
        if not isinstance(w, Load) or w.tensor not in weights:
            continue
        at = [k for k, ix in enumerate(w.index) if ix == Var(axis)]
        rest = set().union(*[free_vars(ix) for k, ix in enumerate(w.index) if k not in at])
        if len(at) == 1 and rest <= red and all(isinstance(ix, Var) for ix in w.index):
            return w, at[0]
    return None


def fold(producer: TStmt, consumer: TStmt, weights: set[str], shapes: dict) -> list[TStmt] | None:
    """The statements that replace producer and consumer, if consumer is affine in producer
    with coefficients of one output axis and weights alone, and producer is a product with a
    weight indexed by that axis; else None."""
    if producer.index is not None or producer.accumulate or consumer.index is not None or consumer.accumulate:
        return None
    prod = _product(producer)
    if prod is None or [x for _, x in producer.axes] != [x for _, x in consumer.axes]:
        return None
    bias, r = prod
    rename = {n: Var(m) for (n, _), (m, _) in zip(consumer.axes, producer.axes, strict=True)}
    value = subst_vars(consumer.value, rename)  # the consumer in the producer's axes
    here = Load(producer.tensor, tuple(Var(n) for n, _ in producer.axes))
    if any(isinstance(x, Load) and x.tensor == producer.tensor and x != here for x in value.walk()):
        return None
    split = split_affine(value, here)
    if split is None:
        return None
    a, c = split
    coeff_reads = {x.tensor for e in (a, c) for x in e.walk() if isinstance(x, Load)}
    axes = free_vars(a) | free_vars(c) | (free_vars(bias) if bias is not None else set())
    if not coeff_reads <= weights or len(axes) > 1 or (bias is not None and not {
            x.tensor for x in bias.walk() if isinstance(x, Load)} <= weights):
        return None
    axis = next(iter(axes)) if axes else producer.axes[1][0] if len(producer.axes) > 1 else producer.axes[0][0]
    found = _weight(r, axis, weights)
    if found is None:
        return None
    w, at = found
    name_w, name_b = consumer.tensor + ".folded_w", consumer.tensor + ".folded_b"
    wax = tuple((f"w{k}", x) for k, x in enumerate(shapes[w.tensor]))
    to_w = {axis: Var(wax[at][0])}
    new_w = TStmt(name_w, wax, _mul(Load(w.tensor, tuple(Var(n) for n, _ in wax)), subst_vars(a, to_w)), consumer.loc)
    ext = dict(producer.axes)[axis]
    shift = _add(_mul(a, bias) if bias is not None else ZERO, c)
    new_b = TStmt(name_b, (("f", ext),), subst_vars(shift, {axis: Var("f")}), consumer.loc)
    body = Binary("*", r.body.a, Load(name_w, w.index)) if r.body.b is w else Binary("*", Load(name_w, w.index), r.body.b)
    folded = Binary("+", Load(name_b, (Var(axis),)), Reduce("sum", r.axes, body, r.loc))
    return [new_w, new_b, TStmt(consumer.tensor, producer.axes, folded, consumer.loc)]


def fold_scales(groups, keep: set[str], shapes: dict, params: set[str]) -> tuple[list, dict]:
    """Invariant: every tensor in `keep` gets the same values (up to rounding).

    Each product statement read by exactly one statement, affine in it per channel, and not
    kept itself, is folded with it. The consumer's group is cut there: what came before it and
    the folded weights and bias form a group `.fold`, then the folded product starts a group
    named after both (`conv+batchnorm`), so a rewrite of the product into kernels of its own
    (Winograd's) finds its weights computed. Returns the groups and the new tensors' shapes."""
    weights = weight_only(groups, params)
    readers = reader_counts(groups)
    producers = {st.tensor: (name, st) for name, stmts in groups for st in stmts}
    writes: dict[str, int] = {}
    for _, stmts in groups:
        for st in stmts:
            writes[st.tensor] = writes.get(st.tensor, 0) + 1
    folded: dict[int, list[TStmt]] = {}  # id(consumer) -> its replacement
    source: dict[int, str] = {}  # id(consumer) -> the producer's group
    gone: set[int] = set()
    made: dict[str, tuple[int, ...]] = {}
    for _, stmts in groups:
        for st in stmts:
            for t in sorted({x.tensor for x in st.value.walk() if isinstance(x, Load)}):
                if t not in producers or t in keep or readers.get(t) != 1 or writes.get(t) != 1:
                    continue
                pname, prod = producers[t]
                new = None if id(prod) in gone or id(prod) in folded else fold(prod, st, weights, shapes)
                if new is None:
                    continue
                gone.add(id(prod))
                folded[id(st)], source[id(st)] = new, pname
                for n in new[:2]:
                    made[n.tensor] = tuple(x for _, x in n.axes)
                    weights.add(n.tensor)
                break
    out: list[tuple[str, list[TStmt]]] = []
    for name, stmts in groups:
        cur: list[TStmt] = []
        for st in stmts:
            if id(st) in gone:
                continue
            if id(st) not in folded:
                cur.append(st)
                continue
            w, b, y = folded[id(st)]
            out.append((f"{name}.fold", cur + [w, b]))
            name, cur = f"{source[id(st)]}+{name.split('.')[-1]}", [y]
        if cur:
            out.append((name, cur))
    return out, made
