"""Bounds checks of the debug build: every index tested against its dimension at run time.

Only the lanes that really access memory are tested, so a masked-off lane of padding or a
ragged edge is no error. On failure the generated code prints the kernel, the buffer and the
first bad index to stderr and aborts (the emitter's `report`: on a GPU, printf and a trap).
The verifier proves the same statically; the checks are the net under it.
"""
from __future__ import annotations

from llvmlite import ir

from .exprs import ExprEmitter
from .types import I1, I32, I64, is_vec, vconst


def check_bounds(em: ExprEmitter, kernel: str, what: str, buf: str, index, lanes: ir.Value | None) -> None:
    """Abort, naming the kernel, buffer and index, if an index of buf is outside its
    dimension in any of `lanes` (None: every lane)."""
    b = em.b
    shape = em.shapes[buf]
    idx = [em.int(ix) for ix in index]
    bad = None
    for i, n in zip(idx, shape):
        lo = b.icmp_signed("<", i, _like(i, 0))
        hi = b.icmp_signed(">=", i, _like(i, n))
        out = b.or_(lo, hi)
        bad = out if bad is None else b.or_(*em.both(bad, out))
    if bad is None:
        return
    if is_vec(bad) or lanes is not None:
        bad = em.splat(bad)
        if lanes is not None:
            bad = b.and_(bad, lanes)
        fn = em.intrinsic(f"llvm.vector.reduce.or.v{em.width}i1", I1, [bad.type])
        anybad = b.call(fn, [bad])
    else:
        anybad = bad
    with b.if_then(anybad, likely=False):
        values = idx
        if is_vec(bad):  # report the first lane that is out of range
            iw = ir.IntType(em.width)
            cttz = em.intrinsic(f"llvm.cttz.i{em.width}", iw, [iw, I1])
            lane = b.call(cttz, [b.bitcast(bad, iw), ir.Constant(I1, 0)])
            values = [b.extract_element(i, lane) if is_vec(i) else i for i in idx]
        values = [v if v.type == I64 else b.sext(v, I64) for v in values]  # printed as %lld
        text = (f"dnnc: error: out-of-bounds {what} {buf}[{', '.join(['%lld'] * len(idx))}] "
                f"(shape {list(shape)}) in kernel {kernel}\n\0").encode()
        em.report(text, values)


def report(m: ir.Module, b: ir.IRBuilder, text: bytes, values: list[ir.Value]) -> None:
    """The CPU's report of a bad access: dprintf(2, text, values...); abort()."""
    fmt = ir.GlobalVariable(m, ir.ArrayType(ir.IntType(8), len(text)), m.get_unique_name("bounds.msg"))
    fmt.initializer = ir.Constant(fmt.type.pointee, bytearray(text))
    fmt.global_constant = True
    fmt.linkage = "private"
    i8p = ir.IntType(8).as_pointer()
    dprintf = m.globals.get("dprintf") or ir.Function(m, ir.FunctionType(I32, [I32, i8p], var_arg=True), "dprintf")
    abort = m.globals.get("abort") or ir.Function(m, ir.FunctionType(ir.VoidType(), []), "abort")
    b.call(dprintf, [ir.Constant(I32, 2), b.bitcast(fmt, i8p), *values])
    b.call(abort, [])


def _like(v: ir.Value, n: int) -> ir.Value:
    """The constant n, in every lane when v is a vector."""
    return vconst(v.type, (n,) * v.type.count) if is_vec(v) else ir.Constant(I64, n)
