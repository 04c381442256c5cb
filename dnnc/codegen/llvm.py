"""Code generation: loop-nest IR -> LLVM IR text (llvmlite.ir).

One function per kernel (taking the buffers it touches) and one entry function
`NAME_forward(args..., workspace)` that calls them in order. Buffers are noalias pointers;
temporaries are slices of the workspace at offsets chosen by the caller's memory plan.
Indices are i64; floor division and modulo follow the IR's (Python's) rounding. Selects
whose arms read memory are branches, so a guarded read is never performed.
"""
from __future__ import annotations

import re

from llvmlite import ir

from ..expr import Binary, Const, Expr, Load, Scalar, Select, Unary, Var, is_bool, is_int
from ..ir import If, Kernel, Let, Loop, Program, Set, Stmt, Store

I64 = ir.IntType(64)
I1 = ir.IntType(1)
FLOAT = {"f32": ir.FloatType(), "f64": ir.DoubleType()}
FAST = ("reassoc", "contract")


def symbol(name: str) -> str:
    """A C identifier for a dnnc name (c1.weight -> c1_weight)."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out if not out[:1].isdigit() else "_" + out


def emit(p: Program, offsets: dict[str, int], dtype: str = "f32", triple: str = "",
         data_layout: str = "") -> str:
    """LLVM IR text for program p. offsets: element offset of each temp in the workspace."""
    m = ir.Module(name=p.name)
    m.triple = triple
    m.data_layout = data_layout
    ft = FLOAT[dtype]
    ptr = ft.as_pointer()
    shapes = {b.name: b.shape for b in p.buffers}
    kernel_fns = []
    for k in p.kernels:
        used = _buffers_used(k)
        fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ptr] * len(used)), symbol("k_" + k.name))
        fn.linkage = "internal"
        _attrs(fn)
        fn.attributes.add("noinline")
        for a, name in zip(fn.args, used):
            a.name = symbol(name)
        _KernelEmitter(m, fn, dict(zip(used, fn.args)), shapes, ft).run(k.body)
        kernel_fns.append((fn, used))
    args = p.args
    entry = ir.Function(m, ir.FunctionType(ir.VoidType(), [ptr] * (len(args) + 1)), symbol(p.name) + "_forward")
    _attrs(entry)
    ptrs = {}
    for a, b in zip(entry.args, args):
        a.name = symbol(b.name)
        ptrs[b.name] = a
    ws = entry.args[-1]
    ws.name = "workspace"
    bld = ir.IRBuilder(entry.append_basic_block("entry"))
    for b in p.buffers:
        if b.kind == "temp":
            ptrs[b.name] = bld.gep(ws, [ir.Constant(I64, offsets[b.name])], name=symbol(b.name))
    for fn, used in kernel_fns:
        bld.call(fn, [ptrs[u] for u in used])
    bld.ret_void()
    # llvmlite's builder knows no string attributes: without this LLVM uses 256-bit vectors
    return re.sub(r"^(define .*)$", r'\1 "prefer-vector-width"="512"', str(m), flags=re.M)


def _attrs(fn: ir.Function) -> None:
    fn.attributes.add("nounwind")
    for a in fn.args:
        a.add_attribute("noalias")


def _buffers_used(k: Kernel) -> list[str]:
    seen: dict[str, None] = {}

    def expr(e: Expr):
        for x in e.walk():
            if isinstance(x, Load):
                seen.setdefault(x.tensor)

    def block(stmts):
        for s in stmts:
            if isinstance(s, Loop):
                block(s.body)
            elif isinstance(s, If):
                expr(s.cond)
                block(s.then)
                block(s.orelse)
            elif isinstance(s, Store):
                for i in s.index:
                    expr(i)
                expr(s.value)
                seen.setdefault(s.buffer)
            else:
                expr(s.value)

    block(k.body)
    return list(seen)


class _KernelEmitter:
    def __init__(self, m, fn, bufs, shapes, ft):
        self.m, self.fn, self.bufs, self.shapes, self.ft = m, fn, bufs, shapes, ft
        self.entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(fn.append_basic_block("body"))
        self.regs: dict[str, ir.AllocaInstr] = {}
        self.vars: dict[str, ir.Value] = {}

    def run(self, body):
        self.block(body)
        self.b.ret_void()
        ir.IRBuilder(self.entry).branch(self.fn.blocks[1])

    def alloca(self, ty, name):
        eb = ir.IRBuilder(self.entry)
        return eb.alloca(ty, name=name)

    def block(self, stmts):
        for s in stmts:
            self.stmt(s)

    def stmt(self, s: Stmt):
        b = self.b
        if isinstance(s, Loop):
            if s.kind == "unroll":
                for v in range(s.extent):
                    self.vars[s.var] = ir.Constant(I64, v)
                    self.block(s.body)
                del self.vars[s.var]
                return
            head = self.fn.append_basic_block(f"{s.var}.head")
            body = self.fn.append_basic_block(f"{s.var}.body")
            done = self.fn.append_basic_block(f"{s.var}.done")
            pre = b.block
            b.branch(head)
            b.position_at_end(head)
            iv = b.phi(I64, name=s.var)
            iv.add_incoming(ir.Constant(I64, 0), pre)
            self.vars[s.var] = iv
            b.position_at_end(body)
            self.block(s.body)
            nxt = b.add(iv, ir.Constant(I64, 1), name=f"{s.var}.next", flags=("nuw", "nsw"))
            latch = b.block
            b.branch(head)
            iv.add_incoming(nxt, latch)
            b.position_at_end(head)
            b.cbranch(b.icmp_signed("<", iv, ir.Constant(I64, s.extent)), body, done)
            b.position_at_end(done)
            del self.vars[s.var]
        elif isinstance(s, If):
            c = self.cond(s.cond)
            if s.orelse:
                with b.if_else(c) as (then, other):
                    with then:
                        self.block(s.then)
                    with other:
                        self.block(s.orelse)
            else:
                with b.if_then(c):
                    self.block(s.then)
        elif isinstance(s, Store):
            b.store(self.float(s.value), self.addr(s.buffer, s.index))
        elif isinstance(s, Let):
            if s.name not in self.regs:
                self.regs[s.name] = self.alloca(self.ft, s.name)
            b.store(self.float(s.value), self.regs[s.name])
        elif isinstance(s, Set):
            b.store(self.float(s.value), self.regs[s.name])
        else:
            raise TypeError(s)

    def addr(self, buf: str, index) -> ir.Value:
        shape = self.shapes[buf]
        lin = None
        for k, ix in enumerate(index):
            v = self.int(ix)
            lin = v if lin is None else self.b.add(self.b.mul(lin, ir.Constant(I64, shape[k]), flags=("nsw",)), v,
                                                  flags=("nsw",))
        if lin is None:
            lin = ir.Constant(I64, 0)
        return self.b.gep(self.bufs[buf], [lin], inbounds=True)

    # ---- expressions
    def int(self, e: Expr) -> ir.Value:
        b = self.b
        if isinstance(e, Const):
            return ir.Constant(I64, int(e.value))
        if isinstance(e, Var):
            return self.vars[e.name]
        if isinstance(e, Unary) and e.op == "neg":
            return b.sub(ir.Constant(I64, 0), self.int(e.a))
        if isinstance(e, Unary) and e.op == "abs":
            x = self.int(e.a)
            return b.select(b.icmp_signed("<", x, ir.Constant(I64, 0)), b.sub(ir.Constant(I64, 0), x), x)
        if isinstance(e, Select):
            return self._select(e, self.int)
        if isinstance(e, Binary):
            x, y = self.int(e.a), self.int(e.b)
            op = e.op
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
            zero = ir.Constant(I64, 0)
            q, r = b.sdiv(x, y), b.srem(x, y)
            # floor semantics: adjust when the remainder is nonzero and the signs differ
            adjust = b.and_(b.icmp_signed("!=", r, zero),
                            b.icmp_signed("!=", b.icmp_signed("<", r, zero), b.icmp_signed("<", y, zero)))
            if op == "/":
                return b.select(adjust, b.sub(q, ir.Constant(I64, 1)), q)
            if op == "%":
                return b.select(adjust, b.add(r, y), r)
        raise TypeError(f"not an integer expression: {e!r}")

    def cond(self, e: Expr) -> ir.Value:
        b = self.b
        if isinstance(e, Binary) and e.op in ("and", "or"):
            x, y = self.cond(e.a), self.cond(e.b)
            return b.and_(x, y) if e.op == "and" else b.or_(x, y)
        if isinstance(e, Unary) and e.op == "not":
            return b.not_(self.cond(e.a))
        if isinstance(e, Binary):
            if is_int(e.a) and is_int(e.b):
                return b.icmp_signed(e.op, self.int(e.a), self.int(e.b))
            return b.fcmp_ordered(e.op, self.float(e.a), self.float(e.b))
        raise TypeError(f"not a condition: {e!r}")

    def _select(self, e: Select, kind):
        b = self.b
        c = self.cond(e.cond)
        if not any(isinstance(x, Load) for x in e.a.walk()) and not any(isinstance(x, Load) for x in e.b.walk()):
            return b.select(c, kind(e.a), kind(e.b))
        with b.if_else(c) as (then, other):
            with then:
                va = kind(e.a)
                ba = b.block
            with other:
                vb = kind(e.b)
                bb = b.block
        phi = b.phi(va.type)
        phi.add_incoming(va, ba)
        phi.add_incoming(vb, bb)
        return phi

    def float(self, e: Expr) -> ir.Value:
        b, ft = self.b, self.ft
        if is_bool(e):
            return b.uitofp(self.cond(e), ft)
        if is_int(e):
            return b.sitofp(self.int(e), ft)
        if isinstance(e, Const):
            return ir.Constant(ft, float(e.value))
        if isinstance(e, Scalar):
            return b.load(self.regs[e.name])
        if isinstance(e, Load):
            return b.load(self.addr(e.tensor, e.index))
        if isinstance(e, Select):
            return self._select(e, self.float)
        if isinstance(e, Unary):
            x = self.float(e.a)
            if e.op == "neg":
                return b.fneg(x)
            if e.op in ("exp", "log", "sqrt"):
                return b.call(self.m.declare_intrinsic(f"llvm.{e.op}", [ft]), [x])
            if e.op == "abs":
                return b.call(self.m.declare_intrinsic("llvm.fabs", [ft]), [x])
            if e.op == "tanh":
                return b.call(self._libm("tanhf" if ft == FLOAT["f32"] else "tanh"), [x])
            if e.op == "sigmoid":
                ex = b.call(self.m.declare_intrinsic("llvm.exp", [ft]), [b.fneg(x)])
                return b.fdiv(ir.Constant(ft, 1.0), b.fadd(ir.Constant(ft, 1.0), ex))
        if isinstance(e, Binary) and e.op == "uniform":
            return self.uniform(b.fptosi(self.float(e.a), I64), self.int(e.b))
        if isinstance(e, Binary):
            x, y = self.float(e.a), self.float(e.b)
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

    def uniform(self, seed: ir.Value, index: ir.Value) -> ir.Value:
        """splitmix64(seed * golden + index) -> its top 24 bits / 2**24, in [0, 1)."""
        b = self.b

        def k(v):
            return ir.Constant(I64, v - (1 << 64) if v >= 1 << 63 else v)

        z = b.add(b.mul(seed, k(0x9E3779B97F4A7C15)), index)
        z = b.add(z, k(0x9E3779B97F4A7C15))
        z = b.mul(b.xor(z, b.lshr(z, k(30))), k(0xBF58476D1CE4E5B9))
        z = b.mul(b.xor(z, b.lshr(z, k(27))), k(0x94D049BB133111EB))
        z = b.xor(z, b.lshr(z, k(31)))
        top = b.uitofp(b.lshr(z, k(40)), self.ft)
        return b.fmul(top, ir.Constant(self.ft, 1.0 / (1 << 24)))

    def _libm(self, name: str):
        if name in self.m.globals:
            return self.m.globals[name]
        fn = ir.Function(self.m, ir.FunctionType(self.ft, [self.ft]), name)
        fn.attributes.add("nounwind")
        return fn
