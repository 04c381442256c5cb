"""Code generation: loop-nest IR -> LLVM IR text (llvmlite.ir).

One function per kernel (taking the buffers it touches) and one entry function
`NAME_forward(args..., workspace)` that calls them in order. Buffers are noalias pointers;
temporaries are slices of the workspace at offsets chosen by the caller's memory plan;
`local` buffers (register tiles) are stack arrays of the kernel, which LLVM keeps in registers.
Indices are i64; floor division and modulo follow the IR's (Python's) rounding. Selects
whose arms read memory are branches, so a guarded read is never performed.

A `vector for v in 0..W` loop is emitted once, as SIMD code over W lanes: every value that
depends on v is a <W x T> vector. A read or write whose address moves by one element per
lane is one vector load or store; one that does not depend on v is a scalar, broadcast; any
other is a gather or scatter. A guard that depends on v becomes a lane mask: masked-off lanes
neither load nor store, which is how padding and ragged edges stay in bounds.

With checks=True (the debug build) every load and store first tests each index against its
dimension, in the lanes that really access memory, and on failure prints the kernel, the
buffer and the index to stderr and aborts. The verifier proves the same statically; the
checks are the net under it.
"""
from __future__ import annotations

import re

from llvmlite import ir

from ..te import affine
from ..te.expr import Binary, Const, Expr, Load, Scalar, Select, Unary, Var, is_bool, is_int
from ..ir import If, Kernel, Let, Loop, Program, Set, Stmt, Store
from .threads import parallel_for, set_threads_function, stop_threads_function

I64 = ir.IntType(64)
I32 = ir.IntType(32)
I1 = ir.IntType(1)
FLOAT = {"f32": ir.FloatType(), "f64": ir.DoubleType()}
FAST = ("reassoc", "contract")


def symbol(name: str) -> str:
    """A C identifier for a dnnc name (c1.weight -> c1_weight)."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out if not out[:1].isdigit() else "_" + out


def kernel_symbol(program: str, kernel: str) -> str:
    return symbol(f"{program}__k_{kernel}")


def kernel_args(p: Program, k: Kernel) -> list[str]:
    """The buffers a kernel's function takes, in order (register tiles are its own)."""
    local = {b.name for b in p.buffers if b.kind == "local"}
    return [u for u in _buffers_used(k) if u not in local]


def emit(p: Program, offsets: dict[str, int], dtype: str = "f32", triple: str = "",
         data_layout: str = "", checks: bool = False) -> str:
    """LLVM IR text for program p. offsets: element offset of each temp in the workspace;
    checks: test every index at run time (the debug build)."""
    m = ir.Module(name=p.name)
    m.triple = triple
    m.data_layout = data_layout
    ft = FLOAT[dtype]
    ptr = ft.as_pointer()
    shapes = {b.name: b.shape for b in p.buffers}
    locals_ = {b.name for b in p.buffers if b.kind == "local"}
    kernel_fns = []
    for k in p.kernels:
        used = kernel_args(p, k)
        # external, so `dnnc bench` can time each kernel on its own
        fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ptr] * len(used)), kernel_symbol(p.name, k.name))
        _attrs(fn)
        fn.attributes.add("noinline")
        for a, name in zip(fn.args, used):
            a.name = symbol(name)
        em = _KernelEmitter(m, fn, dict(zip(used, fn.args)), shapes, ft)
        em.checks = (k.name,) if checks else None
        em.locals_ = [name for name in _buffers_used(k) if name in locals_]
        em.buffer_names = used
        for name in em.locals_:
            em.local(name)
        em.run(k.body)
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
    set_threads_function(m, symbol(p.name))
    stop_threads_function(m, symbol(p.name))
    # llvmlite's builder knows no string attributes: without this LLVM uses 256-bit vectors
    return re.sub(r"^(define .*)$", r'\1 "prefer-vector-width"="512"', str(m), flags=re.M)


def _fold(op: str, x: ir.Value, y: ir.Value) -> ir.Value | None:
    """x op y for scalar integers when constants decide it (less IR for LLVM to clean up)."""
    cx = x.constant if isinstance(x, ir.Constant) and isinstance(x.constant, int) else None
    cy = y.constant if isinstance(y, ir.Constant) and isinstance(y.constant, int) else None
    if cx is not None and cy is not None and op in ("+", "-", "*"):
        return ir.Constant(I64, cx + cy if op == "+" else cx - cy if op == "-" else cx * cy)
    if op == "+" and cx == 0 or op == "*" and cx == 1:
        return y
    if op in ("+", "-") and cy == 0 or op in ("*", "/") and cy == 1:
        return x
    if op == "*" and (cx == 0 or cy == 0):
        return ir.Constant(I64, 0)
    return None


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


