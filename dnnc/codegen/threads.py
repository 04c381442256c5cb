"""The thread pool of generated code: a small runtime in LLVM IR over libc's pthreads.

No C compiler is involved: these functions are emitted into every module that has a parallel
loop, and `NAME_set_threads(n)` sets how many threads they use.
"""
from __future__ import annotations

from llvmlite import ir

I64 = ir.IntType(64)
I32 = ir.IntType(32)


MAX_THREADS = 64


SPIN = 20_000  # pauses (about 0.1-0.5 ms) a worker waits for its next task before it sleeps
FUTEX_WAIT, FUTEX_WAKE = 128, 129  # the _PRIVATE variants
SYS_FUTEX = {"x86_64": 202, "AMD64": 202, "aarch64": 98, "arm64": 98}


def _global(m: ir.Module, name: str, ty) -> ir.GlobalVariable:
    if name in m.globals:
        return m.globals[name]
    g = ir.GlobalVariable(m, ty, name)
    g.linkage = "internal"
    g.initializer = ir.Constant(ty, None)
    return g


class _Pool:
    """The pool's state, module globals: per worker a task slot, a generation counter the
    worker sleeps on (a futex word) and a flag saying it sleeps; a count of finished tasks."""

    def __init__(self, m: ir.Module, ftype: ir.FunctionType):
        self.m = m
        self.task = ir.LiteralStructType([ftype.as_pointer(), I64, I64, ftype.args[2]])
        self.tasks = _global(m, "dnnc_pool_tasks", ir.ArrayType(self.task, MAX_THREADS))
        self.gen = _global(m, "dnnc_pool_gen", ir.ArrayType(I32, MAX_THREADS))
        self.sleeping = _global(m, "dnnc_pool_sleeping", ir.ArrayType(I32, MAX_THREADS))
        self.tids = _global(m, "dnnc_pool_tids", ir.ArrayType(I64, MAX_THREADS))
        self.started = _global(m, "dnnc_pool_started", I64)
        self.done = _global(m, "dnnc_pool_done", I64)
        self.stop = _global(m, "dnnc_pool_stop", I32)
        self.threads = m.globals.get("dnnc_threads") or _threads_global(m)
        i8p = ir.IntType(8).as_pointer()
        self.i8p = i8p
        self.create = _extern(m, "pthread_create", ir.FunctionType(I32, [I64.as_pointer(), i8p, ir.FunctionType(
            i8p, [i8p]).as_pointer(), i8p]))
        self.join = _extern(m, "pthread_join", ir.FunctionType(I32, [I64, i8p.as_pointer()]))
        self.syscall = _extern(m, "syscall", ir.FunctionType(I64, [I64], var_arg=True))
        import platform

        self.sys_futex = SYS_FUTEX.get(platform.machine(), 202)
        self.has_pause = platform.machine() in ("x86_64", "AMD64")

    def slot(self, b, arr, w):
        return b.gep(arr, [ir.Constant(I64, 0), w])

    def pause(self, b) -> None:
        if self.has_pause:
            fn = _extern(self.m, "llvm.x86.sse2.pause", ir.FunctionType(ir.VoidType(), []))
            b.call(fn, [])

    def futex(self, b, word, op: int, val) -> None:
        b.call(self.syscall, [ir.Constant(I64, self.sys_futex), word, ir.Constant(I32, op), val,
                              ir.Constant(self.i8p, None)])


def _extern(m: ir.Module, name: str, ty: ir.FunctionType) -> ir.Function:
    return m.globals[name] if name in m.globals else ir.Function(m, ty, name)


