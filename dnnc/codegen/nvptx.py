"""Code generation for NVIDIA GPUs: a bound loop-nest program -> NVPTX LLVM IR text.

Every kernel of the program (ir/passes/grid.py split them into launches) is one GPU kernel,
`void NAME(float *buffer, ...)`, marked as such in `nvvm.annotations`. Its leading grid
loops are flattened into one index, the thread's place in the launch (block * THREADS +
thread), which is decoded into the loops' variables; a thread past their product does
nothing. A kernel led by block loops instead (ir/passes/shared.py) decodes the block's
index into them, and each thread loop inside is one phase of the block's THREADS threads:
its variable is the thread's index in the block, and a barrier follows a phase that touches
the block's shared memory (address space 3). There a register tile's first index, the
thread, is dropped: each thread holds its own cells. Everything inside is emitted by the
CPU's statement emitter (kernel.py), so loops, guards, registers and index arithmetic mean
the same on both targets; what differs is here:
the math functions (the GPU has no libm: exp and log through the hardware's base-2
approximations, tanh and sigmoid from exp), and parallel loops, which run serially inside
a thread. Pointer arguments of a kernel are global memory to LLVM's NVPTX backend.

A program of many distinct kernels is several modules, each its own text (`; ModuleID`
begins one), so that LLVM can compile them side by side. After the modules come the launch
lines, `; launch KERNEL ENTRY POINTS BUFFER ...`, one per kernel in order: the kernel's own
symbol, the GPU function it runs (kernels that differ only in their buffers, as the blocks
of a ResNet stage do, share one, as on the CPU), its threads, and its buffers, a temporary
written BUFFER@OFFSET (elements into the workspace).
The runtime launches exactly these.
"""
from __future__ import annotations

import math

from llvmlite import ir

from ..te.expr import Binary, Const, Load, substitute
from ..ir import PRIVATE, If, Loop, Mma, Program, Store
from ..ir.memory import buffers_touched
from ..ir.passes.grid import grid_loops, leading_loops
from .kernel import KernelEmitter
from .llvm import code_key, kernel_args
from .symbols import kernel_symbol, symbol
from .types import FLOAT, I32, I64
from .widths import fits_32_bits

TRIPLE = "nvptx64-nvidia-cuda"
ALIGN = 64  # bytes every buffer starts at: cuMemAlloc aligns to 256, the memory plan to 16 elements
THREADS = 256  # threads per block: 8 warps, a common default that every GPU since sm_30 runs
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
# the a fragment's registers as (k, row) offsets from (k + q, row + g) (bf16: (k + 2q, row + g))
MMA_A_TF32 = ((0, 0), (0, 8), (4, 0), (4, 8))
MMA_A_BF16 = ((0, 0), (0, 8), (8, 0), (8, 8))


# a program of many distinct kernels is emitted as several modules, one in every PART_KERNELS
# of them up to MAX_PARTS, which LLVM compiles to PTX side by side (runtime/ptx.py)
PART_KERNELS, MAX_PARTS = 16, 16


