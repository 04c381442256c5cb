"""Index widths (codegen/widths.py): the intervals that decide 32-bit kernels and unsigned
divisions, checked against evaluating the expressions at every point of their loops."""
from __future__ import annotations

import itertools
import re

from hypothesis import given, settings, strategies as st

from dnnc.codegen import nvptx
from dnnc.codegen.widths import fits_32_bits, span
from dnnc.ir import Buffer, Kernel, Loop, Program, Store
from dnnc.te.expr import Binary, Const, Load, Unary, Var

RANGES = {"i": (0, 6), "j": (0, 3), "k": (0, 12)}


def _value(e, env):
    """e at one point, with the IR's floor division and modulo."""
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Var):
        return env[e.name]
    if isinstance(e, Unary):
        a = _value(e.a, env)
        return -a if e.op == "neg" else abs(a)
    a, b = _value(e.a, env), _value(e.b, env)
    return {"+": a + b, "-": a - b, "*": a * b, "max": max(a, b), "min": min(a, b),
            "/": a // b if b else 0, "%": a % b if b else 0}[e.op]


leaves = st.one_of(st.sampled_from([Var(v) for v in RANGES]), st.integers(-9, 9).map(Const))


def _tree(children):
    binary = st.tuples(st.sampled_from(["+", "-", "*", "max", "min", "/", "%"]), children, children)
    unary = st.tuples(st.sampled_from(["neg", "abs"]), children)
    return st.one_of(binary.map(lambda t: Binary(*t)), unary.map(lambda t: Unary(*t)))


exprs = st.recursive(leaves, _tree, max_leaves=8)


def _divides_by_zero(e, points) -> bool:
    return any(isinstance(x, Binary) and x.op in ("/", "%") and any(_value(x.b, p) == 0 for p in points)
               for x in e.walk())


@settings(max_examples=300, deadline=None)
@given(exprs)
def test_an_expressions_span_holds_every_value_it_takes(e):
    points = [dict(zip(RANGES, vs)) for vs in itertools.product(*(range(lo, hi + 1) for lo, hi in RANGES.values()))]
    if _divides_by_zero(e, points):
        return
    got = span(e, RANGES)
    if got is None:
        return
    values = [_value(e, p) for p in points]
    assert got[0] <= min(values) and max(values) <= got[1], (e, got, min(values), max(values))


def _copy(shape, index, extents):
    """for each loop: out[index] = x[index], over buffers of `shape`."""
    body = (Store("out", index, Load("x", index)),)
    for var, n in reversed(list(extents.items())):
        body = (Loop(var, n, body, "grid" if var == next(iter(extents)) else "serial"),)
    return body


def test_kernels_fit_32_bits_until_an_index_or_an_offset_does_not():
    i, j = Var("i"), Var("j")
    small = {"x": (1000, 1000), "out": (1000, 1000)}
    assert fits_32_bits(_copy((1000, 1000), (i, j), {"i": 1000, "j": 1000}), small, 1024)
    # 50,000 x 50,000 elements: the offset i * 50000 + j passes 2^31
    big = {"x": (50000, 50000), "out": (50000, 50000)}
    assert not fits_32_bits(_copy((50000, 50000), (i, j), {"i": 50000, "j": 50000}), big, 50176)
    # a product of indices past 2^31, even into a small buffer, under a guard or not
    wide = (Loop("i", 70000, (Store("out", (Binary("%", Binary("*", i, Const(70000)), Const(1000)), Const(0)),
                                    Const(1.0)),), "grid"),)
    assert not fits_32_bits(wide, small, 70144)
    # a position read back from a float has no bound
    back = (Loop("i", 10, (Store("out", (Unary("index", Load("x", (i, Const(0)))), Const(0)), Const(1.0)),),
                 "grid"),)
    assert not fits_32_bits(back, small, 256)
    # a launch of more threads than 2^31
    assert not fits_32_bits(_copy((1000, 1000), (i, j), {"i": 1000, "j": 1000}), small, 1 << 31)


def _emitted(shape, extents):
    i, j = Var("i"), Var("j")
    index = (i, Binary("%", Binary("+", Binary("*", j, Const(3)), Const(1)), Const(shape[1])))
    bufs = (Buffer("x", shape, "input"), Buffer("out", shape, "output"))
    p = Program("p", bufs, (Kernel("copy", _copy(shape, index, extents)),))
    return nvptx.emit(p, {})


def test_the_gpu_emits_32_bit_indices_and_unsigned_divisions_where_they_fit():
    text = _emitted((1000, 1000), {"i": 1000, "j": 1000})
    assert re.search(r"phi +i32", text) and "urem i32" in text and "srem" not in text and " i64 " not in text
    text = _emitted((50000, 50000), {"i": 50000, "j": 50000})
    assert re.search(r"phi +i64", text) and "urem i64" in text
