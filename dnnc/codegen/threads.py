"""The thread pool of generated code: a small runtime in LLVM IR over libc's pthreads.

No C compiler is involved: these functions are emitted into every module that has a parallel
loop, and `NAME_set_threads(n)` sets how many threads they use.
"""
from __future__ import annotations

from llvmlite import ir

I64 = ir.IntType(64)
I32 = ir.IntType(32)


MAX_THREADS = 64


# Waiting threads spin in rounds of a pause, with a sched_yield every YIELD_EVERY rounds: on
# an idle core the yield returns at once, and on a busy one it hands the core to whoever
# wants it (the caller, another process) instead of burning the time slice. So workers can
# spin through a whole training step: one that sleeps between loops comes back through a
# futex wake-up that, with a core busy, can queue it behind the other process (2-4x slower
# steps measured with short spins).
SPIN = 100_000  # rounds (about 1-2 ms) a worker waits for its next task before it sleeps
JOIN_SPIN = 5_000  # rounds the caller waits for others' last chunks before it sleeps
YIELD_EVERY = 128
CHUNKS_PER_THREAD = 4  # so that a thread held up mid-loop leaves most of the loop to the others
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
    """The pool's state, module globals. One task at a time: the loop's function, its extent,
    chunk size, number of chunks and buffers; `left`, the chunks nobody has taken yet (a
    countdown every thread takes from with an atomic add of -1); `pending`, the chunks not yet
    finished (a futex word the caller may sleep on, `waiting` saying it does). Per worker a
    generation counter it sleeps on (a futex word) and a flag saying it sleeps."""

    def __init__(self, m: ir.Module, ftype: ir.FunctionType):
        self.m = m
        fields = [ftype.as_pointer(), I64, I64, I64, ftype.args[2]]  # fn, n, chunk, chunks, buffers
        self.task = _global(m, "dnnc_pool_task", ir.LiteralStructType(fields))
        self.left = _global(m, "dnnc_pool_left", I64)
        self.pending = _global(m, "dnnc_pool_pending", I32)
        self.waiting = _global(m, "dnnc_pool_waiting", I32)
        self.gen = _global(m, "dnnc_pool_gen", ir.ArrayType(I32, MAX_THREADS))
        self.sleeping = _global(m, "dnnc_pool_sleeping", ir.ArrayType(I32, MAX_THREADS))
        self.tids = _global(m, "dnnc_pool_tids", ir.ArrayType(I64, MAX_THREADS))
        self.started = _global(m, "dnnc_pool_started", I64)
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

    def field(self, b, k: int):
        """The k-th field of the task."""
        return b.gep(self.task, [ir.Constant(I32, 0), ir.Constant(I32, k)])

    def pause(self, b, k) -> None:
        """Round k of a spin: a pause, and every YIELD_EVERY rounds a sched_yield."""
        if self.has_pause:
            fn = _extern(self.m, "llvm.x86.sse2.pause", ir.FunctionType(ir.VoidType(), []))
            b.call(fn, [])
        turn = b.icmp_unsigned("==", b.urem(k, ir.Constant(I64, YIELD_EVERY)), ir.Constant(I64, 0))
        with b.if_then(turn):
            b.call(_extern(self.m, "sched_yield", ir.FunctionType(I32, [])), [])

    def futex(self, b, word, op: int, val) -> None:
        b.call(self.syscall, [ir.Constant(I64, self.sys_futex), word, ir.Constant(I32, op), val,
                              ir.Constant(self.i8p, None)])


def _extern(m: ir.Module, name: str, ty: ir.FunctionType) -> ir.Function:
    return m.globals[name] if name in m.globals else ir.Function(m, ty, name)


