"""Code generation: loop-nest IR -> LLVM IR text (llvmlite.ir).

One function per kernel (taking the buffers it touches) and one entry function
`NAME_forward(args..., workspace)` that calls them in order. Kernels that differ only in the
names of their buffers (the blocks of a ResNet stage, and their backward passes) share one
function; each other kernel's symbol is a call of it, so every kernel can still be timed.
Buffers are noalias pointers; temporaries are slices of the workspace at offsets chosen by
the caller's memory plan;
`local` buffers (register tiles) are stack arrays of the kernel, which LLVM keeps in registers.
Indices are i64; floor division and modulo follow the IR's (Python's) rounding. Selects
whose arms read memory are branches, so a guarded read is never performed.

A `vector for v in 0..W` loop is emitted once, as SIMD code over W lanes: every value that
depends on v is a <W x T> vector. A read or write whose address moves by one element per
lane is one vector load or store; one that does not depend on v is a scalar, broadcast; any
other is a gather or scatter (access.py decides which). A guard that depends on v becomes a
lane mask: masked-off lanes neither load nor store, which is how padding and ragged edges
stay in bounds.

With checks=True (the debug build) every load and store first tests each index against its
dimension, in the lanes that really access memory (checks.py).

The work is split by concern: kernel.py emits statements and loops, loadstore.py memory
accesses, exprs.py expressions, threads.py the thread pool; this module puts the functions
of a program together.
"""
from __future__ import annotations

import re

from llvmlite import ir

from ..ir import PRIVATE, Kernel, Program, rename_buffers
from ..ir.memory import buffers_touched
from .kernel import KernelEmitter
from .symbols import kernel_symbol, symbol
from .threads import set_threads_function, stop_threads_function
from .types import FLOAT, I64

__all__ = ["emit", "kernel_args", "kernel_symbol", "symbol"]


def kernel_args(p: Program, k: Kernel) -> list[str]:
    """The buffers a kernel's function takes, in order (register tiles are its own)."""
    local = {b.name for b in p.buffers if b.kind in PRIVATE}
    return [u for u in buffers_touched(k.body) if u not in local]


def emit(p: Program, offsets: dict[str, int], dtype: str = "f32", triple: str = "",
         data_layout: str = "", checks: bool = False) -> str:
    """LLVM IR text for program p. offsets: element offset of each temp in the workspace;
    checks: test every index at run time (the debug build)."""
    m = ir.Module(name=p.name)
    m.triple = triple
    m.data_layout = data_layout
    ft = FLOAT[dtype]
    shared: dict[tuple, ir.Function] = {}
    kernel_fns = []
    for k in p.kernels:
        key, used = code_key(p, k, checks), kernel_args(p, k)
        if key in shared:
            _call_of(m, kernel_symbol(p.name, k.name), used, shared[key])
        else:
            shared[key] = _kernel_function(m, p, k, ft, checks)
        kernel_fns.append((shared[key], used))
    _entry_function(m, p, offsets, ft, kernel_fns)
    set_threads_function(m, symbol(p.name))
    stop_threads_function(m, symbol(p.name))
    # llvmlite's builder knows no string attributes: without this LLVM uses 256-bit vectors
    return re.sub(r"^(define .*)$", r'\1 "prefer-vector-width"="512"', str(m), flags=re.M)


def code_key(p: Program, k: Kernel, checks: bool = False) -> tuple:
    """All that a kernel's code depends on: its body with the buffers it takes renamed by
    position (a0, a1, ...) and its register tiles likewise (l0, ...), and their shapes. The
    debug build names the kernel in its messages, so there the name counts too."""
    local = {b.name for b in p.buffers if b.kind in PRIVATE}
    shapes = {b.name: b.shape for b in p.buffers}
    touched = buffers_touched(k.body)
    args = [u for u in touched if u not in local]
    tiles = [u for u in touched if u in local]
    names = {u: f"a{i}" for i, u in enumerate(args)} | {u: f"l{i}" for i, u in enumerate(tiles)}
    return (rename_buffers(k.body, names), tuple(shapes[u] for u in touched), k.name if checks else None)


def _call_of(m: ir.Module, name: str, used: list[str], fn: ir.Function) -> None:
    """A kernel's own symbol `name`, taking its buffers `used`, as a function that calls fn
    (the kernel it shares its code with)."""
    own = ir.Function(m, fn.function_type, name)
    _attrs(own)
    for a, buf in zip(own.args, used):
        a.name = symbol(buf)
    b = ir.IRBuilder(own.append_basic_block("entry"))
    b.call(fn, list(own.args))
    b.ret_void()


def _kernel_function(m: ir.Module, p: Program, k: Kernel, ft, checks: bool) -> ir.Function:
    """fn(buffers...) running kernel k."""
    used = kernel_args(p, k)
    ptr = ft.as_pointer()
    shapes = {b.name: b.shape for b in p.buffers}
    locals_ = {b.name for b in p.buffers if b.kind in PRIVATE}
    # external, so `dnnc bench` can time each kernel on its own
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ptr] * len(used)), kernel_symbol(p.name, k.name))
    _attrs(fn)
    fn.attributes.add("noinline")
    for a, name in zip(fn.args, used):
        a.name = symbol(name)
    tiles = [name for name in buffers_touched(k.body) if name in locals_]
    em = KernelEmitter(m, fn, dict(zip(used, fn.args)), shapes, ft, tiles,
                       k.name if checks else None, used)
    for name in tiles:
        em.local(name)
    em.run(k.body)
    return fn


def _entry_function(m: ir.Module, p: Program, offsets: dict[str, int], ft, kernel_fns) -> None:
    """NAME_forward(args..., workspace): the temporaries placed in the workspace, then each
    kernel called in order."""
    ptr = ft.as_pointer()
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


def _attrs(fn: ir.Function) -> None:
    fn.attributes.add("nounwind")
    for a in fn.args:
        a.add_attribute("noalias")
