"""The thread pool of generated code: a small runtime in LLVM IR over libc's pthreads.

No C compiler is involved: these functions are emitted into every module that has a parallel
loop, and `NAME_set_threads(n)` sets how many threads they use.
"""
from __future__ import annotations

from llvmlite import ir

I64 = ir.IntType(64)
I32 = ir.IntType(32)


MAX_THREADS = 64


def parallel_for(m: ir.Module, ftype: ir.FunctionType) -> ir.Function:
    """dnnc_parallel(fn, n, buffers): run fn over [0, n) in chunks, one per thread.

    A small runtime in LLVM IR over libc's pthreads: the caller's thread takes the first
    chunk, pthread_create starts the others, pthread_join waits for them. The number of
    threads is the module's global dnnc_threads (set by NAME_set_threads; 1 by default).
    """
    if "dnnc_parallel" in m.globals:
        return m.globals["dnnc_parallel"]
    i8p = ir.IntType(8).as_pointer()
    fnptr = ftype.as_pointer()
    task = ir.LiteralStructType([fnptr, I64, I64, ftype.args[2]])
    threads = m.globals.get("dnnc_threads") or _threads_global(m)
    create = ir.Function(m, ir.FunctionType(ir.IntType(32), [I64.as_pointer(), i8p,
                         ir.FunctionType(i8p, [i8p]).as_pointer(), i8p]), "pthread_create")
    join = ir.Function(m, ir.FunctionType(ir.IntType(32), [I64, i8p.as_pointer()]), "pthread_join")
    # the thread's entry: unpack a task and run it
    tramp = ir.Function(m, ir.FunctionType(i8p, [i8p]), "dnnc_trampoline")
    tramp.linkage = "internal"
    tb = ir.IRBuilder(tramp.append_basic_block("entry"))
    t = tb.bitcast(tramp.args[0], task.as_pointer())
    f = tb.load(tb.gep(t, [ir.Constant(I32, 0), ir.Constant(I32, 0)]))
    lo = tb.load(tb.gep(t, [ir.Constant(I32, 0), ir.Constant(I32, 1)]))
    hi = tb.load(tb.gep(t, [ir.Constant(I32, 0), ir.Constant(I32, 2)]))
    bufs = tb.load(tb.gep(t, [ir.Constant(I32, 0), ir.Constant(I32, 3)]))
    tb.call(f, [lo, hi, bufs])
    tb.ret(ir.Constant(i8p, None))

    par = ir.Function(m, ir.FunctionType(ir.VoidType(), [fnptr, I64, ftype.args[2]]), "dnnc_parallel")
    par.linkage = "internal"
    fn_, n, bufs = par.args
    entry = par.append_basic_block("entry")
    serial = par.append_basic_block("serial")
    spawn = par.append_basic_block("spawn")
    b = ir.IRBuilder(entry)
    tasks = b.alloca(ir.ArrayType(task, MAX_THREADS))
    tids = b.alloca(ir.ArrayType(I64, MAX_THREADS))
    want = b.load(threads)
    T = b.select(b.icmp_signed("<", n, want), n, want)
    T = b.select(b.icmp_signed(">", T, ir.Constant(I64, MAX_THREADS)), ir.Constant(I64, MAX_THREADS), T)
    b.cbranch(b.icmp_signed("<=", T, ir.Constant(I64, 1)), serial, spawn)
    b.position_at_end(serial)
    b.call(fn_, [ir.Constant(I64, 0), n, bufs])
    b.ret_void()
    b.position_at_end(spawn)
    chunk = b.sdiv(b.add(n, b.sub(T, ir.Constant(I64, 1))), T)
    with _for(b, par, ir.Constant(I64, 1), T) as t_:
        lo = b.mul(t_, chunk)
        hi = b.add(lo, chunk)
        hi = b.select(b.icmp_signed("<", n, hi), n, hi)
        slot = b.gep(tasks, [ir.Constant(I64, 0), t_])
        b.store(fn_, b.gep(slot, [ir.Constant(I32, 0), ir.Constant(I32, 0)]))
        b.store(lo, b.gep(slot, [ir.Constant(I32, 0), ir.Constant(I32, 1)]))
        b.store(hi, b.gep(slot, [ir.Constant(I32, 0), ir.Constant(I32, 2)]))
        b.store(bufs, b.gep(slot, [ir.Constant(I32, 0), ir.Constant(I32, 3)]))
        b.call(create, [b.gep(tids, [ir.Constant(I64, 0), t_]), ir.Constant(i8p, None), tramp,
                        b.bitcast(slot, i8p)])
    first = b.select(b.icmp_signed("<", n, chunk), n, chunk)
    b.call(fn_, [ir.Constant(I64, 0), first, bufs])
    with _for(b, par, ir.Constant(I64, 1), T) as t_:
        b.call(join, [b.load(b.gep(tids, [ir.Constant(I64, 0), t_])), ir.Constant(i8p.as_pointer(), None)])
    b.ret_void()
    return par


def _threads_global(m: ir.Module) -> ir.GlobalVariable:
    g = ir.GlobalVariable(m, I64, "dnnc_threads")
    g.linkage = "internal"
    g.initializer = ir.Constant(I64, 1)
    return g


def set_threads_function(m: ir.Module, name: str) -> None:
    """NAME_set_threads(n): how many threads parallel loops use from now on."""
    g = m.globals.get("dnnc_threads") or _threads_global(m)
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [I64]), f"{name}_set_threads")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n = fn.args[0]
    b.store(b.select(b.icmp_signed("<", n, ir.Constant(I64, 1)), ir.Constant(I64, 1), n), g)
    b.ret_void()


class _for:
    """for t in [lo, hi): a counted loop for the runtime's own code."""

    def __init__(self, b: ir.IRBuilder, fn: ir.Function, lo, hi):
        self.b, self.fn, self.lo, self.hi = b, fn, lo, hi

    def __enter__(self):
        b = self.b
        self.head = self.fn.append_basic_block("t.head")
        self.body = self.fn.append_basic_block("t.body")
        self.done = self.fn.append_basic_block("t.done")
        self.pre = b.block
        b.branch(self.head)
        b.position_at_end(self.head)
        self.iv = b.phi(I64)
        self.iv.add_incoming(self.lo, self.pre)
        b.cbranch(b.icmp_signed("<", self.iv, self.hi), self.body, self.done)
        b.position_at_end(self.body)
        return self.iv

    def __exit__(self, *exc):
        b = self.b
        nxt = b.add(self.iv, ir.Constant(I64, 1))
        self.iv.add_incoming(nxt, b.block)
        b.branch(self.head)
        b.position_at_end(self.done)
