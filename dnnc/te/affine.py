"""Integer index arithmetic: canonical affine forms, constant folding and interval bounds.

Index expressions are quasi-affine: sums of variables times constants, plus floor division
and modulo by positive constants (kept as opaque atoms). Canonical forms make equal index
expressions structurally equal, which the verifier and the guard placement rely on.
"""
from __future__ import annotations

from .expr import Binary, Const, Expr, Load, Select, Unary, Var, is_int, substitute

Interval = tuple[int, int]  # inclusive


def affine(e: Expr, split: bool = False) -> dict | None:
    """e as {term: coeff} with term 1 for the constant, a variable name, or an atom Expr.

    With split, multiples of a divisor come out of floor division and modulo, (c*m + r) / c =
    m + r / c, which code generation uses to see lanes that repeat (t / 2 along t); interval
    analysis keeps the atom whole, since its bounds are tighter that way.
    """
    if isinstance(e, Const):
        return {1: int(e.value)} if e.is_int else None
    if isinstance(e, Var):
        return {e.name: 1}
    if isinstance(e, Unary) and e.op == "neg":
        a = affine(e.a, split)
        return None if a is None else {k: -v for k, v in a.items()}
    if isinstance(e, Binary) and e.op in ("+", "-"):
        a, b = affine(e.a, split), affine(e.b, split)
        if a is None or b is None:
            return None
        sign = 1 if e.op == "+" else -1
        out = dict(a)
        for k, v in b.items():
            out[k] = out.get(k, 0) + sign * v
        return _merge_divmod({k: v for k, v in out.items() if v != 0 or k == 1})
    if isinstance(e, Binary) and e.op == "*":
        a, b = affine(e.a, split), affine(e.b, split)
        if a is None or b is None:
            return None
        if set(a) == {1}:
            a, b = b, a
        if set(b) == {1}:
            c = b[1]
            return {k: v * c for k, v in a.items() if v * c != 0 or k == 1}
    if isinstance(e, Binary) and e.op in ("/", "%", "max", "min"):
        a, b = affine(e.a, split), affine(e.b, split)
        if a is None or b is None:
            return None
        if set(a) == {1} and set(b) == {1}:
            x, y = a[1], b[1]
            if e.op == "/":
                return {1: x // y}
            if e.op == "%":
                return {1: x % y}
            return {1: max(x, y) if e.op == "max" else min(x, y)}
        if split and e.op in ("/", "%") and set(b) == {1} and b[1] > 0:
            # (c*m + r) / c = m + r / c and (c*m + r) % c = r % c: the multiples of c come out
            c = b[1]
            whole = {k: v // c for k, v in a.items() if v % c == 0 and v}
            rest = {k: v for k, v in a.items() if v % c}
            if not rest:
                return {1: 0} if e.op == "%" else {**whole, 1: whole.get(1, 0)}
            if whole:
                atom = Binary(e.op, from_affine({**rest, 1: rest.get(1, 0)}), Const(c))
                return {atom: 1, 1: 0} if e.op == "%" else {**whole, atom: 1, 1: whole.get(1, 0)}
        atom = Binary(e.op, from_affine(a), from_affine(b))
        return {atom: 1, 1: 0}
    if is_int(e):
        return {e: 1, 1: 0}
    return None


def _merge_divmod(d: dict) -> dict:
    """Undo flattening: (x / c)*c*m + (x % c)*m = x*m, and ((x / c) % e)*c*m + (x % c)*m =
    (x % (c*e))*m, for positive constants; so a flattened read is seen to be contiguous."""
    changed = True
    while changed:
        changed = False
        mods = [k for k in d if isinstance(k, Binary) and k.op == "%" and isinstance(k.b, Const) and d[k]]
        for r in mods:
            x, c, m = r.a, r.b.value, d[r]
            if c <= 0:
                continue
            q = Binary("/", x, Const(c))
            for k in list(d):
                if k == q and d[k] == c * m:  # (x / c)*c*m + (x % c)*m
                    new = affine(x)
                elif (isinstance(k, Binary) and k.op == "%" and k.a == q and isinstance(k.b, Const)
                      and k.b.value > 0 and d[k] == c * m):  # ((x / c) % e)*c*m + (x % c)*m
                    new = {Binary("%", x, Const(c * k.b.value)): 1, 1: 0}
                else:
                    continue
                if new is None:
                    continue
                del d[k], d[r]
                for t, v in new.items():
                    d[t] = d.get(t, 0) + v * m
                d = {t: v for t, v in d.items() if v != 0 or t == 1}
                changed = True
                break
            if changed:
                break
    return d


def from_affine(d: dict) -> Expr:
    out: Expr | None = None
    for k, v in d.items():
        if k == 1 or v == 0:
            continue
        term = Var(k) if isinstance(k, str) else k
        mag = abs(v)
        if mag != 1:
            term = Binary("*", term, Const(mag))
        if out is None:
            out = term if v > 0 else Unary("neg", term)
        else:
            out = Binary("+" if v > 0 else "-", out, term)
    c = d.get(1, 0)
    if out is None:
        return Const(c)
    if c:
        out = Binary("+" if c > 0 else "-", out, Const(abs(c)))
    return out


def row_major(shape: tuple[int, ...], index) -> Expr:
    """The element offset of index in a row-major array of this shape (not simplified)."""
    flat: Expr = Const(0)
    for ix, n in zip(index, shape, strict=True):
        flat = Binary("+", Binary("*", flat, Const(n)), ix)
    return flat


def simplify(e: Expr, split: bool = False) -> Expr:
    """The canonical form of an integer expression (other expressions are returned as they are)."""
    d = affine(e, split)
    return e if d is None else from_affine(d)


def constant(e: Expr) -> int | None:
    d = affine(e)
    if d is not None and set(d) <= {1}:
        return d.get(1, 0)
    return None


def bounds(e: Expr, ranges: dict[str, Interval], facts: dict | None = None) -> Interval | None:
    """Inclusive interval of integer expression e; None where a variable's range is unknown.

    `facts` maps expressions (canonical form) to intervals proven by enclosing guards.
    """
    facts = facts or {}
    d = affine(e)
    if d is None:
        return None
    key = from_affine(d)
    lo = hi = d.get(1, 0)
    for k, c in d.items():
        if k == 1:
            continue
        if isinstance(k, str):
            r = facts.get(Var(k), ranges.get(k))
        else:
            r = _atom_bounds(k, ranges, facts)
        if r is None:
            return None
        a, b = c * r[0], c * r[1]
        lo += min(a, b)
        hi += max(a, b)
    if key in facts:
        f = facts[key]
        lo, hi = max(lo, f[0]), min(hi, f[1])
    c = d.get(1, 0)
    if c:  # a fact about e - c bounds e too (a guard on i*8 + j, a read at i*8 + j - 3)
        rest = from_affine({k: x for k, x in d.items() if k != 1})
        if rest in facts:
            f = facts[rest]
            lo, hi = max(lo, f[0] + c), min(hi, f[1] + c)
    for fk, f in facts.items():  # a fact about part of the sum bounds that part (a vector lane guard
        part = affine(fk)        # jo*16 + ji < 20 under a flattened read (i*20 + jo*16 + ji) / 60)
        terms = {k: x for k, x in (part or {}).items() if k != 1}
        if not terms or any(d.get(k) != x for k, x in terms.items()):
            continue
        others = [bounds(from_affine({k: x}), ranges, None) for k, x in d.items() if k != 1 and k not in terms]
        if any(r is None for r in others):
            continue
        base = c - part.get(1, 0)
        lo = max(lo, f[0] + base + sum(r[0] for r in others))
        hi = min(hi, f[1] + base + sum(r[1] for r in others))
    return lo, hi


def _atom_bounds(e: Expr, ranges, facts) -> Interval | None:
    if e in facts:
        return facts[e]
    if isinstance(e, Binary):
        a = bounds(e.a, ranges, facts)
        b = bounds(e.b, ranges, facts)
        if a is None or b is None:
            return None
        if e.op == "/" and b[0] == b[1] and b[0] > 0:
            return a[0] // b[0], a[1] // b[0]
        if e.op == "%" and b[0] == b[1] and b[0] > 0:
            if a[0] >= 0 and a[1] < b[0]:
                return a
            return 0, b[0] - 1
        if e.op == "max":
            return max(a[0], b[0]), max(a[1], b[1])
        if e.op == "min":
            return min(a[0], b[0]), min(a[1], b[1])
    if isinstance(e, Select):
        a = bounds(e.a, ranges, facts)
        b = bounds(e.b, ranges, facts)
        if a is None or b is None:
            return None
        return min(a[0], b[0]), max(a[1], b[1])
    return None


def facts_from(cond: Expr, ranges, facts: dict, negate: bool = False) -> dict:
    """Intervals implied by a guard condition being true (or false, with negate).

    Understands conjunctions of comparisons between an index expression and a constant;
    anything else implies nothing (sound, merely less precise).
    """
    out = dict(facts)
    if isinstance(cond, Binary) and cond.op == "and" and not negate:
        return facts_from(cond.b, ranges, facts_from(cond.a, ranges, out))
    if isinstance(cond, Binary) and cond.op == "or" and negate:
        return facts_from(cond.b, ranges, facts_from(cond.a, ranges, out, True), True)
    if not (isinstance(cond, Binary) and cond.op in ("<", "<=", ">", ">=", "==")):
        return out
    op = cond.op
    if negate:
        op = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "=="}[op]
        if cond.op == "==":
            return out
    a, b = cond.a, cond.b
    ca, cb = constant(a), constant(b)
    if ca is not None and cb is None:  # c < e  ->  e > c
        a, b, op = b, a, {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}[op]
        cb = ca
    elif cb is None:
        return out
    key = simplify(a)
    cur = bounds(key, ranges, out) or (-(2**62), 2**62)
    lo, hi = cur
    if op == "<":
        hi = min(hi, cb - 1)
    elif op == "<=":
        hi = min(hi, cb)
    elif op == ">":
        lo = max(lo, cb + 1)
    elif op == ">=":
        lo = max(lo, cb)
    elif op == "==":
        lo, hi = max(lo, cb), min(hi, cb)
    out[key] = (lo, hi)
    return out


def simplify_in(e: Expr, ranges: dict[str, Interval]) -> Expr:
    """Canonical form of e, with each non-affine atom that ranges fix to one value folded."""
    d = affine(e)
    if d is None:
        return e
    out: dict = {}
    for k, c in d.items():
        if k != 1 and not isinstance(k, str):
            b = _atom_bounds(k, ranges, {})
            if b is not None and b[0] == b[1]:
                out[1] = out.get(1, 0) + c * b[0]
                continue
            if isinstance(k, Binary) and k.op == "%" and isinstance(k.b, Const):
                inner = bounds(k.a, ranges)  # x % c is x when x is already in [0, c)
                if inner is not None and 0 <= inner[0] and inner[1] < k.b.value:
                    for t, v in (affine(simplify_in(k.a, ranges)) or {k: 1}).items():
                        out[t] = out.get(t, 0) + c * v
                    continue
        out[k] = out.get(k, 0) + c
    return from_affine(_merge_divmod({t: v for t, v in out.items() if v != 0 or t == 1}))


def fold_panels(e, ranges: dict[str, Interval]):
    """e with each read index that is a floor division or modulo by a constant folded where the
    ranges settle it: (fo*B + fk*16 + fi) / B is fo and % B is fk*16 + fi when fk*16 + fi < B
    (a read of a weight packed in panels, schedule/pack.py). Other indices stay as they are."""

    def fold(ix):
        if not (isinstance(ix, Binary) and ix.op in ("/", "%") and isinstance(ix.b, Const)):
            return ix
        d = affine(ix, split=True)
        if d is None:
            return ix
        out: dict = {}
        for k, c in d.items():
            if k != 1 and not isinstance(k, str):
                b = _atom_bounds(k, ranges, {})
                inner = bounds(k.a, ranges) if isinstance(k, Binary) and k.op == "%" else None
                if b is not None and b[0] == b[1]:
                    out[1] = out.get(1, 0) + c * b[0]
                    continue
                if inner is not None and 0 <= inner[0] and inner[1] < k.b.value:
                    for t, v in (affine(k.a) or {}).items():
                        out[t] = out.get(t, 0) + c * v
                    continue
                return ix  # an atom left: not a panel read
            out[k] = out.get(k, 0) + c
        return from_affine(out)

    def fix(x):
        if isinstance(x, Load) and any(isinstance(i, Binary) and i.op in ("/", "%") for i in x.index):
            return Load(x.tensor, tuple(fold(i) for i in x.index), x.loc)
        return None

    return substitute(e, fix)


def canon_loads(e):
    """e with the index of every read in canonical form."""

    def fix(x):
        if isinstance(x, Load):
            return Load(x.tensor, tuple(simplify(i) for i in x.index), x.loc)
        return None

    return substitute(e, fix)