def _worker(pool: _Pool) -> ir.Function:
    """The body of worker w: wait for its generation counter to move (spinning, then asleep
    on the futex), run its task, count it done; until told to stop."""
    m, i8p = pool.m, pool.i8p
    fn = ir.Function(m, ir.FunctionType(i8p, [i8p]), "dnnc_worker")
    fn.linkage = "internal"
    entry, wait, spin, sleep, got, run, stop = (fn.append_basic_block(n) for n in (
        "entry", "wait", "spin", "sleep", "got", "run", "stop"))
    b = ir.IRBuilder(entry)
    w = b.ptrtoint(fn.args[0], I64)
    gen = pool.slot(b, pool.gen, w)
    flag = pool.slot(b, pool.sleeping, w)
    b.branch(wait)
    b.position_at_end(wait)  # seen: the generation of the last task run (0 at the start)
    seen = b.phi(I32, "seen")
    seen.add_incoming(ir.Constant(I32, 0), entry)
    b.branch(spin)
    b.position_at_end(spin)
    k = b.phi(I64, "k")
    k.add_incoming(ir.Constant(I64, 0), wait)
    g = b.load_atomic(gen, "acquire", 4)
    moved = b.icmp_unsigned("!=", g, seen)
    body = fn.append_basic_block("spin.body")
    b.cbranch(moved, got, body)
    b.position_at_end(body)
    pool.pause(b)
    k1 = b.add(k, ir.Constant(I64, 1))
    k.add_incoming(k1, body)
    b.cbranch(b.icmp_signed("<", k1, ir.Constant(I64, SPIN)), spin, sleep)
    b.position_at_end(sleep)  # say so, look once more, then sleep unless the counter moved
    b.store_atomic(ir.Constant(I32, 1), flag, "seq_cst", 4)
    g2 = b.load_atomic(gen, "seq_cst", 4)
    nap = fn.append_basic_block("nap")
    woke = fn.append_basic_block("woke")
    b.cbranch(b.icmp_unsigned("==", g2, seen), nap, woke)
    b.position_at_end(nap)
    pool.futex(b, gen, FUTEX_WAIT, seen)
    b.branch(woke)
    b.position_at_end(woke)
    b.store_atomic(ir.Constant(I32, 0), flag, "seq_cst", 4)
    seen.add_incoming(seen, woke)
    b.branch(wait)
    b.position_at_end(got)
    b.cbranch(b.icmp_unsigned("!=", b.load_atomic(pool.stop, "acquire", 4), ir.Constant(I32, 0)), stop, run)
    b.position_at_end(run)
    t = pool.slot(b, pool.tasks, w)
    f = b.load(b.gep(t, [ir.Constant(I32, 0), ir.Constant(I32, 0)]))
    lo = b.load(b.gep(t, [ir.Constant(I32, 0), ir.Constant(I32, 1)]))
    hi = b.load(b.gep(t, [ir.Constant(I32, 0), ir.Constant(I32, 2)]))
    bufs = b.load(b.gep(t, [ir.Constant(I32, 0), ir.Constant(I32, 3)]))
    b.call(f, [lo, hi, bufs])
    b.atomic_rmw("add", pool.done, ir.Constant(I64, 1), "release")
    seen.add_incoming(g, run)
    b.branch(wait)
    b.position_at_end(stop)
    b.ret(ir.Constant(i8p, None))
    return fn


def _post(pool: _Pool, b, w, fn_, lo, hi, bufs) -> None:
    """Hand worker w a task: fill its slot, move its counter, wake it if it sleeps."""
    t = pool.slot(b, pool.tasks, w)
    for k, v in enumerate((fn_, lo, hi, bufs)):
        b.store(v, b.gep(t, [ir.Constant(I32, 0), ir.Constant(I32, k)]))
    gen = pool.slot(b, pool.gen, w)
    b.atomic_rmw("add", gen, ir.Constant(I32, 1), "seq_cst")
    asleep = b.icmp_unsigned("!=", b.load_atomic(pool.slot(b, pool.sleeping, w), "seq_cst", 4), ir.Constant(I32, 0))
    with b.if_then(asleep):
        pool.futex(b, gen, FUTEX_WAKE, ir.Constant(I32, 1))