def _is_vec(v: ir.Value) -> bool:
    return isinstance(v.type, ir.VectorType)


class _KernelEmitter:
    def __init__(self, m, fn, bufs, shapes, ft):
        self.m, self.fn, self.bufs, self.shapes, self.ft = m, fn, bufs, shapes, ft
        self.entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(fn.append_basic_block("body"))
        self.regs: dict[str, ir.AllocaInstr] = {}
        self.vars: dict[str, ir.Value] = {}
        self.vec: tuple[str, int] | None = None  # the vector loop's variable and width
        self.locals_: list[str] = []  # register tiles (stack arrays) of this function
        self.mask: ir.Value | None = None  # lanes enabled by the guards around (vector code)
        self.checks: tuple[str] | None = None  # (kernel name,) in the debug build

    def run(self, body):
        self.block(body)
        self.b.ret_void()
        ir.IRBuilder(self.entry).branch(self.fn.blocks[1])

    def alloca(self, ty, name):
        eb = ir.IRBuilder(self.entry)
        return eb.alloca(ty, name=name)

    def local(self, name: str) -> None:
        """A register tile: a small array on the stack, promoted to registers by LLVM."""
        n = 1
        for d in self.shapes[name]:
            n *= d
        eb = ir.IRBuilder(self.entry)
        arr = eb.alloca(ir.ArrayType(self.ft, n), name=symbol(name))
        arr.align = 64
        self.bufs[name] = eb.bitcast(arr, self.ft.as_pointer())

    # ---- vector helpers
    @property
    def width(self) -> int:
        return self.vec[1] if self.vec else 1

    def _zero_when_masked(self, e) -> bool:
        """e is 0 in the masked-off lanes: a product with a factor read per lane (masked reads
        fill those lanes with zeros)."""
        if isinstance(e, Binary) and e.op == "*":
            return self._zero_when_masked(e.a) or self._zero_when_masked(e.b)
        return isinstance(e, Load) and e.tensor not in self.locals_ and self._access(e.tensor, e.index)[0] != "scalar"

    def splat(self, v: ir.Value) -> ir.Value:
        if not self.vec or _is_vec(v):
            return v
        W = self.width
        vt = ir.VectorType(v.type, W)
        undef = ir.Constant(vt, ir.Undefined)
        one = self.b.insert_element(undef, v, ir.Constant(I32, 0))
        return self.b.shuffle_vector(one, undef, ir.Constant(ir.VectorType(I32, W), [0] * W))

    def both(self, x: ir.Value, y: ir.Value):
        if _is_vec(x) or _is_vec(y):
            return self.splat(x), self.splat(y)
        return x, y

    def block(self, stmts):
        for s in stmts:
            self.stmt(s)

    def stmt(self, s: Stmt):
        b = self.b
        if isinstance(s, Loop):
            if s.kind == "parallel" and self.vec is None:
                self.parallel(s)
                return
            if s.kind == "unroll":
                for v in range(s.extent):
                    self.vars[s.var] = ir.Constant(I64, v)
                    self.block(s.body)
                del self.vars[s.var]
                return
            if s.kind == "vector":
                if self.vec is not None:
                    raise NotImplementedError("nested vector loops")
                self.vec = (s.var, s.extent)
                self.vars[s.var] = ir.Constant(ir.VectorType(I64, s.extent), list(range(s.extent)))
                self.block(s.body)
                del self.vars[s.var]
                self.vec = None
                return
            self.counted_loop(s.var, ir.Constant(I64, 0), ir.Constant(I64, s.extent), s.body)
        elif isinstance(s, If):
            c = self.cond(s.cond)
            if _is_vec(c):  # a lane mask: both branches run, each on its lanes
                outer = self.mask
                self.mask = c if outer is None else b.and_(outer, c)
                self.block(s.then)
                if s.orelse:
                    nc = b.not_(c)
                    self.mask = nc if outer is None else b.and_(outer, nc)
                    self.block(s.orelse)
                self.mask = outer
                return
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
            v = s.value
            if (self.mask is not None and s.buffer in self.locals_ and isinstance(v, Binary) and v.op == "+"
                    and v.a == Load(s.buffer, s.index) and self._zero_when_masked(v.b)):
                # a masked accumulation whose term has a factor loaded as zero in the lanes masked
                # off: those lanes add 0 * (finite factors), so the register tile needs no blend and
                # the add fuses with the multiply
                self.store(s.buffer, s.index, self.float(v), masked=False)
            else:
                self.store(s.buffer, s.index, self.float(s.value))
        elif isinstance(s, Let):
            if s.name not in self.regs:
                ty = ir.VectorType(self.ft, self.width) if self.vec else self.ft
                self.regs[s.name] = self.alloca(ty, s.name)
            self.set_reg(s.name, self.float(s.value))
        elif isinstance(s, Set):
            self.set_reg(s.name, self.float(s.value))
        else:
            raise TypeError(s)

    def parallel(self, s: Loop) -> None:
        """Outline the loop's body as fn(start, end, buffers) and run it on the thread pool.

        Only buffers are shared; registers and register tiles are private to each thread.
        Every iteration does what it does serially, so results do not depend on the threads.
        """
        if self.vars:
            raise NotImplementedError("a parallel loop inside another loop")
        n = len(self.buffer_names)
        ptr = self.ft.as_pointer()
        ftype = ir.FunctionType(ir.VoidType(), [I64, I64, ptr.as_pointer()])
        self.outlined = getattr(self, "outlined", 0) + 1
        fn = ir.Function(self.m, ftype, f"{self.fn.name}.par{self.outlined}")
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        fn.attributes.add("noinline")
        sub = _KernelEmitter(self.m, fn, {}, self.shapes, self.ft)
        sub.checks = self.checks
        eb = ir.IRBuilder(sub.entry)
        for k, name in enumerate(self.buffer_names):
            sub.bufs[name] = eb.load(eb.gep(fn.args[2], [ir.Constant(I64, k)]), name=symbol(name))
        sub.locals_ = list(self.locals_)
        for name in self.locals_:
            sub.local(name)
        start, end = fn.args[0], fn.args[1]
        sub.counted_loop(s.var, start, end, s.body)
        sub.b.ret_void()
        ir.IRBuilder(sub.entry).branch(fn.blocks[1])
        # the caller: an array of the buffer pointers, then the pool
        table = self.alloca(ir.ArrayType(ptr, max(n, 1)), "buffers")
        base = self.b.bitcast(table, ptr.as_pointer())
        for k, name in enumerate(self.buffer_names):
            self.b.store(self.bufs[name], self.b.gep(base, [ir.Constant(I64, k)]))
        self.b.call(parallel_for(self.m, ftype), [fn, ir.Constant(I64, s.extent), base])

    def counted_loop(self, var: str, start: ir.Value, end: ir.Value, body) -> None:
        b = self.b
        head = self.fn.append_basic_block(f"{var}.head")
        loop = self.fn.append_basic_block(f"{var}.body")
        done = self.fn.append_basic_block(f"{var}.done")
        pre = b.block
        b.branch(head)
        b.position_at_end(head)
        iv = b.phi(I64, name=var)
        iv.add_incoming(start, pre)
        self.vars[var] = iv
        b.position_at_end(loop)
        self.block(body)
        nxt = b.add(iv, ir.Constant(I64, 1), flags=("nuw", "nsw"))
        iv.add_incoming(nxt, b.block)
        b.branch(head)
        b.position_at_end(head)
        b.cbranch(b.icmp_signed("<", iv, end), loop, done)
        b.position_at_end(done)
        del self.vars[var]

    def set_reg(self, name: str, v: ir.Value) -> None:
        slot = self.regs[name]
        if isinstance(slot.type.pointee, ir.VectorType):
            v = self.splat(v)
            if self.mask is not None:
                v = self.b.select(self.mask, v, self.b.load(slot))
        self.b.store(v, slot)

    # ---- memory
    def _linear(self, buf: str, index) -> Expr:
        """The element offset of buf[index] as one integer expression."""
        shape = self.shapes[buf]
        lin: Expr = Const(0)
        for k, ix in enumerate(index):
            lin = Binary("+", Binary("*", lin, Const(shape[k])), ix)
        return affine.simplify(lin, split=True)

    def _access(self, buf: str, index):
        """('scalar', ptr), ('contiguous', ptr to lane 0) or ('gather', vector of ptrs)."""
        lin = self._linear(buf, index)
        base = self.bufs[buf]
        if not self.vec:
            return "scalar", self.b.gep(base, [self.int(lin)], inbounds=True)
        v = self.vec[0]
        form = affine.affine(lin, split=True)
        atoms_use_v = form is None or any(
            not isinstance(k, str) and k != 1 and v in _vars(k) for k in form)
        coef = 0 if form is None else form.get(v, 0)
        if not atoms_use_v and coef == 0:
            return "scalar", self.b.gep(base, [self.int(lin)], inbounds=True)
        if not atoms_use_v and coef in (1, 2, 3, 4):
            lane0 = affine.simplify(affine.from_affine({k: c for k, c in form.items() if k != v}))
            p = self.b.gep(base, [self.int(lane0)], inbounds=True)
            if coef == 1:
                return "contiguous", self.b.bitcast(p, ir.VectorType(self.ft, self.width).as_pointer())
            self.stride = coef  # a small stride: one wide load, then every coef-th element
            return "strided", self.b.bitcast(p, ir.VectorType(self.ft, self.width * coef).as_pointer())
        rep = _repeat(form, v) if form is not None and coef == 0 else None
        if rep is not None:  # lanes that repeat: (v + k) / s, as in a pooling gradient's t / 2
            atom, s, k = rep
            lane0 = affine.simplify(affine.from_affine({t: x for t, x in form.items() if t != atom}))
            self.repeat = (s, k)
            p = self.b.gep(base, [self.int(lane0)], inbounds=True)
            return "repeat", self.b.bitcast(p, ir.VectorType(self.ft, self.width).as_pointer())
        return "lanes", self.splat(self.int(lin))

    def load(self, buf: str, index) -> ir.Value:
        kind, p = self._access(buf, index)
        b, W = self.b, self.width
        if self.checks:  # the lanes read: all of a scalar or register-tile read, else the enabled ones
            whole = kind == "scalar" or (kind == "contiguous" and buf in self.locals_)
            self.check("load from", buf, index, None if whole else self.mask)
        if kind == "scalar":
            return b.load(p)
        if kind == "repeat":
            s, k = self.repeat
            n = (W - 1 + k) // s + 1  # elements read: lane i takes element (i + k) // s
            groups = [[i for i in range(W) if (i + k) // s == j] for j in range(W)]
            if self.mask is None:
                keep = ir.Constant(ir.VectorType(I1, W), [1 if j < n else 0 for j in range(W)])
            else:
                keep = ir.Constant(ir.VectorType(I1, W), [0] * W)
                for slot in range(s):  # element j is read if any lane of its group is enabled
                    pick = [g[slot] if slot < len(g) else W for g in groups]
                    lanes_ = b.shuffle_vector(self.mask, ir.Constant(self.mask.type, [0] * W),
                                              ir.Constant(ir.VectorType(I32, W), pick))
                    keep = b.or_(keep, lanes_)
            vt = ir.VectorType(self.ft, W)
            fn = self._intrinsic(f"llvm.masked.load.{_vname(vt)}.p0", vt, [p.type, I32, keep.type, vt])
            got = b.call(fn, [p, ir.Constant(I32, 4), keep, ir.Constant(vt, [0.0] * W)])
            return b.shuffle_vector(got, ir.Constant(vt, ir.Undefined),
                                    ir.Constant(ir.VectorType(I32, W), [(i + k) // s for i in range(W)]))
        if kind == "strided":
            s = self.stride
            wide = ir.VectorType(self.ft, W * s)
            lanes = ir.Constant(ir.VectorType(I32, W), [k * s for k in range(W)])
            # element k*s of the wide load is lane k; only those elements are read
            if self.mask is None:
                keep = ir.Constant(ir.VectorType(I1, W * s), [1 if e % s == 0 else 0 for e in range(W * s)])
            else:
                spread = ir.Constant(ir.VectorType(I32, W * s), [e // s for e in range(W * s)])
                every = b.shuffle_vector(self.mask, ir.Constant(self.mask.type, ir.Undefined), spread)
                keep = b.and_(every, ir.Constant(ir.VectorType(I1, W * s),
                                                 [1 if e % s == 0 else 0 for e in range(W * s)]))
            fn = self._intrinsic(f"llvm.masked.load.{_vname(wide)}.p0", wide, [p.type, I32, keep.type, wide])
            got = b.call(fn, [p, ir.Constant(I32, 4), keep, ir.Constant(wide, [0.0] * (W * s))])
            return b.shuffle_vector(got, ir.Constant(wide, ir.Undefined), lanes)
        vt = ir.VectorType(self.ft, W)
        zero = ir.Constant(vt, [0.0] * W)
        if kind == "contiguous":
            if self.mask is None or buf in self.locals_:  # a register tile: every lane exists
                ld = b.load(p)
                ld.align = 4
                return ld
            fn = self._intrinsic(f"llvm.masked.load.{_vname(vt)}.p0", vt, [p.type, I32, self.mask.type, vt])
            return b.call(fn, [p, ir.Constant(I32, 4), self.mask, zero])
        # a gather: one address per lane; masked-off lanes are not read
        fn = self._intrinsic(f"llvm.masked.gather.{_vname(vt)}.v{W}p0", vt,
                             [ir.VectorType(self.ft.as_pointer(), W), I32, ir.VectorType(I1, W), vt])
        return b.call(fn, [self._lane_ptrs(buf, p), ir.Constant(I32, 4), self._mask_or_all(), zero])

    def check(self, what: str, buf: str, index, lanes: ir.Value | None) -> None:
        """Abort, naming the kernel, buffer and index, if an index of buf is outside its
        dimension in any of `lanes` (None: every lane)."""
        b = self.b
        shape = self.shapes[buf]
        idx = [self.int(ix) for ix in index]
        bad = None
        for i, n in zip(idx, shape):
            lo = b.icmp_signed("<", i, self._like(i, 0))
            hi = b.icmp_signed(">=", i, self._like(i, n))
            out = b.or_(lo, hi)
            bad = out if bad is None else b.or_(*self.both(bad, out))
        if bad is None:
            return
        if _is_vec(bad) or lanes is not None:
            bad = self.splat(bad)
            if lanes is not None:
                bad = b.and_(bad, lanes)
            W = self.width
            fn = self._intrinsic(f"llvm.vector.reduce.or.v{W}i1", I1, [bad.type])
            anybad = b.call(fn, [bad])
        else:
            anybad = bad
        with b.if_then(anybad, likely=False):
            values = idx
            if _is_vec(bad):  # report the first lane that is out of range
                W = self.width
                iw = ir.IntType(W)
                cttz = self._intrinsic(f"llvm.cttz.i{W}", iw, [iw, I1])
                lane = b.call(cttz, [b.bitcast(bad, iw), ir.Constant(I1, 0)])
                values = [b.extract_element(i, lane) if _is_vec(i) else i for i in idx]
            text = (f"dnnc: error: out-of-bounds {what} {buf}[{', '.join(['%lld'] * len(idx))}] "
                    f"(shape {list(shape)}) in kernel {self.checks[0]}\n\0").encode()
            fmt = ir.GlobalVariable(self.m, ir.ArrayType(ir.IntType(8), len(text)),
                                    self.m.get_unique_name("bounds.msg"))
            fmt.initializer = ir.Constant(fmt.type.pointee, bytearray(text))
            fmt.global_constant = True
            fmt.linkage = "private"
            i8p = ir.IntType(8).as_pointer()
            dprintf = self.m.globals.get("dprintf") or ir.Function(
                self.m, ir.FunctionType(I32, [I32, i8p], var_arg=True), "dprintf")
            abort = self.m.globals.get("abort") or ir.Function(self.m, ir.FunctionType(ir.VoidType(), []), "abort")
            b.call(dprintf, [ir.Constant(I32, 2), b.bitcast(fmt, i8p), *values])
            b.call(abort, [])

    def _like(self, v: ir.Value, n: int) -> ir.Value:
        return ir.Constant(v.type, [n] * v.type.count) if _is_vec(v) else ir.Constant(I64, n)

    def _lane_ptrs(self, buf: str, idx: ir.Value) -> ir.Value:
        """<W x T*>: the address of element idx[lane] of buf, per lane."""
        b, W = self.b, self.width
        size = ir.Constant(I64, 4 if self.ft == FLOAT["f32"] else 8)
        base = self.splat(b.ptrtoint(self.bufs[buf], I64))
        addr = b.add(base, b.mul(idx, self.splat(size)))
        return b.inttoptr(addr, ir.VectorType(self.ft.as_pointer(), W))

    def _mask_or_all(self) -> ir.Value:
        W = self.width
        return self.mask if self.mask is not None else ir.Constant(ir.VectorType(I1, W), [1] * W)

    def store(self, buf: str, index, value: ir.Value, masked: bool = True) -> None:
        kind, p = self._access(buf, index)
        if kind in ("strided", "repeat"):  # a scatter
            kind, p = "lanes", self.splat(self.int(self._linear(buf, index)))
        b, W = self.b, self.width
        if self.checks:
            whole = kind == "scalar" or (kind == "contiguous" and (buf in self.locals_ or not masked))
            self.check("store to", buf, index, None if whole else self.mask)
        if kind == "scalar":
            if _is_vec(value):
                raise NotImplementedError(f"vector store to one element of {buf} (a reduction across lanes)")
            b.store(value, p)
            return
        value = self.splat(value)
        if kind == "contiguous":
            if self.mask is not None and buf in self.locals_ and masked:
                # a register tile: blend instead of a masked store, which would keep it in memory
                old = b.load(p)
                old.align = 4
                value = b.select(self.mask, value, old)
            if self.mask is None or buf in self.locals_ or not masked:
                st = b.store(value, p)
                st.align = 4
                return
            fn = self._intrinsic(f"llvm.masked.store.{_vname(value.type)}.p0", ir.VoidType(),
                                 [value.type, p.type, I32, self.mask.type])
            b.call(fn, [value, p, ir.Constant(I32, 4), self.mask])
            return
        # a scatter: lanes write in order, so where two lanes share an element the later wins
        fn = self._intrinsic(f"llvm.masked.scatter.{_vname(value.type)}.v{W}p0", ir.VoidType(),
                             [value.type, ir.VectorType(self.ft.as_pointer(), W), I32, ir.VectorType(I1, W)])
        b.call(fn, [value, self._lane_ptrs(buf, p), ir.Constant(I32, 4), self._mask_or_all()])

    # ---- expressions
    def int(self, e: Expr) -> ir.Value:
        b = self.b
        if isinstance(e, Const):
            return ir.Constant(I64, int(e.value))
        if isinstance(e, Var):
            return self.vars[e.name]
        if isinstance(e, Unary) and e.op == "neg":
            x = self.int(e.a)
            return b.sub(self.splat(ir.Constant(I64, 0)) if _is_vec(x) else ir.Constant(I64, 0), x)
        if isinstance(e, Unary) and e.op == "index":  # a position stored as a float
            x = self.float(e.a)
            return b.fptosi(x, ir.VectorType(I64, x.type.count) if _is_vec(x) else I64)
        if isinstance(e, Unary) and e.op == "abs":
            x = self.int(e.a)
            zero = self.splat(ir.Constant(I64, 0)) if _is_vec(x) else ir.Constant(I64, 0)
            return b.select(b.icmp_signed("<", x, zero), b.sub(zero, x), x)
        if isinstance(e, Select):
            return self._select(e, self.int)
        if isinstance(e, Binary):
            x, y = self.both(self.int(e.a), self.int(e.b))
            op = e.op
            folded = _fold(op, x, y)
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
            zero = ir.Constant(x.type, [0] * x.type.count) if _is_vec(x) else ir.Constant(I64, 0)
            one = ir.Constant(x.type, [1] * x.type.count) if _is_vec(x) else ir.Constant(I64, 1)
            q, r = b.sdiv(x, y), b.srem(x, y)
            # floor semantics: adjust when the remainder is nonzero and the signs differ
            adjust = b.and_(b.icmp_signed("!=", r, zero),
                            b.icmp_signed("!=", b.icmp_signed("<", r, zero), b.icmp_signed("<", y, zero)))
            if op == "/":
                return b.select(adjust, b.sub(q, one), q)
            if op == "%":
                return b.select(adjust, b.add(r, y), r)
        raise TypeError(f"not an integer expression: {e!r}")

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

    def _select(self, e: Select, kind):
        b = self.b
        c = self.cond(e.cond)
        has_load = any(isinstance(x, Load) for x in e.a.walk()) or any(isinstance(x, Load) for x in e.b.walk())
        if _is_vec(c):  # each arm's reads only on its own lanes
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
            with then:  # in vector code both arms become vectors, each in its own block
                va = self.splat(kind(e.a))
                ba = b.block
            with other:
                vb = self.splat(kind(e.b))
                bb = b.block
        phi = b.phi(va.type)
        phi.add_incoming(va, ba)
        phi.add_incoming(vb, bb)
        return phi

    def float(self, e: Expr) -> ir.Value:
        b, ft = self.b, self.ft
        if is_bool(e):
            c = self.cond(e)
            return b.uitofp(c, ir.VectorType(ft, self.width) if _is_vec(c) else ft)
        if is_int(e):
            x = self.int(e)
            return b.sitofp(x, ir.VectorType(ft, self.width) if _is_vec(x) else ft)
        if isinstance(e, Const):
            return ir.Constant(ft, float(e.value))
        if isinstance(e, Scalar):
            return b.load(self.regs[e.name])
        if isinstance(e, Load):
            return self.load(e.tensor, e.index)
        if isinstance(e, Select):
            return self._select(e, self.float)
        if isinstance(e, Unary):
            x = self.float(e.a)
            ty = x.type
            if e.op == "neg":
                return b.fneg(x)
            if e.op in ("exp", "log", "sqrt"):
                return b.call(self._math(e.op, ty), [x])
            if e.op == "abs":
                return b.call(self._math("fabs", ty), [x])
            if e.op == "tanh":
                return self._lanewise(x, self._libm("tanhf" if ft == FLOAT["f32"] else "tanh"))
            if e.op == "sigmoid":
                one = self.splat(ir.Constant(ft, 1.0)) if _is_vec(x) else ir.Constant(ft, 1.0)
                ex = b.call(self._math("exp", ty), [b.fneg(x)])
                return b.fdiv(one, b.fadd(one, ex))
        if isinstance(e, Binary) and e.op == "uniform":
            seed = b.fptosi(self.float(e.a), I64)
            idx = self.int(e.b)
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

    def _math(self, op: str, ty) -> ir.Function:
        """llvm.exp.f32, llvm.sqrt.v16f32, ...: one-argument math on scalars or vectors."""
        suffix = _vname(ty) if isinstance(ty, ir.VectorType) else ("f32" if ty == FLOAT["f32"] else "f64")
        return self._intrinsic(f"llvm.{op}.{suffix}", ty, [ty])

    def _intrinsic(self, name: str, ret, args) -> ir.Function:
        if name in self.m.globals:
            return self.m.globals[name]
        return ir.Function(self.m, ir.FunctionType(ret, args), name)

    def _lanewise(self, x: ir.Value, fn) -> ir.Value:
        if not _is_vec(x):
            return self.b.call(fn, [x])
        out = x
        for k in range(x.type.count):
            lane = self.b.call(fn, [self.b.extract_element(x, ir.Constant(I32, k))])
            out = self.b.insert_element(out, lane, ir.Constant(I32, k))
        return out

    def uniform(self, seed: ir.Value, index: ir.Value) -> ir.Value:
        """splitmix64(seed * golden + index) -> its top 24 bits / 2**24, in [0, 1)."""
        b = self.b
        vec = _is_vec(index)

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

    def _libm(self, name: str):
        if name in self.m.globals:
            return self.m.globals[name]
        fn = ir.Function(self.m, ir.FunctionType(self.ft, [self.ft]), name)
        fn.attributes.add("nounwind")
        return fn


def _repeat(form: dict, v: str):
    """(atom, s, k) when v enters the offset only as the atom (v + k) / s, 0 <= k < s."""
    found = [t for t in form if not isinstance(t, str) and t != 1 and v in _vars(t)]
    if len(found) != 1 or form[found[0]] != 1:
        return None
    atom = found[0]
    if not (isinstance(atom, Binary) and atom.op == "/" and isinstance(atom.b, Const) and atom.b.value > 1):
        return None
    inner = affine.affine(atom.a)
    if inner is None or set(inner) - {v, 1} or inner.get(v) != 1 or not 0 <= inner.get(1, 0) < atom.b.value:
        return None
    return atom, atom.b.value, inner.get(1, 0)


def _vname(t: ir.VectorType) -> str:
    return f"v{t.count}{'f32' if isinstance(t.element, ir.FloatType) else 'f64'}"


def _vars(e: Expr) -> set[str]:
    return {x.name for x in e.walk() if isinstance(x, Var)}