def _take_chunks(pool: _Pool, b: ir.IRBuilder, fn: ir.Function) -> None:
    """Run chunks of the posted task until none is left; the caller and the workers alike.

    A chunk is taken by the atomic subtraction that moves `left` from k > 0 to k - 1 (chunk
    `chunks - k`), which also orders the task's fields before their reads. Until the chunk is
    counted finished the caller cannot return, so the fields stay those of the chunk's task.
    A worker that comes late, even after the caller has posted another task, takes only
    chunks that are there."""
    head, grab, run, out = (fn.append_basic_block(n) for n in ("take", "take.grab", "take.run", "take.out"))
    zero, one = ir.Constant(I64, 0), ir.Constant(I64, 1)
    b.branch(head)
    b.position_at_end(head)
    # a plain look first: a late worker leaves the counter's cache line alone
    seen = b.load_atomic(pool.left, "monotonic", 8)
    b.cbranch(b.icmp_signed(">", seen, zero), grab, out)
    b.position_at_end(grab)
    k = b.atomic_rmw("sub", pool.left, one, "seq_cst")
    b.cbranch(b.icmp_signed(">", k, zero), run, out)
    b.position_at_end(run)
    f, n, chunk, chunks, bufs = (b.load(pool.field(b, i)) for i in range(5))
    lo = b.mul(b.sub(chunks, k), chunk)  # chunks in ascending order
    hi = b.add(lo, chunk)
    hi = b.select(b.icmp_signed("<", n, hi), n, hi)
    b.call(f, [lo, hi, bufs])
    # count it finished; whoever finishes the last chunk wakes the caller if it sleeps
    was = b.atomic_rmw("sub", pool.pending, ir.Constant(I32, 1), "seq_cst")
    with b.if_then(b.icmp_unsigned("==", was, ir.Constant(I32, 1))):
        asleep = b.load_atomic(pool.waiting, "seq_cst", 4)
        with b.if_then(b.icmp_unsigned("!=", asleep, ir.Constant(I32, 0))):
            pool.futex(b, pool.pending, FUTEX_WAKE, ir.Constant(I32, 1))
    b.branch(head)
    b.position_at_end(out)


def _worker(pool: _Pool) -> ir.Function:
    """The body of worker w: take chunks of the posted task, then wait for its generation
    counter to move (spinning, then asleep on the futex); until told to stop."""
    m, i8p = pool.m, pool.i8p
    fn = ir.Function(m, ir.FunctionType(i8p, [i8p]), "dnnc_worker")
    fn.linkage = "internal"
    entry, top, work, spin, sleep, stop = (fn.append_basic_block(n) for n in (
        "entry", "top", "work", "spin", "sleep", "stop"))
    b = ir.IRBuilder(entry)
    w = b.ptrtoint(fn.args[0], I64)
    gen = pool.slot(b, pool.gen, w)
    flag = pool.slot(b, pool.sleeping, w)
    b.branch(top)
    # read the generation before looking for chunks, so a task posted meanwhile moves it
    b.position_at_end(top)
    seen = b.load_atomic(gen, "acquire", 4)
    b.cbranch(b.icmp_unsigned("!=", b.load_atomic(pool.stop, "acquire", 4), ir.Constant(I32, 0)), stop, work)
    b.position_at_end(work)
    _take_chunks(pool, b, fn)
    took = b.block
    b.branch(spin)
    b.position_at_end(spin)
    k = b.phi(I64, "k")
    k.add_incoming(ir.Constant(I64, 0), took)
    body = fn.append_basic_block("spin.body")
    b.cbranch(b.icmp_unsigned("!=", b.load_atomic(gen, "acquire", 4), seen), top, body)
    b.position_at_end(body)
    pool.pause(b, k)
    k1 = b.add(k, ir.Constant(I64, 1))
    k.add_incoming(k1, b.block)
    b.cbranch(b.icmp_signed("<", k1, ir.Constant(I64, SPIN)), spin, sleep)
    b.position_at_end(sleep)  # say so, look once more, then sleep unless the counter moved
    b.store_atomic(ir.Constant(I32, 1), flag, "seq_cst", 4)
    nap = fn.append_basic_block("nap")
    woke = fn.append_basic_block("woke")
    b.cbranch(b.icmp_unsigned("==", b.load_atomic(gen, "seq_cst", 4), seen), nap, woke)
    b.position_at_end(nap)
    pool.futex(b, gen, FUTEX_WAIT, seen)
    b.branch(woke)
    b.position_at_end(woke)
    b.store_atomic(ir.Constant(I32, 0), flag, "seq_cst", 4)
    b.branch(top)
    b.position_at_end(stop)
    b.ret(ir.Constant(i8p, None))
    return fn


