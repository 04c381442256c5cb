"""A loaded program bound to buffers: one native call runs it.

Buffers passed as arguments (inputs, parameters, outputs, gradients, optimizer state) live
in a dict of numpy arrays that several executables of one model share, so the forward pass
and the training step see the same parameters. Temporaries live in the executable's own
workspace, laid out by the memory planner. This module loads and runs; the driver compiles.
"""
from __future__ import annotations

import ctypes
import functools
import weakref

import numpy as np

from . import jit

from ..base.dtypes import NP_DTYPE


class Executable:
    def __init__(self, obj: bytes | None, llvm_ir: str | None, entry: str, args: list, workspace: int,
                 arrays: dict[str, np.ndarray], dtype: str = "f32", threads: int = 1):
        """Load `obj` (object code), or JIT-compile `llvm_ir` when no object is given; `args`
        are (name, shape, kind) in the entry point's order, `workspace` its size in elements."""
        self.entry, self.args, self.dtype = entry, [(n, tuple(s), k) for n, s, k in args], dtype
        if obj is not None:
            self.compiled, self.obj = jit.jit_object(obj, entry, len(self.args) + 1), obj
        else:
            self.compiled, self.obj = jit.jit(llvm_ir, entry, len(self.args) + 1)
        npd = NP_DTYPE[dtype]
        for name, shape, _ in self.args:
            if name not in arrays:
                arrays[name] = np.zeros(shape, npd)
            elif arrays[name].shape != shape:
                raise AssertionError(f"{name}: {arrays[name].shape} != {shape}")
        self.arrays = arrays
        self.workspace = np.zeros(max(workspace, 1), npd)
        self.workspace_bytes = workspace * np.dtype(npd).itemsize
        self._addrs = [arrays[n].ctypes.data for n, _, _ in self.args] + [self.workspace.ctypes.data]
        self.set_threads(threads)

    def set_threads(self, n: int) -> None:
        """How many threads the program's parallel loops use (results do not depend on it)."""
        stem = self.entry[: -len("_forward")]
        engine = self.compiled.engine
        ctypes.CFUNCTYPE(None, ctypes.c_int64)(engine.get_function_address(stem + "_set_threads"))(max(int(n), 1))
        self.threads = max(int(n), 1)
        if not hasattr(self, "_stop"):  # the pool's workers end before their code is freed
            stop = ctypes.CFUNCTYPE(None)(engine.get_function_address(stem + "_stop_threads"))
            self._stop = weakref.finalize(self.compiled, stop_pool, stop, engine)

    def run(self) -> None:
        self.compiled.fn(*self._addrs)

    def kernel(self, symbol: str, buffers: list[str], offsets: dict[str, int]):
        """One kernel as a call of no arguments on this program's buffers (for timing it
        alone), or None where it was inlined."""
        addr = self.compiled.engine.get_function_address(symbol)
        if not addr:
            return None
        item = self.workspace.itemsize
        ptrs = [self.arrays[n].ctypes.data if n in self.arrays else self.workspace.ctypes.data + offsets[n] * item
                for n in buffers]
        return functools.partial(ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * len(ptrs)))(addr), *ptrs)


def stop_pool(stop, engine) -> None:
    """End a program's worker threads; `engine` (the code) is held until they are gone."""
    stop()
