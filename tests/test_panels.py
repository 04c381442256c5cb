"""Weights packed in panels (Pack's `block`): the lane dimension cut into contiguous runs of a
register tile's width, [D / B, ..., B], and the reads' `/ B` and `% B` folded away where the
loop ranges settle them (te/affine.fold_panels). Checked on the reference interpreter and
through the JIT against numpy."""
from __future__ import annotations

import numpy as np
import pytest

import dnnc
from dnnc.driver.compile import lower
from dnnc.driver.programs import job_for
from dnnc.ir import walk
from dnnc.ir.interp import run as interp
from dnnc.schedule.pack import apply_packs
from dnnc.schedule.steps import Pack
from dnnc.te.affine import fold_panels
from dnnc.te.expr import Binary, Const, Load, Reduce, Var, show
from dnnc.te.stmt import TStmt

LANES = Binary("+", Binary("*", Var("uo"), Const(64)), Binary("+", Binary("*", Var("uk"), Const(16)), Var("ui")))


def test_fold_panels_settles_division_and_modulo_by_the_ranges():
    ranges = {"uo": (0, 7), "uk": (0, 3), "ui": (0, 15), "k": (0, 99)}
    e = Load("P", (Binary("/", LANES, Const(64)), Var("k"), Binary("%", LANES, Const(64))))
    assert show(fold_panels(e, ranges)) == "P[uo, k, uk * 16 + ui]"
    wide = dict(ranges, uk=(0, 4))  # uk * 16 + ui may reach 79: the division is not settled
    assert fold_panels(e, wide) == e


@pytest.mark.parametrize("block", [8, 16])
def test_a_panel_pack_computes_the_same_values(block):
    """C[i, j] = sum(k) A[i, k] * W[j, k] reading W packed [j / B, k, B]."""
    M, N, K = 3, 32, 5
    st = TStmt("C", (("i", M), ("j", N)), Reduce("sum", (("k", K),), Binary(
        "*", Load("A", (Var("i"), Var("k"))), Load("W", (Var("j"), Var("k"))))))
    shapes = {"A": (M, K), "W": (N, K), "C": (M, N)}
    stmts, temps = apply_packs([st], [Pack("W", (1, 0), "C", 0, block)], shapes)
    assert temps == [(f"W.packed10b{block}", (N // block, K, block))]
    rng = np.random.default_rng(block)
    a, w = rng.normal(size=(M, K)), rng.normal(size=(N, K))
    from dnnc.lower.nest import lower_stmt
    from dnnc.ir import Buffer, Kernel, Program
    allshapes = dict(shapes, **dict(temps))
    body = [s for t in stmts for s in lower_stmt(t, allshapes)]
    bufs = tuple(Buffer(n, s, "temp" if n not in ("A", "W", "C") else "param", "f64") for n, s in allshapes.items())
    out = interp(Program("p", bufs, (Kernel("k", tuple(body), "k"),)), {"A": a, "W": w})
    np.testing.assert_allclose(out["C"], a @ w.T, rtol=1e-12)
    np.testing.assert_allclose(out[temps[0][0]], w.reshape(N // block, block, K).transpose(0, 2, 1))


@pytest.mark.parametrize("batch", [16, 20])
def test_a_large_dense_layer_reads_contiguous_panels_and_matches_numpy(batch):
    net = dnnc.load("network d { input x: [512]\n y = dense(x, 640)\n output y }")
    prog = lower(job_for(net.at_batch(batch), "forward"), upto="fold_guards")[-1][1].program
    packs = [b.name for b in prog.buffers if ".packed" in b.name]
    assert packs == ["y.weight.packed10b64"], packs
    reads = [x for k in prog.kernels for s in walk(k.body) for x in getattr(s, "value", Const(0)).walk()
             if isinstance(x, Load) and x.tensor == packs[0]]
    assert reads and all(not (isinstance(i, Binary) and i.op in ("/", "%")) for x in reads for i in x.index)
    m = net.compile(batch=batch, threads=1)
    x = np.random.default_rng(batch).normal(size=(batch, 512)).astype(np.float32)
    want = x.astype(np.float64) @ np.asarray(m.params["y.weight"], np.float64).T + m.params["y.bias"]
    np.testing.assert_allclose(m.forward(x=x)["y"], want, rtol=1e-4, atol=1e-4)
