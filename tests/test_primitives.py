"""Schedule primitives on loop IR: each transformed nest computes what its input computed
(checked with the reference interpreter on small random shapes, ragged ones included), and
invalid uses are refused with a clear DnncError."""
import numpy as np
import pytest

from dnnc.base.errors import DnncError
from dnnc.ir import Buffer, Kernel, Loop, Program, Store, walk
from dnnc.ir.interp import run
from dnnc.lower.nest import lower_stmt
from dnnc.schedule import primitives as P
from dnnc.schedule.steps import Tile, parse_step
from dnnc.te.expr import Binary, Const, Load, Reduce, Var
from dnnc.te.stmt import TStmt

SHAPES = [(4, 6, 5), (7, 9, 3), (1, 5, 8), (5, 16, 2)]  # (M, N, K), most ragged for factors 2..8


def matmul(M, N, K):
    """C[i, j] = sum(k) A[i, k] * B[k, j]: naive nest and buffers."""
    body = Binary("*", Load("A", (Var("i"), Var("k"))), Load("B", (Var("k"), Var("j"))))
    st = TStmt("C", (("i", M), ("j", N)), Reduce("sum", (("k", K),), body))
    shapes = {"A": (M, K), "B": (K, N), "C": (M, N)}
    return lower_stmt(st, shapes), shapes


def accumulating(M, N, K):
    """for i, k, j: C[i, j] = C[i, j] + A[i, k] * B[k, j]: a sum made in memory."""
    c = Load("C", (Var("i"), Var("j")))
    term = Binary("*", Load("A", (Var("i"), Var("k"))), Load("B", (Var("k"), Var("j"))))
    nest = [Loop("i", M, (Loop("k", K, (Loop("j", N, (Store("C", c.index, Binary("+", c, term)),)),)),))]
    return nest, {"A": (M, K), "B": (K, N), "C": (M, N)}


def execute(nest, shapes, seed, locals_=(), zero_c=False):
    rng = np.random.default_rng(seed)
    bufs = [Buffer("A", shapes["A"], "input"), Buffer("B", shapes["B"], "input"),
            Buffer("C", shapes["C"], "output")] + list(locals_)
    arrays = {"A": rng.standard_normal(shapes["A"]), "B": rng.standard_normal(shapes["B"])}
    if zero_c:
        arrays["C"] = np.zeros(shapes["C"])
    return run(Program("p", tuple(bufs), (Kernel("k", tuple(nest)),)), arrays)["C"]


