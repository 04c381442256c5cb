"""A compiled program bound to buffers: one native call runs it.

Buffers passed as arguments (inputs, parameters, outputs, gradients, optimizer state) live
in a dict of numpy arrays that several executables of one model share, so the forward pass
and the training step see the same parameters. Temporaries live in the executable's own
workspace, laid out by the memory planner.

With a cache key, machine code comes from the disk cache when it holds the key, and the
program is then lowered only if someone asks to see it.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..codegen.llvm import emit, symbol
from ..ir import Program
from ..ir.passes import run as run_passes
from . import cache, jit
from ..ir.memory import plan

NP_DTYPE = {"f32": np.float32, "f64": np.float64}


class Executable:
    def __init__(self, program: Program | Callable[[], Program], arrays: dict[str, np.ndarray],
                 dtype: str = "f32", key: str | None = None, threads: int = 1, checks: bool = False):
        t0 = time.perf_counter()
        self._build = program if callable(program) else (lambda: program)
        self._lowered = None
        self.dtype = dtype
        self.checks = checks
        hit = cache.load(key) if key else None
        if hit is not None:
            meta, obj = hit
            self.entry, ws = meta["entry"], meta["workspace"]
            self.args = [(n, tuple(s), k) for n, s, k in meta["args"]]
            self.compiled = jit.jit_object(obj, self.entry, len(self.args) + 1)
            self.seconds = {"front": 0.0, "llvm": time.perf_counter() - t0, "cached": True}
        else:
            prog = self.program
            self.offsets, ws = plan(prog)
            self._llvm_ir = emit(prog, self.offsets, dtype, checks=checks)
            t1 = time.perf_counter()
            self.entry = symbol(prog.name) + "_forward"
            self.args = [(b.name, b.shape, b.kind) for b in prog.args]
            self.compiled, obj = jit.jit(self._llvm_ir, self.entry, len(self.args) + 1)
            self.seconds = {"front": t1 - t0, "llvm": time.perf_counter() - t1, "cached": False}
            if key and obj:
                cache.store(key, {"entry": self.entry, "workspace": ws,
                                  "args": [[n, list(s), k] for n, s, k in self.args]}, obj)
        npd = NP_DTYPE[dtype]
        for name, shape, _ in self.args:
            if name not in arrays:
                arrays[name] = np.zeros(shape, npd)
            elif arrays[name].shape != shape:
                raise AssertionError(f"{name}: {arrays[name].shape} != {shape}")
        self.arrays = arrays
        self.workspace = np.zeros(max(ws, 1), npd)
        self.workspace_bytes = ws * np.dtype(npd).itemsize
        self._addrs = [arrays[n].ctypes.data for n, _, _ in self.args] + [self.workspace.ctypes.data]
        self.set_threads(threads)

    @property
    def stages(self) -> list[tuple[str, Program]]:
        """The program after lowering and after each pass (lowered again if it came from the cache)."""
        if self._lowered is None:
            self._lowered = run_passes(self._build())
        return self._lowered

    @property
    def program(self) -> Program:
        return self.stages[-1][1]

    @property
    def llvm_ir(self) -> str:
        if not hasattr(self, "_llvm_ir"):
            self._llvm_ir = emit(self.program, plan(self.program)[0], self.dtype, checks=self.checks)
        return self._llvm_ir

    def set_threads(self, n: int) -> None:
        """How many threads the program's parallel loops use (results do not depend on it)."""
        import ctypes
        import weakref

        stem = self.entry[: -len("_forward")]
        engine = self.compiled.engine
        ctypes.CFUNCTYPE(None, ctypes.c_int64)(engine.get_function_address(stem + "_set_threads"))(max(int(n), 1))
        self.threads = max(int(n), 1)
        if not hasattr(self, "_stop"):  # the pool's workers end before their code is freed
            stop = ctypes.CFUNCTYPE(None)(engine.get_function_address(stem + "_stop_threads"))
            self._stop = weakref.finalize(self.compiled, stop_pool, stop, engine)

    def run(self) -> None:
        self.compiled.fn(*self._addrs)


def stop_pool(stop, engine) -> None:
    """End a program's worker threads; `engine` (the code) is held until they are gone."""
    stop()
