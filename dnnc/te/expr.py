"""Expression nodes shared by the tensor expressions and the loop-nest IR.

One small family of immutable nodes: constants, index variables, scalar registers, loads,
unary and binary operators, selects and reductions. Integer expressions index tensors;
float expressions compute values. Integer `/` and `%` are floor division and modulo.
Source locations ride along for error messages but take no part in equality.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from ..base.errors import Loc

ARITH = ("+", "-", "*", "/", "%", "max", "min")
COMPARE = ("<", "<=", ">", ">=", "==", "!=")
LOGIC = ("and", "or")
# tf32 and bf16: a value rounded to float32, then to a tensor core's operand format (10 and 7
# mantissa bits; to nearest, ties away from zero for tf32 as cvt.rna does, to even for bf16)
UNARY = ("neg", "exp", "log", "sqrt", "tanh", "sigmoid", "abs", "not", "tf32", "bf16")
REDUCE = ("sum", "max", "min", "mean")


class Expr:
    __slots__ = ()

    def __getstate__(self):  # a cached hash (below) is this process's: never copied elsewhere
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def children(self) -> tuple["Expr", ...]:
        return ()

    def walk(self) -> Iterator["Expr"]:
        yield self
        for c in self.children():
            yield from c.walk()


def _cached_hash(*names: str):
    """The hash a frozen dataclass of these fields has, computed once per node: the passes
    key dictionaries by whole index expressions, which would otherwise be rehashed down
    to the leaves at every lookup."""

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, n) for n in names))
            object.__setattr__(self, "_hash", h)
        return h

    return __hash__


@dataclass(frozen=True)
class Const(Expr):
    value: float | int
    loc: Loc | None = field(default=None, compare=False, repr=False)

    @property
    def is_int(self) -> bool:
        return isinstance(self.value, int)


@dataclass(frozen=True)
class Var(Expr):
    """A loop or index variable (integer)."""

    name: str
    loc: Loc | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Scalar(Expr):
    """A float register local to a kernel (reduction accumulators)."""

    name: str


@dataclass(frozen=True)
class Load(Expr):
    tensor: str
    index: tuple[Expr, ...]
    loc: Loc | None = field(default=None, compare=False, repr=False)

    __hash__ = _cached_hash("tensor", "index")

    def children(self):
        return self.index


@dataclass(frozen=True)
class Unary(Expr):
    op: str
    a: Expr
    loc: Loc | None = field(default=None, compare=False, repr=False)

    __hash__ = _cached_hash("op", "a")

    def children(self):
        return (self.a,)


@dataclass(frozen=True)
class Binary(Expr):
    op: str
    a: Expr
    b: Expr
    loc: Loc | None = field(default=None, compare=False, repr=False)

    __hash__ = _cached_hash("op", "a", "b")

    def children(self):
        return (self.a, self.b)


@dataclass(frozen=True)
class Select(Expr):
    """cond ? a : b, evaluated lazily: a load in the branch not taken is never performed."""

    cond: Expr
    a: Expr
    b: Expr
    loc: Loc | None = field(default=None, compare=False, repr=False)

    __hash__ = _cached_hash("cond", "a", "b")

    def children(self):
        return (self.cond, self.a, self.b)


@dataclass(frozen=True)
class Reduce(Expr):
    """op over axes ((name, extent), ...) of body. Reads out of range contribute nothing."""

    op: str
    axes: tuple[tuple[str, int], ...]
    body: Expr
    loc: Loc | None = field(default=None, compare=False, repr=False)

    def children(self):
        return (self.body,)


# ----------------------------------------------------------------------------- helpers

def is_int(e: Expr) -> bool:
    """True for integer (index) expressions, False for float values and booleans."""
    if isinstance(e, Const):
        return e.is_int
    if isinstance(e, Var):
        return True
    if isinstance(e, Binary) and e.op in ARITH:
        return is_int(e.a) and is_int(e.b)
    if isinstance(e, Unary) and e.op in ("neg", "abs"):
        return is_int(e.a)
    if isinstance(e, Unary) and e.op == "index":  # a position stored in a float tensor
        return True
    if isinstance(e, Select):
        return is_int(e.a) and is_int(e.b)
    return False


def is_bool(e: Expr) -> bool:
    return (isinstance(e, Binary) and e.op in COMPARE + LOGIC) or (
        isinstance(e, Unary) and e.op == "not"
    )


def free_vars(e: Expr) -> set[str]:
    """Index variables used in e, minus those bound by reductions inside it."""
    if isinstance(e, Var):
        return {e.name}
    if isinstance(e, Reduce):
        return free_vars(e.body) - {n for n, _ in e.axes}
    out: set[str] = set()
    for c in e.children():
        out |= free_vars(c)
    return out


def rebuild(e: Expr, kids: tuple[Expr, ...]) -> Expr:
    """A copy of e with new children (same order as e.children())."""
    if isinstance(e, Load):
        return Load(e.tensor, kids, e.loc)
    if isinstance(e, Unary):
        return Unary(e.op, kids[0], e.loc)
    if isinstance(e, Binary):
        return Binary(e.op, kids[0], kids[1], e.loc)
    if isinstance(e, Select):
        return Select(kids[0], kids[1], kids[2], e.loc)
    if isinstance(e, Reduce):
        return Reduce(e.op, e.axes, kids[0], e.loc)
    return e


def substitute(e: Expr, fn) -> Expr:
    """Bottom-up rewrite: fn(node) returns a replacement or None to keep the node."""
    kids = e.children()
    if kids:
        new = tuple(substitute(k, fn) for k in kids)
        if new != kids:
            e = rebuild(e, new)
    r = fn(e)
    return e if r is None else r


def subst_vars(e: Expr, mapping: dict[str, Expr]) -> Expr:
    return substitute(e, lambda x: mapping.get(x.name) if isinstance(x, Var) else None)


# ----------------------------------------------------------------------------- printing

_PREC = {"or": 1, "and": 2, "<": 3, "<=": 3, ">": 3, ">=": 3, "==": 3, "!=": 3,
         "+": 4, "-": 4, "*": 5, "/": 5, "%": 5}


def show(e: Expr, prec: int = 0) -> str:
    """Readable infix text, parenthesized only where precedence needs it."""
    if isinstance(e, Const):
        v = e.value
        if isinstance(v, float):
            if v == float("inf"):
                return "inf"
            if v == float("-inf"):
                return "-inf"
            return repr(v)
        return str(v)
    if isinstance(e, (Var, Scalar)):
        return e.name
    if isinstance(e, Load):
        return f"{e.tensor}[{', '.join(show(i) for i in e.index)}]"
    if isinstance(e, Unary):
        if e.op == "neg":
            return f"-{show(e.a, 6)}"
        return f"{e.op}({show(e.a)})"
    if isinstance(e, Binary):
        if e.op in ("max", "min", "uniform"):
            return f"{e.op}({show(e.a)}, {show(e.b)})"
        p = _PREC[e.op]
        text = f"{show(e.a, p)} {e.op} {show(e.b, p + 1)}"
        return f"({text})" if p < prec else text
    if isinstance(e, Select):
        return f"select({show(e.cond)}, {show(e.a)}, {show(e.b)})"
    if isinstance(e, Reduce):
        axes = ", ".join(f"{n} < {x}" for n, x in e.axes)
        text = f"{e.op}({axes}) {show(e.body, 5)}"
        return f"({text})" if prec > 4 else text
    raise TypeError(e)
