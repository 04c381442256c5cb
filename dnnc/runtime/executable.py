"""A compiled program bound to buffers: one native call runs it.

Buffers passed as arguments (inputs, parameters, outputs, gradients, optimizer state) live
in a dict of numpy arrays that several executables of one model share, so the forward pass
and the training step see the same parameters. Temporaries live in the executable's own
workspace, laid out by the memory planner.
"""
from __future__ import annotations

import time

import numpy as np

from ..codegen.llvm import emit, symbol
from ..ir import Program
from ..passes import run as run_passes
from . import jit
from .memory import plan

NP_DTYPE = {"f32": np.float32, "f64": np.float64}


class Executable:
    def __init__(self, program: Program, arrays: dict[str, np.ndarray], dtype: str = "f32"):
        t0 = time.perf_counter()
        self.stages = run_passes(program)
        self.program = self.stages[-1][1]
        self.offsets, ws = plan(self.program)
        self.llvm_ir = emit(self.program, self.offsets, dtype)
        t1 = time.perf_counter()
        args = self.program.args
        self.compiled = jit.jit(self.llvm_ir, symbol(self.program.name) + "_forward", len(args) + 1)
        self.seconds = {"front": t1 - t0, "llvm": time.perf_counter() - t1}
        npd = NP_DTYPE[dtype]
        for b in args:
            if b.name not in arrays:
                arrays[b.name] = np.zeros(b.shape, npd)
            elif arrays[b.name].shape != b.shape:
                raise AssertionError(f"{b.name}: {arrays[b.name].shape} != {b.shape}")
        self.arrays = arrays
        self.workspace = np.zeros(max(ws, 1), npd)
        self.workspace_bytes = ws * np.dtype(npd).itemsize
        self._addrs = [arrays[b.name].ctypes.data for b in args] + [self.workspace.ctypes.data]

    def run(self) -> None:
        self.compiled.fn(*self._addrs)
