"""Reverse-mode automatic differentiation on tensor expressions.

No layer has a hand-written backward. For a statement T[I] = E, every read A[f(I, R)] inside
E (R: the axes of the reductions around the read) receives the adjoint

    A.grad[f(I, R)] += T.grad[I] * dE/dA[f(I, R)]      over the domain I x R,

where the partial derivative is taken symbolically through element math, selects (the
branch taken), sums (1), means (1 / count) and max/min reductions (1 at the first argmax,
0 elsewhere). A term whose reads fall outside their tensors contributed nothing forward
and receives nothing back.

That scatter is then turned into a gather where the index map can be inverted: each
dimension of A is solved for one loop variable that appears in it alone, and the others
become a sum. The input gradient of a strided convolution becomes a transposed convolution,
written as an ordinary statement over x's own indices; a write to every element of A.grad
(so no zeroing, and safe to parallelize over A's indices). Where no inversion exists (flatten's
div/mod indices, a diagonal read), the scatter stays, after a statement that zeroes A.grad.

Before differentiating, `normalize` gives every max/min reduction a statement of its own and
a companion argmax statement, and hoists each sum that sits in a nonlinear context (such as
log(sum ...)) into a temporary, so the backward reads the saved value instead of
recomputing it.
"""
from __future__ import annotations

import math

from . import affine
from ..base.errors import CompilerBug
from .bounds import read_guards
from .expr import (Binary, Const, Expr, Load, Reduce, Select, Unary, Var, free_vars, is_int, rebuild,
                   subst_vars, substitute)
from .names import argmax_name, grad_name
from .stmt import TStmt

ZERO = Const(0.0)
ONE = Const(1.0)


# ----------------------------------------------------------------------------- normalize

def normalize(stmts: list[TStmt]) -> tuple[list[TStmt], list[tuple[str, tuple[int, ...]]]]:
    """Statements computing the same tensors, in a form the backward can use.

    Invariant: every tensor of the input is computed with the same values. Added are
    temporaries (returned with their shapes): hoisted reductions `T.rK` and argmax
    companions `T.arg` (the row-major position of the first maximum, as a number).
    """
    out: list[TStmt] = []
    temps: list[tuple[str, tuple[int, ...]]] = []
    for st in stmts:
        out += _normalize_stmt(st, temps)
    return out, temps


def _normalize_stmt(st: TStmt, temps) -> list[TStmt]:
    counter = [0]
    pre: list[TStmt] = []

    def hoist(r: Reduce, scope: list[tuple[str, int]]) -> Expr:
        used = free_vars(r)
        axes = tuple((n, x) for n, x in scope if n in used)
        counter[0] += 1
        name = f"{st.tensor}.r{counter[0]}"
        temps.append((name, tuple(x for _, x in axes)))
        pre.extend(_normalize_stmt(TStmt(name, axes, r, st.loc), temps))
        return Load(name, tuple(Var(n) for n, _ in axes))

    # bottom-up: hoist reductions that are not the whole right-hand side and need hoisting
    def walk(e: Expr, scope, ctx_root: Expr, top: bool) -> Expr:
        if isinstance(e, Reduce):
            body = walk(e.body, scope + list(e.axes), e.body, False)
            e = Reduce(e.op, e.axes, body, e.loc)
            if top:
                return e
            if e.op in ("max", "min") or not _linear_in(ctx_root, e):
                return hoist(e, scope)
            return e
        kids = e.children()
        if not kids or isinstance(e, Load):
            return e
        new = tuple(walk(k, scope, ctx_root, False) for k in kids)
        return rebuild(e, new)

    value = st.value
    # iterate: hoisting an inner reduction changes its context, so repeat until stable
    for _ in range(8):
        new = walk(value, list(st.axes), value, True)
        if new == value:
            break
        value = new
    body = TStmt(st.tensor, st.axes, value, st.loc, st.index, st.accumulate)
    out = pre + [body]
    if isinstance(value, Reduce) and value.op in ("max", "min"):
        arg_body = value.body if value.op == "max" else Unary("neg", value.body)
        name = argmax_name(st.tensor)
        temps.append((name, tuple(x for _, x in st.axes)))
        out.append(TStmt(name, st.axes, Reduce("argmax", value.axes, arg_body, value.loc), st.loc))
    return out


