"""Statement emission: a kernel's loops, guards, stores and registers as one LLVM function.

Serial loops are counted loops; unrolled loops are emitted once per iteration; a vector loop
is emitted once, over W lanes; a parallel loop is outlined as a function of an iteration range
and run on the thread pool (threads.py). A guard that depends on the vector variable becomes
a lane mask, under which both branches run, each on its own lanes.
"""
from __future__ import annotations

from llvmlite import ir

from ..te.expr import Binary, Load
from ..ir import If, Let, Loop, Mma, Set, Stmt, Store
from .loadstore import MemoryEmitter
from .symbols import symbol
from .threads import parallel_for
from .types import I64, is_vec, vconst


class KernelEmitter(MemoryEmitter):
    """The body of one kernel function. buffer_names: its arguments, in order."""

    def __init__(self, m, fn, bufs, shapes, ft, locals_: list[str], checks: str | None, buffer_names: list[str]):
        super().__init__(m, fn, bufs, shapes, ft, locals_, checks)
        self.buffer_names = buffer_names
        self.outlined = 0  # parallel loops outlined so far, to name the next

    def run(self, body) -> None:
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

    def block(self, stmts) -> None:
        for s in stmts:
            self.stmt(s)

    def stmt(self, s: Stmt) -> None:
        if isinstance(s, Loop):
            self.loop(s)
        elif isinstance(s, If):
            self.guard(s)
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
        elif isinstance(s, Mma):  # on the GPU one instruction (nvptx.py); here what it computes
            self.block(s.expand())
        else:
            raise TypeError(s)

    def loop(self, s: Loop) -> None:
        self.ranges[s.var] = (0, s.extent - 1)
        if s.kind == "parallel" and self.vec is None:
            self.parallel(s)
            return
        if s.kind == "unroll":
            for v in range(s.extent):
                self.vars[s.var] = ir.Constant(self.ix, v)
                with self.scope():
                    self.block(s.body)
            del self.vars[s.var]
            return
        if s.kind == "vector":
            if self.vec is not None:
                raise NotImplementedError("nested vector loops")
            self.vec = (s.var, s.extent)
            self.vars[s.var] = vconst(ir.VectorType(self.ix, s.extent), tuple(range(s.extent)))
            with self.scope():
                self.block(s.body)
            del self.vars[s.var]
            self.vec = None
            return
        self.counted_loop(s.var, ir.Constant(self.ix, 0), ir.Constant(self.ix, s.extent), s.body)

    def guard(self, s: If) -> None:
        b = self.b
        c = self.cond(s.cond)
        if is_vec(c):  # a lane mask: both branches run, each on its lanes
            outer = self.mask
            self.mask = c if outer is None else b.and_(outer, c)
            with self.scope():
                self.block(s.then)
            if s.orelse:
                nc = b.not_(c)
                self.mask = nc if outer is None else b.and_(outer, nc)
                with self.scope():
                    self.block(s.orelse)
            self.mask = outer
            return
        if s.orelse:
            with b.if_else(c) as (then, other):
                with then, self.scope():
                    self.block(s.then)
                with other, self.scope():
                    self.block(s.orelse)
        else:
            with b.if_then(c), self.scope():
                self.block(s.then)

    def _zero_when_masked(self, e) -> bool:
        """e is 0 in the masked-off lanes: a product with a factor read per lane (masked reads
        fill those lanes with zeros)."""
        if isinstance(e, Binary) and e.op == "*":
            return self._zero_when_masked(e.a) or self._zero_when_masked(e.b)
        if not isinstance(e, Load) or e.tensor in self.locals_:
            return False
        a = self.access(e.tensor, e.index)
        # the factor's address is emitted, unused (LLVM deletes it): so the IR text, value
        # numbers included, stays what dnnc has always generated for these kernels
        self.pointer(e.tensor, a)
        return a.kind != "scalar"

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
        self.outlined += 1
        fn = ir.Function(self.m, ftype, f"{self.fn.name}.par{self.outlined}")
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        fn.attributes.add("noinline")
        sub = KernelEmitter(self.m, fn, {}, self.shapes, self.ft, list(self.locals_), self.checks, self.buffer_names)
        eb = ir.IRBuilder(sub.entry)
        for k, name in enumerate(self.buffer_names):
            sub.bufs[name] = eb.load(eb.gep(fn.args[2], [ir.Constant(I64, k)]), name=symbol(name))
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
        iv = b.phi(start.type, name=var)
        iv.add_incoming(start, pre)
        self.vars[var] = iv
        b.position_at_end(loop)
        with self.scope():
            self.block(body)
        nxt = b.add(iv, ir.Constant(start.type, 1), flags=("nuw", "nsw"))
        iv.add_incoming(nxt, b.block)
        b.branch(head)
        b.position_at_end(head)
        b.cbranch(b.icmp_signed("<", iv, end), loop, done)
        b.position_at_end(done)
        del self.vars[var]

    def set_reg(self, name: str, v: ir.Value) -> None:
        """Assign a register; in vector code only the enabled lanes change."""
        slot = self.regs[name]
        if isinstance(slot.type.pointee, ir.VectorType):
            v = self.splat(v)
            if self.mask is not None:
                v = self.b.select(self.mask, v, self.b.load(slot))
        self.b.store(v, slot)