def same(before, after, shapes, locals_=(), zero_c=False):
    for seed in (0, 1):
        want = execute(before, shapes, seed, zero_c=zero_c)
        got = execute(after, shapes, seed, locals_, zero_c=zero_c)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def kinds(nest):
    return {s.var: s.kind for s in walk(nest) if isinstance(s, Loop)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factor", [1, 2, 4])
def test_split(shape, factor):
    nest, shapes = matmul(*shape)
    out = P.Split("j", factor).apply(nest)
    assert {"jo", "ji"} <= set(kinds(out)) and "j" not in kinds(out)
    same(nest, out, shapes)
    out = P.Split("k", factor, "ko", "kk").apply(out)  # a reduction axis too
    same(nest, out, shapes)


def test_split_refuses():
    nest, _ = matmul(4, 6, 5)
    with pytest.raises(DnncError, match="no loop over q"):
        P.split(nest, "q", 4, "qo", "qi")
    with pytest.raises(DnncError, match="positive integer"):
        P.split(nest, "j", 0, "jo", "ji")
    with pytest.raises(DnncError, match="already used"):
        P.split(nest, "j", 2, "i", "ji")
    with pytest.raises(DnncError, match="already vector"):
        P.split(P.vectorize(P.accumulate(P.split(nest, "j", 2, "jo", "ji"), ("ji",), "C.acc")[0], "ji"),
                "ji", 2, "a", "b")


@pytest.mark.parametrize("shape", SHAPES)
def test_reorder(shape):
    nest, shapes = matmul(*shape)
    out = P.Split("i", 3).apply(P.Split("j", 4).apply(nest))
    out = P.Reorder(("io", "jo", "ii", "ji")).apply(out)
    loops = [s.var for s in walk(out) if isinstance(s, Loop)]
    assert loops[:4] == ["io", "jo", "ii", "ji"]
    same(nest, out, shapes)
    same(nest, P.reorder(nest, ("j", "i")), shapes)


def test_reorder_refuses():
    nest, _ = matmul(4, 6, 5)
    with pytest.raises(DnncError, match="named twice"):
        P.reorder(nest, ("i", "i"))
    with pytest.raises(DnncError, match="not perfectly nested"):
        P.reorder(nest, ("k", "i"))  # the reduction's register lies between j and k
    with pytest.raises(DnncError, match="no loop over z"):
        P.reorder(nest, ("z",))


@pytest.mark.parametrize("shape", SHAPES)
def test_vectorize_unroll_parallel(shape):
    nest, shapes = matmul(*shape)
    tiled, _ = P.accumulate(P.split(nest, "j", 4, "jo", "ji"), ("ji",), "C.acc")
    out = P.Parallel("i").apply(P.Unroll("jo").apply(P.Vectorize("ji").apply(tiled)))
    k = kinds(out)
    assert k["ji"] == "vector" and k["jo"] == "unroll"
    assert k["i"] == ("parallel" if shape[0] >= 2 else "serial")  # a loop of one stays serial
    same(nest, out, shapes, [P.Buffer("C.acc", (4,), "local")])


def test_kinds_refuse():
    nest, _ = matmul(4, 6, 5)
    with pytest.raises(DnncError, match="holds a register acc1"):
        P.vectorize(nest, "j")  # the reduction cannot run across lanes as it stands
    with pytest.raises(DnncError, match="more than 64"):
        P.unroll(matmul(4, 100, 2)[0], "j")
    with pytest.raises(DnncError, match="outermost"):
        P.parallel(nest, "j")
    with pytest.raises(DnncError, match="already unroll"):
        P.vectorize(P.unroll(nest, "k"), "k")
    with pytest.raises(DnncError, match="names no loop"):
        P.Parallel().apply(nest)


@pytest.mark.parametrize("shape", SHAPES)
def test_accumulate(shape):
    nest, shapes = matmul(*shape)
    out = P.Split("i", 3).apply(P.Split("j", 4).apply(nest))
    out = P.Reorder(("io", "jo", "ii", "ji")).apply(out)
    out, buf = P.Accumulate("C.acc", ("ii", "ji")).apply(out)
    assert buf.shape == (3, 4) and buf.kind == "local"
    # the reduction loop now runs outside the tile: one register tile per (io, jo)
    assert [s.var for s in walk(out) if isinstance(s, Loop)][:4] == ["io", "jo", "ii", "ji"]
    k_loop = next(s for s in walk(out) if isinstance(s, Loop) and s.var == "k")
    assert any(isinstance(s, Loop) and s.var == "ii" for s in k_loop.body)
    out = P.vectorize(P.unroll(out, "ii"), "ji")
    same(nest, out, shapes, [buf])


def test_accumulate_refuses():
    nest, _ = matmul(4, 6, 5)
    with pytest.raises(DnncError, match="reorder them first"):
        P.accumulate(nest, ("j", "i"), "C.acc")
    acc, _ = accumulating(2, 3, 2)
    with pytest.raises(DnncError, match="there must be a reduction"):
        P.accumulate(acc, ("j",), "C.acc")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [2, 3])
def test_block(shape, size):
    nest, shapes = accumulating(*shape)
    out = P.Block("k", size).apply(nest)
    assert [s.var for s in walk(out) if isinstance(s, Loop)][:3] == ["i", "ko", "ki"] or shape[0] == 1
    same(nest, out, shapes, zero_c=True)


def test_block_refuses():
    nest, _ = matmul(4, 6, 5)
    with pytest.raises(DnncError, match="does not add into memory"):
        P.block(nest, "i", 2, "io", "ii")


def test_tile_composition():
    t = parse_step("tile(c1.conv, vector=j:16, unroll=f:4, parallel)")
    assert P.show_composition(t) == ("split(j, 16), vectorize(ji), split(f, 4), unroll(fi), "
                                     "reorder(fo, jo, fi, ji), accumulate(c1.conv.acc, fi, ji), "
                                     "parallel(outermost)")
    assert str(t) == "tile(c1.conv, vector=j:16, unroll=f:4, parallel)"  # replayed as before
    wide = Tile("y", "j", 8, "f", 3, nth=1, vectors=2, panel=True)
    assert P.show_composition(wide) == ("split(j, 16 -> jo, jl), split(jl, 8 -> jk, ji), vectorize(ji), "
                                        "unroll(jk), split(f, 3), unroll(fi), reorder(jo, fo, fi, jk, ji), "
                                        "accumulate(y.acc1, fi, jk, ji)")
    blocked = Tile("w.grad", "j", 16, "f", 8, block=("n", 4))
    assert "block(n, 4)" in P.show_composition(blocked)
    assert parse_step(str(wide)) == wide