def _contains(e: Expr, t: Expr) -> bool:
    return any(x == t for x in e.walk())


def _linear_in(e: Expr, t: Expr) -> bool:
    """True if e is affine in the subexpression t (so d e / d t does not mention t)."""
    if e == t or not _contains(e, t):
        return True
    if isinstance(e, Binary) and e.op in ("+", "-"):
        return _linear_in(e.a, t) and _linear_in(e.b, t)
    if isinstance(e, Binary) and e.op == "*":
        return (_linear_in(e.a, t) and not _contains(e.b, t)) or (_linear_in(e.b, t) and not _contains(e.a, t))
    if isinstance(e, Binary) and e.op == "/":
        return _linear_in(e.a, t) and not _contains(e.b, t)
    if isinstance(e, Unary) and e.op == "neg":
        return _linear_in(e.a, t)
    if isinstance(e, Select):
        return not _contains(e.cond, t) and _linear_in(e.a, t) and _linear_in(e.b, t)
    if isinstance(e, Reduce) and e.op == "sum":
        return _linear_in(e.body, t)
    return False


# ----------------------------------------------------------------------------- backward

def needs_grad(stmts: list[TStmt], params: set[str]) -> set[str]:
    """Tensors whose values depend on a parameter (so their adjoints are needed)."""
    out = set(params)
    for st in stmts:
        if any(x.tensor in out for x in st.value.walk() if isinstance(x, Load)):
            out.add(st.tensor)
    return out