def _wake(pool: _Pool, b, w) -> None:
    """Tell worker w a task is posted: move its counter, wake it if it sleeps."""
    gen = pool.slot(b, pool.gen, w)
    b.atomic_rmw("add", gen, ir.Constant(I32, 1), "seq_cst")
    asleep = b.icmp_unsigned("!=", b.load_atomic(pool.slot(b, pool.sleeping, w), "seq_cst", 4), ir.Constant(I32, 0))
    with b.if_then(asleep):
        pool.futex(b, gen, FUTEX_WAKE, ir.Constant(I32, 1))


def _join(pool: _Pool, b, fn: ir.Function) -> None:
    """Wait until every chunk is finished: spin briefly (the others finish about when the
    caller does), then sleep on `pending`. Sleeping matters when a core is busy: a worker
    still holding a chunk may be queued behind another process, and a core left idle by the
    caller is one the kernel can move it to."""
    head, body, nap, out = (fn.append_basic_block(n) for n in ("join", "join.pause", "join.nap", "joined"))
    pre = b.block
    b.branch(head)
    b.position_at_end(head)
    k = b.phi(I64, "k")
    k.add_incoming(ir.Constant(I64, 0), pre)
    left = b.load_atomic(pool.pending, "acquire", 4)
    b.cbranch(b.icmp_unsigned("==", left, ir.Constant(I32, 0)), out, body)
    b.position_at_end(body)
    pool.pause(b, k)
    k1 = b.add(k, ir.Constant(I64, 1))
    k.add_incoming(k1, b.block)
    b.cbranch(b.icmp_signed("<", k1, ir.Constant(I64, JOIN_SPIN)), head, nap)
    b.position_at_end(nap)  # say so, look once more, then sleep unless the count moved
    b.store_atomic(ir.Constant(I32, 1), pool.waiting, "seq_cst", 4)
    left = b.load_atomic(pool.pending, "seq_cst", 4)
    with b.if_then(b.icmp_unsigned("!=", left, ir.Constant(I32, 0))):
        pool.futex(b, pool.pending, FUTEX_WAIT, left)
    b.store_atomic(ir.Constant(I32, 0), pool.waiting, "seq_cst", 4)
    k.add_incoming(k1, b.block)
    b.branch(head)
    b.position_at_end(out)


def parallel_for(m: ir.Module, ftype: ir.FunctionType) -> ir.Function:
    """dnnc_parallel(fn, n, buffers): run fn over [0, n) in chunks shared by the threads.

    A persistent pool in LLVM IR over libc's pthreads and the futex system call. [0, n) is
    cut into about CHUNKS_PER_THREAD chunks per thread, and every thread, the caller's
    included, takes the next chunk from an atomic counter until none is left. So a thread
    that the OS deschedules (another process on its core) holds up at most the chunk it has:
    the others do the rest, and a worker that wakes after the work is gone finds no chunk.
    Workers are started on first use and kept: between tasks a worker spins for about a
    millisecond, yielding its core to anyone who wants it, then sleeps on its futex, so a
    parallel loop costs a few microseconds instead of a pthread_create. The number of
    threads is the module's global dnnc_threads (set by NAME_set_threads; 1 by default);
    NAME_stop_threads ends the workers (before the code is freed). Which thread runs an
    iteration does not change what it computes.
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
    # the chunks: ceil(n / chunks) iterations each, the count recomputed so none is empty
    one = ir.Constant(I64, 1)
    chunks = b.mul(T, ir.Constant(I64, CHUNKS_PER_THREAD))
    chunks = b.select(b.icmp_signed("<", n, chunks), n, chunks)
    chunk = b.sdiv(b.add(n, b.sub(chunks, one)), chunks)
    chunks = b.sdiv(b.add(n, b.sub(chunk, one)), chunk)
    for k, v in enumerate((fn_, n, chunk, chunks, bufs)):
        b.store(v, pool.field(b, k))
    # post: the counts first, `left` last (it publishes the task), then tell the workers
    b.store_atomic(b.trunc(chunks, I32), pool.pending, "seq_cst", 4)
    b.store_atomic(chunks, pool.left, "seq_cst", 8)
    with _for(b, par, ir.Constant(I64, 0), workers) as w:
        _wake(pool, b, w)
    _take_chunks(pool, b, par)
    _join(pool, b, par)
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