def parallel_for(m: ir.Module, ftype: ir.FunctionType) -> ir.Function:
    """dnnc_parallel(fn, n, buffers): run fn over [0, n) in chunks, one per thread.

    A persistent pool in LLVM IR over libc's pthreads and the futex system call: the caller's
    thread takes the first chunk and worker w the chunk w + 1. Workers are started on first
    use and kept: between tasks a worker spins briefly, then sleeps on its futex, so a
    parallel loop costs a few microseconds instead of a pthread_create. The number of
    threads is the module's global dnnc_threads (set by NAME_set_threads; 1 by default);
    NAME_stop_threads ends the workers (before the code is freed).
    """
    if "dnnc_parallel" in m.globals:
        return m.globals["dnnc_parallel"]
    pool = _Pool(m, ftype)
    m.dnnc_pool = pool  # for NAME_stop_threads
    worker = _worker(pool)
    par = ir.Function(m, ir.FunctionType(ir.VoidType(), [ftype.as_pointer(), I64, ftype.args[2]]), "dnnc_parallel")
    par.linkage = "internal"
    fn_, n, bufs = par.args
    entry = par.append_basic_block("entry")
    serial = par.append_basic_block("serial")
    spread = par.append_basic_block("spread")
    b = ir.IRBuilder(entry)
    want = b.load(pool.threads)
    T = b.select(b.icmp_signed("<", n, want), n, want)
    T = b.select(b.icmp_signed(">", T, ir.Constant(I64, MAX_THREADS)), ir.Constant(I64, MAX_THREADS), T)
    b.cbranch(b.icmp_signed("<=", T, ir.Constant(I64, 1)), serial, spread)
    b.position_at_end(serial)
    b.call(fn_, [ir.Constant(I64, 0), n, bufs])
    b.ret_void()
    b.position_at_end(spread)
    workers = b.sub(T, ir.Constant(I64, 1))
    with _for(b, par, b.load(pool.started), workers) as w:  # start the workers not yet running
        b.call(pool.create, [pool.slot(b, pool.tids, w), ir.Constant(pool.i8p, None), worker,
                             b.inttoptr(w, pool.i8p)])
    started = b.load(pool.started)
    b.store(b.select(b.icmp_signed(">", workers, started), workers, started), pool.started)
    b.store_atomic(ir.Constant(I64, 0), pool.done, "seq_cst", 8)
    chunk = b.sdiv(b.add(n, workers), T)
    with _for(b, par, ir.Constant(I64, 1), T) as t_:
        lo = b.mul(t_, chunk)
        lo = b.select(b.icmp_signed("<", n, lo), n, lo)
        hi = b.add(lo, chunk)
        hi = b.select(b.icmp_signed("<", n, hi), n, hi)
        _post(pool, b, b.sub(t_, ir.Constant(I64, 1)), fn_, lo, hi, bufs)
    first = b.select(b.icmp_signed("<", n, chunk), n, chunk)
    b.call(fn_, [ir.Constant(I64, 0), first, bufs])
    # wait for the workers (they finish about when the caller does: spin)
    head = par.append_basic_block("join")
    body = par.append_basic_block("join.pause")
    out = par.append_basic_block("joined")
    b.branch(head)
    b.position_at_end(head)
    b.cbranch(b.icmp_signed("<", b.load_atomic(pool.done, "acquire", 8), workers), body, out)
    b.position_at_end(body)
    pool.pause(b)
    b.branch(head)
    b.position_at_end(out)
    b.ret_void()
    return par


def stop_threads_function(m: ir.Module, name: str) -> None:
    """NAME_stop_threads(): end the pool's workers and wait for them (they restart on demand)."""
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), []), f"{name}_stop_threads")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    pool = getattr(m, "dnnc_pool", None)
    if pool is None:  # no parallel loop: no pool
        b.ret_void()
        return
    started = b.load(pool.started)
    b.store_atomic(ir.Constant(I32, 1), pool.stop, "seq_cst", 4)
    with _for(b, fn, ir.Constant(I64, 0), started) as w:
        gen = pool.slot(b, pool.gen, w)
        b.atomic_rmw("add", gen, ir.Constant(I32, 1), "seq_cst")
        pool.futex(b, gen, FUTEX_WAKE, ir.Constant(I32, 1))
    with _for(b, fn, ir.Constant(I64, 0), started) as w:
        b.call(pool.join, [b.load(pool.slot(b, pool.tids, w)), ir.Constant(pool.i8p.as_pointer(), None)])
        # a restarted worker begins from generation 0
        b.store(ir.Constant(I32, 0), pool.slot(b, pool.gen, w))
    b.store(ir.Constant(I64, 0), pool.started)
    b.store_atomic(ir.Constant(I32, 0), pool.stop, "seq_cst", 4)
    b.ret_void()


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
