"""Index width: whether a kernel's integers fit in 32 bits.

A GPU multiplies and divides 64-bit integers in several instructions each (its integer unit
is 32 bits wide), and a contraction's staging decodes every element it loads with divisions
and remainders. So a kernel is emitted with 32-bit integers when every integer it can
compute lies in [-2^31, 2^31): each subexpression of each index, guard and element offset
(the offset of buf[index] as the code generator computes it, access.py), for every value
of the loops around it. That is decided by interval arithmetic over the loops' ranges; a
value it cannot bound (a position read back from a float) keeps the kernel at 64 bits.
"""
from __future__ import annotations

from ..ir import If, Loop, Mma, Store
from ..te.expr import Binary, Const, Expr, Load, Select, Unary, Var, is_bool, is_int
from .access import linear_offset

LOW, HIGH = -(1 << 31), (1 << 31) - 1
Interval = tuple[int, int]


def fits_32_bits(body, shapes: dict[str, tuple[int, ...]], launched: int) -> bool:
    """Every integer that kernel `body` (over buffers of `shapes`, on `launched` threads in
    all) computes fits in 32 bits, each thread's place in the launch included."""
    return launched <= HIGH and _Spans(shapes).block(body, {})


class _Spans:
    def __init__(self, shapes):
        self.shapes = shapes
        self.seen: dict[Expr, Interval | None] = {}  # a kernel binds each loop variable once

    def block(self, stmts, ranges: dict[str, Interval]) -> bool:
        return all(self.stmt(s, ranges) for s in stmts)

    def stmt(self, s, ranges) -> bool:
        if isinstance(s, Loop):
            return self.block(s.body, {**ranges, s.var: (0, s.extent - 1)})
        if isinstance(s, If):
            return self.expr(s.cond, ranges) and self.block(s.then, ranges) and self.block(s.orelse, ranges)
        if isinstance(s, Store):
            return self.access(s.buffer, s.index, ranges) and self.expr(s.value, ranges)
        if isinstance(s, Mma):  # the same accesses as the instruction's fragments
            return self.block(s.expand(), ranges)
        return self.expr(s.value, ranges)  # Let, Set

    def access(self, buf: str, index, ranges) -> bool:
        offset = linear_offset(self.shapes[buf], index)
        return all(self.expr(e, ranges) for e in (*index, offset))

    def expr(self, e: Expr, ranges) -> bool:
        for x in e.walk():
            if isinstance(x, Load) and not self.access(x.tensor, x.index, ranges):
                return False
            if is_int(x) and not is_bool(x):
                span = self.span(x, ranges)
                if span is None or span[0] < LOW or span[1] > HIGH:
                    return False
        return True

    def span(self, e: Expr, ranges) -> Interval | None:
        if e not in self.seen:
            self.seen[e] = span(e, ranges, lambda x: self.span(x, ranges))
        return self.seen[e]


def span(e: Expr, ranges: dict[str, Interval], inner=None) -> Interval | None:
    """The interval of integer expression e over the variables' `ranges`; None where it has
    none. `inner(x)` gives an operand's (default: this function; a memo of it, say)."""
    of = inner or (lambda x: span(x, ranges))
    if isinstance(e, Const):
        return int(e.value), int(e.value)
    if isinstance(e, Var):
        return ranges.get(e.name)
    if isinstance(e, Unary):
        a = of(e.a) if e.op in ("neg", "abs") else None
        if a is None:
            return None  # "index": a position stored as a float
        if e.op == "neg":
            return -a[1], -a[0]
        return (0 if a[0] <= 0 <= a[1] else min(abs(a[0]), abs(a[1]))), max(abs(a[0]), abs(a[1]))
    if isinstance(e, Select):
        a, b = of(e.a), of(e.b)
        return None if a is None or b is None else (min(a[0], b[0]), max(a[1], b[1]))
    if not isinstance(e, Binary):
        return None
    a, b = of(e.a), of(e.b)
    if a is None or b is None:
        return None
    if e.op == "+":
        return a[0] + b[0], a[1] + b[1]
    if e.op == "-":
        return a[0] - b[1], a[1] - b[0]
    if e.op == "*":
        corners = [x * y for x in a for y in b]
        return min(corners), max(corners)
    if e.op == "max":
        return max(a[0], b[0]), max(a[1], b[1])
    if e.op == "min":
        return min(a[0], b[0]), min(a[1], b[1])
    if e.op in ("/", "%") and b[0] > 0:  # floor division by a positive divisor, as the IR's
        if e.op == "%":
            return 0, b[1] - 1
        corners = [x // y for x in a for y in b]
        return min(corners), max(corners)
    if e.op in ("/", "%"):  # |quotient| <= |dividend|, |remainder| < |divisor|
        m = max(abs(a[0]), abs(a[1]), abs(b[0]), abs(b[1]))
        return -m, m
    return None