class Backward:
    """Builds adjoint statements, statement by statement in reverse order."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], wanted: set[str]):
        self.shapes = dict(shapes)
        self.wanted = wanted  # tensors that get adjoints
        self.started: set[str] = set()  # adjoints with a first (complete) write
        self.grads: list[tuple[str, tuple[int, ...]]] = []

    def seed(self, tensor: str) -> None:
        """tensor.grad is supplied from outside (the loss: 1)."""
        self._declare(tensor)
        self.started.add(tensor)

    def _declare(self, tensor: str) -> None:
        g = grad_name(tensor)
        if g not in self.shapes:
            self.shapes[g] = self.shapes[tensor]
            self.grads.append((g, self.shapes[tensor]))

    def stmt(self, st: TStmt) -> list[TStmt]:
        """Adjoint statements for one forward statement (empty if its result has no adjoint)."""
        if st.tensor not in self.started or st.index is not None:
            return []
        g0: Expr = Load(grad_name(st.tensor), tuple(Var(n) for n, _ in st.axes))
        out: list[TStmt] = []
        self._counter = 0
        for load, axes, coef, conds in self._contributions(st, g0):
            if load.tensor not in self.wanted:
                continue
            out += self._emit(load, axes, coef, conds, st)
        return out

    # -- the chain rule over one expression
    def _contributions(self, st: TStmt, g0: Expr):
        ranges = {n: (0, x - 1) for n, x in st.axes}

        def visit(e: Expr, g: Expr, axes: list, conds: list):
            if isinstance(e, Load):
                yield e, axes, g, conds
                return
            if isinstance(e, (Const, Var)):
                return
            if isinstance(e, Reduce):
                inner = axes + list(e.axes)
                for n, x in e.axes:
                    ranges[n] = (0, x - 1)
                guards = read_guards(e.body, ranges, {}, self.shapes)
                c2 = conds + guards
                if e.op == "sum":
                    yield from visit(e.body, g, inner, c2)
                elif e.op == "mean":
                    yield from visit(e.body, Binary("/", g, self._count(e, ranges)), inner, c2)
                elif e.op in ("max", "min"):
                    flat: Expr = Const(0)
                    for n, x in e.axes:
                        flat = Binary("+", Binary("*", flat, Const(x)), Var(n))
                    arg = Load(argmax_name(st.tensor), tuple(Var(n) for n, _ in st.axes))
                    yield from visit(e.body, Select(Binary("==", affine.simplify(flat), arg), g, ZERO), inner, c2)
                return  # argmax and count have no derivative
            if isinstance(e, Select):
                yield from visit(e.a, Select(e.cond, g, ZERO), axes, conds)
                yield from visit(e.b, Select(e.cond, ZERO, g), axes, conds)
                return
            if isinstance(e, Unary):
                a = e.a
                d = {
                    "neg": lambda: Unary("neg", g),
                    "exp": lambda: Binary("*", g, Unary("exp", a)),
                    "log": lambda: Binary("/", g, a),
                    "sqrt": lambda: Binary("/", g, Binary("*", Const(2.0), Unary("sqrt", a))),
                    "tanh": lambda: Binary("*", g, Binary("-", ONE, Binary("*", Unary("tanh", a), Unary("tanh", a)))),
                    "sigmoid": lambda: Binary("*", g, Binary("*", Unary("sigmoid", a),
                                                            Binary("-", ONE, Unary("sigmoid", a)))),
                    "abs": lambda: Select(Binary("<", a, ZERO), Unary("neg", g), g),
                }.get(e.op)
                if d is not None:
                    yield from visit(a, d(), axes, conds)
                return
            if isinstance(e, Binary):
                a, b, op = e.a, e.b, e.op
                if op == "+":
                    yield from visit(a, g, axes, conds)
                    yield from visit(b, g, axes, conds)
                elif op == "-":
                    yield from visit(a, g, axes, conds)
                    yield from visit(b, Unary("neg", g), axes, conds)
                elif op == "*":
                    yield from visit(a, Binary("*", g, b), axes, conds)
                    yield from visit(b, Binary("*", g, a), axes, conds)
                elif op == "/":
                    yield from visit(a, Binary("/", g, b), axes, conds)
                    yield from visit(b, Unary("neg", Binary("/", Binary("*", g, a), Binary("*", b, b))), axes, conds)
                elif op in ("max", "min"):
                    # like the compiled code: b when it is strictly greater (smaller), else a
                    wins = Binary(">" if op == "max" else "<", b, a)
                    yield from visit(a, Select(wins, ZERO, g), axes, conds)
                    yield from visit(b, Select(wins, g, ZERO), axes, conds)
                return  # comparisons and logic have no derivative

        yield from visit(st.value, g0, list(st.axes), [])

    def _count(self, r: Reduce, ranges: dict) -> Expr:
        """How many terms of the mean r have every read in range: a constant unless padding
        makes it vary with the position (the ranges include the statement's own axes, so a read
        indexed by them alone is known to be in range)."""
        guards = read_guards(r.body, ranges, {}, self.shapes)
        if not guards:
            return Const(float(math.prod(x for _, x in r.axes)))
        closed = _closed_count(r.axes, guards)
        if closed is not None:
            return closed
        self._counter += 1
        ren = {n: f"{n}_c{self._counter}" for n, _ in r.axes}
        body = subst_vars(r.body, {a: Var(b) for a, b in ren.items()})
        return Reduce("count", tuple((ren[n], x) for n, x in r.axes), body)

    # -- one contribution as a statement
    def _emit(self, load: Load, axes, coef: Expr, conds: list[Expr], st: TStmt) -> list[TStmt]:
        A = load.tensor
        self._declare(A)
        gname = grad_name(A)
        shape = self.shapes[A]
        gathered = invert(load.index, axes, shape)
        out: list[TStmt] = []
        if gathered is not None:
            new_axes, solution, extra = gathered
            rest = tuple((n, x) for n, x in axes if n not in solution)
            value = _subst(coef, solution)
            cs = [_canon(_subst(c, solution)) for c in conds] + extra
            if rest:  # inside a sum, a read out of range already contributes nothing
                cs = [c for c in cs if not _implied_by_reads(c, value, self.shapes)]
            value = _select_all(cs, value)
            if rest:
                value = Reduce("sum", rest, value)
            first = A not in self.started
            self.started.add(A)
            out.append(TStmt(gname, new_axes, value, st.loc, None, not first))
            return out
        if A not in self.started:
            out.append(TStmt(gname, tuple((f"z{k}", x) for k, x in enumerate(shape)), ZERO, st.loc))
            self.started.add(A)
        cs = [c for c in conds if not _implied_by_reads(c, Binary("+", coef, load), self.shapes)]
        out.append(TStmt(gname, tuple(axes), _select_all(cs, coef), st.loc, load.index, True))
        return out


def _closed_count(axes, guards: list[Expr]) -> Expr | None:
    """The number of points of `axes` where every guard holds, as an integer expression of the
    outer indices, when each guard bounds one axis of unit step (`i*S + p - P >= 0`, `... < H`:
    a padded pool window). Per axis p < X the count is max(0, min(X, hi) - max(0, lo)), where
    lo <= p < hi is what the guards leave; the total is the product. None for other guards."""
    lo: dict[str, list[Expr]] = {n: [] for n, _ in axes}
    hi: dict[str, list[Expr]] = {n: [] for n, _ in axes}
    for g in guards:
        if not (isinstance(g, Binary) and g.op in (">=", "<") and isinstance(g.b, Const)):
            return None
        d = affine.affine(g.a)
        mine = [n for n in lo if d is not None and d.get(n, 0) != 0]
        if d is None or len(mine) != 1 or d[mine[0]] != 1:
            return None
        p = mine[0]
        rest = affine.from_affine({k: v for k, v in d.items() if k != p})  # guard: rest + p OP bound
        bound = affine.simplify(Binary("-", g.b, rest))
        (lo if g.op == ">=" else hi)[p].append(bound)
    total: Expr | None = None
    for n, x in axes:
        first: Expr = Const(0)
        for b in lo[n]:
            first = Binary("max", first, b)
        last: Expr = Const(x)
        for b in hi[n]:
            last = Binary("min", last, b)
        k = Binary("max", Const(0), Binary("-", last, first)) if lo[n] or hi[n] else Const(x)
        total = k if total is None else Binary("*", total, k)
    return total


def _subst(e: Expr, solution: dict[str, Expr]) -> Expr:
    e = subst_vars(e, solution)
    return _canon(e)


def _canon(e: Expr) -> Expr:
    """Canonical index expressions in every load and comparison of e."""

    def fix(x):
        if isinstance(x, Load):
            return Load(x.tensor, tuple(affine.simplify(i) for i in x.index), x.loc)
        if isinstance(x, Binary) and x.op in ("<", "<=", ">", ">=", "==", "!=") and is_int(x.a) and is_int(x.b):
            return Binary(x.op, affine.simplify(x.a), affine.simplify(x.b), x.loc)
        return None

    return substitute(e, fix)


def _select_all(conds: list[Expr], value: Expr) -> Expr:
    if not conds:
        return value
    c = conds[0]
    for x in conds[1:]:
        c = Binary("and", c, x)
    return Select(c, value, ZERO)


def _implied_by_reads(c: Expr, value: Expr, shapes) -> bool:
    """c is `e >= 0` or `e < K` and value reads some tensor at index e in a dimension of size K."""
    if not (isinstance(c, Binary) and c.op in (">=", "<") and isinstance(c.b, Const)):
        return False
    for x in value.walk():
        if isinstance(x, Load):
            for k, ix in enumerate(x.index):
                if ix == c.a and (c.op == ">=" and c.b.value == 0 or c.op == "<" and c.b.value == shapes[x.tensor][k]):
                    return True
    return False


def invert(index: tuple[Expr, ...], axes: list[tuple[str, int]], shape: tuple[int, ...]):
    """Solve A[index] = A[t0, t1, ...] for one loop variable per dimension.

    Returns (new axes over A's shape, {var: solution}, extra conditions) or None when some
    dimension has no variable of its own. Conditions keep solutions inside their ranges
    and require exact division for strided indices.
    """
    forms = [affine.affine(i) for i in index]
    if any(f is None for f in forms):
        return None
    extent = dict(axes)
    where: dict[str, set[int]] = {}
    for d, f in enumerate(forms):
        for k in f:
            if k == 1:
                continue
            names = {k} if isinstance(k, str) else free_vars(k)
            for n in names:
                where.setdefault(n, set()).add(d)
    atoms_vars = [set().union(*[free_vars(k) for k in f if k != 1 and not isinstance(k, str)] or [set()])
                  for f in forms]
    taken = {n for n, _ in axes}
    new_axes, solution, conds = [], {}, []
    ranges = {}
    for d, f in enumerate(forms):
        cands = [n for n in f if isinstance(n, str) and f[n] != 0 and where.get(n) == {d}
                 and n not in atoms_vars[d] and n in extent]
        if not cands:
            return None
        v = max(cands, key=lambda n: (extent[n], -list(extent).index(n)))
        if index[d] == Var(v):
            name = v
        else:
            name = f"t{d}"
            while name in taken:
                name += "_"
        taken.add(name)
        new_axes.append((name, shape[d]))
        ranges[name] = (0, shape[d] - 1)
        c = f[v]
        rest = affine.from_affine({k: x for k, x in f.items() if k != v})
        num = affine.simplify(Binary("-", Var(name), rest))
        if c == 1:
            sol = num
        elif c == -1:
            sol = affine.simplify(Unary("neg", num))
        else:
            # t = c*v + w + k with 0 <= w < |c| (a window no wider than its stride): both are
            # fixed, v = (t - k) / c and w = (t - k) % c, so neither is summed over
            c_pos = c > 0
            w = next((n for n in cands if n != v and f[n] == 1 and extent[n] == abs(c) and c_pos), None)
            if w is not None:
                rest2 = affine.from_affine({k: x for k, x in f.items() if k not in (v, w)})
                num2 = affine.simplify(Binary("-", Var(name), rest2))
                solution[w] = Binary("%", num2, Const(c))
                ranges[w] = (0, c - 1)
                sol = Binary("/", num2, Const(c))
            else:
                sol = Binary("/", num, Const(c))
                conds.append(Binary("==", Binary("%", num, Const(abs(c))), Const(0)))
        solution[v] = sol
    for n, x in axes:
        if n not in solution:
            ranges[n] = (0, x - 1)
    for v, sol in solution.items():
        if sol == Var(v) or (isinstance(sol, Binary) and sol.op == "%"):
            continue  # a remainder is in range by construction
        b = affine.bounds(sol, ranges)
        if b is None or b[0] < 0:
            conds.append(Binary(">=", affine.simplify(sol), Const(0)))
        if b is None or b[1] > extent[v] - 1:
            conds.append(Binary("<", affine.simplify(sol), Const(extent[v])))
    return tuple(new_axes), solution, conds


def backward(stmts: list[TStmt], shapes: dict[str, tuple[int, ...]], params: list[str], loss: str):
    """Adjoint statements of `stmts` (normalized, forward order) for d loss / d params.

    Returns (groups, grad buffers): groups are (forward statement, its adjoint statements) in
    the order they must run; loss.grad is an input the caller sets to 1.
    """
    wanted = needs_grad(stmts, set(params))
    bw = Backward(shapes, wanted)
    bw.seed(loss)
    groups = []
    for st in reversed(stmts):
        adj = bw.stmt(st)
        if adj:
            groups.append((st, adj))
    missing = [p for p in params if p not in bw.started]
    if missing and len(missing) == len(params):
        raise CompilerBug(f"no gradient reaches any parameter ({missing[0]}, ...)")
    return groups, bw.grads, [p for p in params if p not in bw.started]