def emit(p: Program, offsets: dict[str, int], dtype: str = "f32", data_layout: str = "",
         checks: bool = False) -> str:
    """NVPTX LLVM IR text for bound program p: its modules, then its launch lines; with checks
    (the debug build) every index is tested at run time, and a `; checks` line says so."""
    ft = FLOAT[dtype]
    shapes = {b.name: b.shape for b in p.buffers}
    kinds = {b.name: b.kind for b in p.buffers}
    locals_ = {b.name for b in p.buffers if b.kind in PRIVATE}
    temps = {b.name for b in p.buffers if b.kind == "temp"}
    keys = [code_key(p, k, checks) for k in p.kernels]
    distinct = list(dict.fromkeys(keys))
    parts = max(1, min(MAX_PARTS, len(distinct) // PART_KERNELS))
    part = {key: i % parts for i, key in enumerate(distinct)}  # dealt round: sizes even out
    modules = [_module(p.name if parts == 1 else f"{p.name}.{j}", data_layout) for j in range(parts)]
    launches = []
    shared: dict[tuple, tuple[str, int]] = {}  # code_key -> (entry, points)
    for k, key in zip(p.kernels, keys):
        used = kernel_args(p, k)
        own = kernel_symbol(p.name, k.name)
        args = " ".join(f"{u}@{offsets[u]}" if u in temps else u for u in used)
        if key in shared:  # the same code on other buffers: one entry, launched on these
            entry, points = shared[key]
            launches.append(f"; launch {own} {entry} {points} {args}".rstrip())
            continue
        m = modules[part[key]]
        fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ft.as_pointer()] * len(used)), own)
        for a, name in zip(fn.args, used):
            a.name = symbol(name)
            a.add_attribute("noalias")
            a.attributes.align = ALIGN  # cuMemAlloc and the memory plan's offsets: so loads can be vectors
        tiles = [n for n in buffers_touched(k.body) if n in locals_]
        body, own_shapes = k.body, shapes
        if leading_loops(body, "block")[0]:
            body, own_shapes = _per_thread(body, shapes, {n for n in tiles if kinds[n] == "local"})
        em = GpuEmitter(m, fn, dict(zip(used, fn.args)), own_shapes, ft, tiles, k.name if checks else None, used)
        if fits_32_bits(body, own_shapes, launched(body)):
            em.ix = I32
        for name in tiles:
            em.shared(name) if kinds[name] == "shared" else em.local(name)
        points = em.kernel_body(body)
        em.b.ret_void()
        ir.IRBuilder(em.entry).branch(fn.blocks[1])
        m.add_named_metadata("nvvm.annotations", [fn, ir.MetaDataString(m, "kernel"), ir.Constant(I32, 1)])
        shared[key] = (own, points)
        launches.append(f"; launch {own} {own} {points} {args}".rstrip())
    text = "\n".join(str(m) for m in modules)
    return text + "\n" + "\n".join(launches + (["; checks"] if checks else [])) + "\n"


def _module(name: str, data_layout: str) -> ir.Module:
    m = ir.Module(name=name)
    m.triple = TRIPLE
    m.data_layout = data_layout
    return m


