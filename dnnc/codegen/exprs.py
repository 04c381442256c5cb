"""Expression emission: integer (index), condition and float expressions to LLVM values.

In a vector loop every value that depends on the vector variable is a <W x T> vector, and a
scalar meeting one is broadcast (`splat`). Integer division and modulo round as the IR's
(Python's) do, toward negative infinity. A select whose arms read memory is a branch, or in
vector code a pair of lane masks, so a read its guard rules out is never performed.
"""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from ..te.expr import Binary, Const, Expr, Load, Scalar, Select, Unary, Var, is_bool, is_int
from . import widths
from .types import FAST, FLOAT, I32, I64, intrinsic, is_vec, vconst, vname


class ExprEmitter:
    """The values of one function's expressions; memory reads are left to `load`.

    Integers are `ix` wide: i64, or i32 where a kernel's indices are known to fit
    (codegen/widths.py), which the GPU divides and multiplies several times faster."""

    ix = I64
    # reuse an integer expression's value where an earlier one dominates (`scope`): a staged
    # GPU kernel decodes the same indices many times over, and LLVM's time grows with the text
    reuse_ints = False
    # where the loops' ranges show a division's operands non-negative (codegen/widths.py), emit
    # it as one unsigned division, not floor division's seven instructions
    unsigned_division = False

    def __init__(self, m: ir.Module, fn: ir.Function, shapes: dict, ft):
        self.m, self.fn, self.shapes, self.ft = m, fn, shapes, ft
        self.entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(fn.append_basic_block("body"))
        self.regs: dict[str, ir.AllocaInstr] = {}
        self.vars: dict[str, ir.Value] = {}
        self.vec: tuple[str, int] | None = None  # the vector loop's variable and width
        self.mask: ir.Value | None = None  # lanes enabled by the guards around (vector code)
        self.known: list[dict] = [{}]  # integer values by expression, one dict per open scope
        self.ranges: dict[str, tuple[int, int]] = {}  # of the loop variables in scope
        self.spans: dict[Expr, tuple[int, int] | None] = {}  # a kernel binds each variable once

    @contextmanager
    def scope(self):
        """Code that the code after it does not see (a loop's body, a branch): integer values
        computed inside are forgotten at its end."""
        self.known.append({})
        try:
            yield
        finally:
            self.known.pop()

    def load(self, buf: str, index) -> ir.Value:
        raise NotImplementedError("memory reads are emitted by a subclass")

    # ---- vector helpers
    @property
    def width(self) -> int:
        return self.vec[1] if self.vec else 1

    def splat(self, v: ir.Value) -> ir.Value:
        """v in every lane (in vector code; a vector or scalar code's value as it is)."""
        if not self.vec or is_vec(v):
            return v
        W = self.width
        vt = ir.VectorType(v.type, W)
        undef = ir.Constant(vt, ir.Undefined)
        one = self.b.insert_element(undef, v, ir.Constant(I32, 0))
        return self.b.shuffle_vector(one, undef, vconst(ir.VectorType(I32, W), (0,) * W))

    def both(self, x: ir.Value, y: ir.Value):
        """x and y as operands of one instruction: both vectors if either is."""
        if is_vec(x) or is_vec(y):
            return self.splat(x), self.splat(y)
        return x, y

    def intrinsic(self, name: str, ret, args) -> ir.Function:
        return intrinsic(self.m, name, ret, args)

    # ---- integers and conditions
    def int(self, e: Expr) -> ir.Value:
        if not self.reuse_ints or isinstance(e, (Const, Var)):
            return self._int(e)
        for known in reversed(self.known):
            if e in known:
                return known[e]
        v = self._int(e)
        if not any(isinstance(x, Load) for x in e.walk()):  # a position read from memory may change
            self.known[-1][e] = v
        return v

    def _int(self, e: Expr) -> ir.Value:
        b = self.b
        if isinstance(e, Const):
            return ir.Constant(self.ix, int(e.value))
        if isinstance(e, Var):
            return self.vars[e.name]
        if isinstance(e, Unary) and e.op == "neg":
            x = self.int(e.a)
            return b.sub(self.splat(ir.Constant(self.ix, 0)) if is_vec(x) else ir.Constant(self.ix, 0), x)
        if isinstance(e, Unary) and e.op == "index":  # a position stored as a float
            x = self.float(e.a)
            return b.fptosi(x, ir.VectorType(self.ix, x.type.count) if is_vec(x) else self.ix)
        if isinstance(e, Unary) and e.op == "abs":
            x = self.int(e.a)
            zero = self.splat(ir.Constant(self.ix, 0)) if is_vec(x) else ir.Constant(self.ix, 0)
            return b.select(b.icmp_signed("<", x, zero), b.sub(zero, x), x)
        if isinstance(e, Select):
            return self.select(e, self.int)
        if isinstance(e, Binary):
            x, y = self.both(self.int(e.a), self.int(e.b))
            if e.op in ("/", "%") and self.unsigned_division and self._natural(e):
                return b.udiv(x, y) if e.op == "/" else b.urem(x, y)
            return self._int_binary(e.op, x, y)
        raise TypeError(f"not an integer expression: {e!r}")

    def _natural(self, e: Binary) -> bool:
        """Both operands of division e are at least 0 (and the divisor more) in every iteration."""
        a, d = self.span(e.a), self.span(e.b)
        return a is not None and d is not None and a[0] >= 0 and d[0] > 0

    def span(self, e: Expr):
        if e not in self.spans:
            self.spans[e] = widths.span(e, self.ranges, self.span)
        return self.spans[e]

    def _int_binary(self, op: str, x: ir.Value, y: ir.Value) -> ir.Value:
        b = self.b
        folded = _fold(op, x, y, self.ix)
        if folded is not None:
            return folded
        if op == "+":
            return b.add(x, y, flags=("nsw",))
        if op == "-":
            return b.sub(x, y, flags=("nsw",))
        if op == "*":
            return b.mul(x, y, flags=("nsw",))
        if op == "max":
            return b.select(b.icmp_signed(">", y, x), y, x)
        if op == "min":
            return b.select(b.icmp_signed("<", y, x), y, x)
        zero = vconst(x.type, (0,) * x.type.count) if is_vec(x) else ir.Constant(self.ix, 0)
        one = vconst(x.type, (1,) * x.type.count) if is_vec(x) else ir.Constant(self.ix, 1)
        q, r = b.sdiv(x, y), b.srem(x, y)
        # floor semantics: adjust when the remainder is nonzero and the signs differ
        adjust = b.and_(b.icmp_signed("!=", r, zero),
                        b.icmp_signed("!=", b.icmp_signed("<", r, zero), b.icmp_signed("<", y, zero)))
        if op == "/":
            return b.select(adjust, b.sub(q, one), q)
        if op == "%":
            return b.select(adjust, b.add(r, y), r)
        raise TypeError(f"not an integer operator: {op!r}")

    def cond(self, e: Expr) -> ir.Value:
        b = self.b
        if isinstance(e, Binary) and e.op in ("and", "or"):
            x, y = self.both(self.cond(e.a), self.cond(e.b))
            return b.and_(x, y) if e.op == "and" else b.or_(x, y)
        if isinstance(e, Unary) and e.op == "not":
            return b.not_(self.cond(e.a))
        if isinstance(e, Binary):
            if is_int(e.a) and is_int(e.b):
                x, y = self.both(self.int(e.a), self.int(e.b))
                return b.icmp_signed(e.op, x, y)
            x, y = self.both(self.float(e.a), self.float(e.b))
            return b.fcmp_ordered(e.op, x, y)
        raise TypeError(f"not a condition: {e!r}")

    def select(self, e: Select, kind):
        """cond ? a : b, with kind (self.int or self.float) emitting the arms."""
        b = self.b
        c = self.cond(e.cond)
        has_load = any(isinstance(x, Load) for x in e.a.walk()) or any(isinstance(x, Load) for x in e.b.walk())
        if is_vec(c):  # each arm's reads only on its own lanes
            outer = self.mask
            self.mask = c if outer is None else b.and_(outer, c)
            va = kind(e.a)
            nc = b.not_(c)
            self.mask = nc if outer is None else b.and_(outer, nc)
            vb = kind(e.b)
            self.mask = outer
            va, vb = self.splat(va), self.splat(vb)
            return b.select(c, va, vb)
        if not has_load:
            va, vb = self.both(kind(e.a), kind(e.b))
            return b.select(c, va, vb)
        with b.if_else(c) as (then, other):
            with then, self.scope():  # in vector code both arms become vectors, each in its own block
                va = self.splat(kind(e.a))
                ba = b.block
            with other, self.scope():
                vb = self.splat(kind(e.b))
                bb = b.block
        phi = b.phi(va.type)
        phi.add_incoming(va, ba)
        phi.add_incoming(vb, bb)
        return phi

    # ---- floats
    def float(self, e: Expr) -> ir.Value:
        b, ft = self.b, self.ft
        if is_bool(e):
            c = self.cond(e)
            return b.uitofp(c, ir.VectorType(ft, self.width) if is_vec(c) else ft)
        if is_int(e):
            x = self.int(e)
            return b.sitofp(x, ir.VectorType(ft, self.width) if is_vec(x) else ft)
        if isinstance(e, Const):
            return ir.Constant(ft, float(e.value))
        if isinstance(e, Scalar):
            return b.load(self.regs[e.name])
        if isinstance(e, Load):
            return self.load(e.tensor, e.index)
        if isinstance(e, Select):
            return self.select(e, self.float)
        if isinstance(e, Unary):
            return self._float_unary(e.op, self.float(e.a))
        if isinstance(e, Binary) and e.op == "uniform":
            seed = b.fptosi(self.float(e.a), I64)
            idx = self.int(e.b)
            if self.ix != I64:  # the hash is of 64-bit integers, as on every target
                idx = b.sext(idx, ir.VectorType(I64, idx.type.count) if is_vec(idx) else I64)
            seed, idx = self.both(seed, idx)
            return self.uniform(seed, idx)
        if isinstance(e, Binary):
            x, y = self.both(self.float(e.a), self.float(e.b))
            op = e.op
            if op == "+":
                return b.fadd(x, y, flags=FAST)
            if op == "-":
                return b.fsub(x, y, flags=FAST)
            if op == "*":
                return b.fmul(x, y, flags=FAST)
            if op == "/":
                return b.fdiv(x, y)
            if op == "max":
                return b.select(b.fcmp_ordered(">", y, x), y, x)
            if op == "min":
                return b.select(b.fcmp_ordered("<", y, x), y, x)
        raise TypeError(f"cannot emit {e!r}")

    def _float_unary(self, op: str, x: ir.Value) -> ir.Value:
        b, ft = self.b, self.ft
        ty = x.type
        if op == "neg":
            return b.fneg(x)
        if op in ("exp", "log", "sqrt"):
            return b.call(self._math(op, ty), [x])
        if op == "abs":
            return b.call(self._math("fabs", ty), [x])
        if op == "tanh":
            return self._lanewise(x, self._libm("tanhf" if ft == FLOAT["f32"] else "tanh"))
        if op == "sigmoid":
            one = self.splat(ir.Constant(ft, 1.0)) if is_vec(x) else ir.Constant(ft, 1.0)
            ex = b.call(self._math("exp", ty), [b.fneg(x)])
            return b.fdiv(one, b.fadd(one, ex))
        if op in ("tf32", "bf16"):
            return self._rounded(op, x)
        raise TypeError(f"cannot emit the float operator {op!r}")

    def _rounded(self, op: str, x: ir.Value) -> ir.Value:
        """x as float32, its bits rounded to tf32 (nearest, ties away) or bf16 (nearest, ties to
        even): the interpreter's definition, bit for bit."""
        b, f32 = self.b, FLOAT["f32"]
        lanes = x.type.count if is_vec(x) else None
        wide = lambda t: ir.VectorType(t, lanes) if lanes else t
        c = lambda v: vconst(wide(I32), (v,) * lanes) if lanes else ir.Constant(I32, v)
        narrow = x if self.ft == f32 else b.fptrunc(x, wide(f32))
        i = b.bitcast(narrow, wide(I32))
        if op == "tf32":
            i = b.and_(b.add(i, c(0x1000)), c(-0x2000))  # 0xFFFFE000
        else:
            odd = b.and_(b.lshr(i, c(16)), c(1))
            i = b.and_(b.add(b.add(i, c(0x7FFF)), odd), c(-0x10000))  # 0xFFFF0000
        y = b.bitcast(i, wide(f32))
        return y if self.ft == f32 else b.fpext(y, x.type)

    def uniform(self, seed: ir.Value, index: ir.Value) -> ir.Value:
        """splitmix64(seed * golden + index) -> its top 24 bits / 2**24, in [0, 1)."""
        b = self.b
        vec = is_vec(index)

        def k(v):
            c = ir.Constant(I64, v - (1 << 64) if v >= 1 << 63 else v)
            return self.splat(c) if vec else c

        z = b.add(b.mul(seed, k(0x9E3779B97F4A7C15)), index)
        z = b.add(z, k(0x9E3779B97F4A7C15))
        z = b.mul(b.xor(z, b.lshr(z, k(30))), k(0xBF58476D1CE4E5B9))
        z = b.mul(b.xor(z, b.lshr(z, k(27))), k(0x94D049BB133111EB))
        z = b.xor(z, b.lshr(z, k(31)))
        ty = ir.VectorType(self.ft, self.width) if vec else self.ft
        top = b.uitofp(b.lshr(z, k(40)), ty)
        scale = ir.Constant(self.ft, 1.0 / (1 << 24))
        return b.fmul(top, self.splat(scale) if vec else scale)

    # ---- math functions
    def _math(self, op: str, ty) -> ir.Function:
        """llvm.exp.f32, llvm.sqrt.v16f32, ...: one-argument math on scalars or vectors."""
        suffix = vname(ty) if isinstance(ty, ir.VectorType) else ("f32" if ty == FLOAT["f32"] else "f64")
        return self.intrinsic(f"llvm.{op}.{suffix}", ty, [ty])

    def _libm(self, name: str):
        """A C math function, for what LLVM has no intrinsic of (called once per lane)."""
        if name in self.m.globals:
            return self.m.globals[name]
        fn = ir.Function(self.m, ir.FunctionType(self.ft, [self.ft]), name)
        fn.attributes.add("nounwind")
        return fn

    def _lanewise(self, x: ir.Value, fn) -> ir.Value:
        if not is_vec(x):
            return self.b.call(fn, [x])
        out = x
        for k in range(x.type.count):
            lane = self.b.call(fn, [self.b.extract_element(x, ir.Constant(I32, k))])
            out = self.b.insert_element(out, lane, ir.Constant(I32, k))
        return out


def _fold(op: str, x: ir.Value, y: ir.Value, ix) -> ir.Value | None:
    """x op y for scalar integers when constants decide it (less IR for LLVM to clean up)."""
    cx = x.constant if isinstance(x, ir.Constant) and isinstance(x.constant, int) else None
    cy = y.constant if isinstance(y, ir.Constant) and isinstance(y.constant, int) else None
    if cx is not None and cy is not None and op in ("+", "-", "*"):
        return ir.Constant(ix, cx + cy if op == "+" else cx - cy if op == "-" else cx * cy)
    if op == "+" and cx == 0 or op == "*" and cx == 1:
        return y
    if op in ("+", "-") and cy == 0 or op in ("*", "/") and cy == 1:
        return x
    if op == "*" and (cx == 0 or cy == 0):
        return ir.Constant(ix, 0)
    return None