def launched(body) -> int:
    """How many threads a kernel's launch starts: its grid's points, in whole blocks."""
    blocks, _ = leading_loops(body, "block")
    if blocks:
        return math.prod(lp.extent for lp in blocks) * THREADS
    loops, _ = grid_loops(body)
    return -(-math.prod(lp.extent for lp in loops) // THREADS) * THREADS


def _per_thread(body, shapes: dict, tiles: set[str]):
    """body with each register tile's first index (the thread) dropped, and the shapes so."""
    def expr(e):
        return substitute(e, lambda x: Load(x.tensor, x.index[1:], x.loc)
                          if isinstance(x, Load) and x.tensor in tiles else None)

    def stmts(ss):
        out = []
        for s in ss:
            if isinstance(s, Loop):
                out.append(Loop(s.var, s.extent, stmts(s.body), s.kind))
            elif isinstance(s, If):
                out.append(If(expr(s.cond), stmts(s.then), stmts(s.orelse)))
            elif isinstance(s, Store):
                index = s.index[1:] if s.buffer in tiles else s.index
                out.append(Store(s.buffer, tuple(expr(i) for i in index), expr(s.value)))
            elif isinstance(s, Mma):
                cell = s.cell[1:] if s.acc in tiles else s.cell
                out.append(Mma(s.kind, s.acc, cell, s.a, s.b, s.row, s.col, s.k, s.lane))
            else:
                out.append(type(s)(s.name, expr(s.value)))
        return tuple(out)

    return stmts(body), {n: shape[1:] if n in tiles else shape for n, shape in shapes.items()}


class GpuEmitter(KernelEmitter):
    """One GPU kernel's statements (see the module's docstring for what differs)."""

    reuse_ints = True
    unsigned_division = True

    def __init__(self, *args):
        super().__init__(*args)
        self.block_memory: set[str] = set()  # the shared buffers

    def kernel_body(self, body) -> int:
        """Emit the kernel's body; returns how many threads it runs on (its grid's points)."""
        blocks, inside = leading_loops(body, "block")
        if blocks:
            self._decode(blocks, self._sreg("ctaid.x"))
            self.block(inside)
            return math.prod(lp.extent for lp in blocks) * THREADS
        loops, inner = grid_loops(body)
        if not loops:
            self.block(body)
            return 1
        b = self.b
        points = math.prod(lp.extent for lp in loops)
        me = b.add(b.mul(self._sreg("ctaid.x"), self._sreg("ntid.x"), flags=("nuw", "nsw")), self._sreg("tid.x"),
                   flags=("nuw", "nsw"))
        with b.if_then(b.icmp_unsigned("<", me, ir.Constant(self.ix, points)), likely=True), self.scope():
            self._decode(loops, me)
            self.block(inner)
            for lp in loops:
                del self.vars[lp.var]
        return points

    def _sreg(self, name: str) -> ir.Value:
        b = self.b
        v = b.call(self.intrinsic(f"llvm.nvvm.read.ptx.sreg.{name}", I32, []), [])
        return v if self.ix == I32 else b.zext(v, self.ix)

    def _decode(self, loops: list[Loop], index: ir.Value) -> None:
        """The loops' variables at this point of their product (the innermost moves fastest)."""
        rest = index
        for lp in reversed(loops):
            self.ranges[lp.var] = (0, lp.extent - 1)  # the outermost too: the thread is in the grid
            ext = ir.Constant(self.ix, lp.extent)
            self.vars[lp.var] = self.b.urem(rest, ext) if lp is not loops[0] else rest
            rest = self.b.udiv(rest, ext)

    def shared(self, name: str) -> None:
        """A block's shared buffer: an array in address space 3."""
        n = math.prod(self.shapes[name])
        g = ir.GlobalVariable(self.m, ir.ArrayType(self.ft, n), f"{self.fn.name}.{symbol(name)}", addrspace=3)
        g.linkage = "internal"
        g.initializer = ir.Constant(g.type.pointee, ir.Undefined)
        g.align = 16
        self.block_memory.add(name)
        self.bufs[name] = ir.IRBuilder(self.entry).gep(g, [ir.Constant(I32, 0), ir.Constant(I32, 0)])

    def stmt(self, s) -> None:
        if isinstance(s, Mma):
            self.mma(s)
        else:
            super().stmt(s)

    def mma(self, s: Mma) -> None:
        """The warp's mma.sync: this thread's fragments of a and b (PTX's layouts for
        m16n8k8.tf32 and m16n8k16.bf16: a[k + q (+4), row + g (+8)] and b[k + q (+4), col + g],
        bf16 two consecutive k to a register) and its four cells of the accumulator."""
        b = self.b

        def add(x, y):  # x + y, for y an expression or a constant offset
            if isinstance(y, int):
                return Binary("+", x, Const(y)) if y else x
            return Binary("+", x, y)

        g, q = Binary("/", s.lane, Const(4)), Binary("%", s.lane, Const(4))
        bits = lambda buf, kx, x: b.bitcast(self.load(buf, (kx, x)), I32)
        if s.kind == "tf32":
            a_regs = [bits(s.a, add(add(s.k, q), dk), add(add(s.row, g), dr)) for dk, dr in MMA_A_TF32]
            b_regs = [bits(s.b, add(add(s.k, q), dk), add(s.col, g)) for dk in (0, 4)]
            shape, kind = "m16n8k8", "tf32"
        else:
            q2 = Binary("*", q, Const(2))

            def pair(buf, kx, x):  # bf16 (already rounded: the top half of its f32) at k and k + 1
                lo, hi = bits(buf, kx, x), bits(buf, add(kx, 1), x)
                return b.or_(b.and_(hi, ir.Constant(I32, -0x10000)), b.lshr(lo, ir.Constant(I32, 16)))

            a_regs = [pair(s.a, add(add(s.k, q2), dk), add(add(s.row, g), dr)) for dk, dr in MMA_A_BF16]
            b_regs = [pair(s.b, add(add(s.k, q2), dk), add(s.col, g)) for dk in (0, 8)]
            shape, kind = "m16n8k16", "bf16"
        cells = [s.cell + (Const(r),) for r in range(4)]
        acc = [self.load(s.acc, cell) for cell in cells]
        f32 = self.ft
        fty = ir.FunctionType(ir.LiteralStructType([f32] * 4), [I32] * 6 + [f32] * 4)
        asm = (f"mma.sync.aligned.{shape}.row.col.f32.{kind}.{kind}.f32 "
               "{$0,$1,$2,$3}, {$4,$5,$6,$7}, {$8,$9}, {$10,$11,$12,$13};")
        out = b.asm(fty, asm, "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", a_regs + b_regs + acc, False)
        for r, cell in enumerate(cells):
            self.store(s.acc, cell, b.extract_value(out, r))

    def loop(self, s) -> None:
        self.ranges[s.var] = (0, s.extent - 1)
        if s.kind in ("parallel", "grid"):  # inside a thread: serial
            self.counted_loop(s.var, ir.Constant(self.ix, 0), ir.Constant(self.ix, s.extent), s.body)
            return
        if s.kind == "thread":  # a phase: this thread's iteration, then the block's barrier
            if s.extent != THREADS:
                raise NotImplementedError(f"thread loop {s.var} of {s.extent} threads, not {THREADS}")
            self.vars[s.var] = self._sreg("tid.x")
            with self.scope():
                self.block(s.body)
            del self.vars[s.var]
            if set(buffers_touched(s.body)) & self.block_memory:
                self.b.call(self.intrinsic("llvm.nvvm.barrier0", ir.VoidType(), []), [])
            return
        super().loop(s)

    def _float_unary(self, op: str, x: ir.Value) -> ir.Value:
        b = self.b
        if op == "exp":
            return self._exp(x)
        if op == "log":
            return b.fmul(self._nvvm("lg2", x), self._c(x, LN2))
        if op == "tanh":  # 1 - 2 / (exp(2x) + 1): exact at the limits, no overflow to nan
            e = self._exp(b.fmul(x, self._c(x, 2.0)))
            return b.fsub(self._c(x, 1.0), b.fdiv(self._c(x, 2.0), b.fadd(e, self._c(x, 1.0))))
        if op == "sigmoid":
            return b.fdiv(self._c(x, 1.0), b.fadd(self._c(x, 1.0), self._exp(b.fneg(x))))
        return super()._float_unary(op, x)

    def report(self, text: bytes, values: list[ir.Value]) -> None:
        """vprintf(text, {values}), then a trap: the launch fails, and the runtime names it."""
        m, b = self.m, self.b
        fmt = ir.GlobalVariable(m, ir.ArrayType(ir.IntType(8), len(text)), m.get_unique_name("bounds.msg"))
        fmt.initializer = ir.Constant(fmt.type.pointee, bytearray(text))
        fmt.global_constant = True
        fmt.linkage = "private"
        i8p = ir.IntType(8).as_pointer()
        pack = self.alloca(ir.ArrayType(I64, max(len(values), 1)), "printf.args")
        for k, v in enumerate(values):
            b.store(v, b.gep(pack, [ir.Constant(I32, 0), ir.Constant(I32, k)]))
        vprintf = self.intrinsic("vprintf", I32, [i8p, i8p])
        b.call(vprintf, [b.bitcast(fmt, i8p), b.bitcast(pack, i8p)])
        b.call(self.intrinsic("llvm.trap", ir.VoidType(), []), [])

    def _exp(self, x: ir.Value) -> ir.Value:
        return self._nvvm("ex2", self.b.fmul(x, self._c(x, LOG2E)))

    def _nvvm(self, fn: str, x: ir.Value) -> ir.Value:
        """ex2.approx / lg2.approx (about 2 ulp), per lane of a vector."""
        if x.type != FLOAT["f32"]:
            if isinstance(x.type, ir.VectorType):
                out = x
                for k in range(x.type.count):
                    lane = self._nvvm(fn, self.b.extract_element(x, ir.Constant(I32, k)))
                    out = self.b.insert_element(out, lane, ir.Constant(I32, k))
                return out
            raise NotImplementedError(f"{fn} of {x.type} on the GPU")
        return self.b.call(self.intrinsic(f"llvm.nvvm.{fn}.approx.f", x.type, [x.type]), [x])

    def _c(self, x: ir.Value, v: float) -> ir.Value:
        c = ir.Constant(x.type.element if isinstance(x.type, ir.VectorType) else x.type, v)
        return self.splat(c) if isinstance(x.type, ir.VectorType) else c
