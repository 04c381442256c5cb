"""The host CPU: LLVM's native target, AVX-512 vectors, the thread pool, MCJIT loading."""
from __future__ import annotations

import os

from ..codegen.llvm import emit, kernel_args, kernel_symbol, symbol
from ..ir import Program
from ..runtime import jit
from ..runtime.executable import Executable
from ..schedule.default import default_schedule
from ..schedule.machine import Machine
from ..schedule.steps import Tile
from ..te.conv import default_algorithms
from .base import Target


class CpuTarget(Target):
    name = "cpu"
    machine = Machine("cpu", vector_bits=512, l2_bytes=1 << 20, cores=os.cpu_count() or 1,
                      parallel_flops=2_000_000)  # below 2 MFLOP starting threads costs more (~30 us)

    def default_schedule(self, stmts, shapes, dtype):
        return default_schedule(stmts, shapes, self.machine, dtype)

    def pack_tile(self, tensor, shape, dtype):
        return Tile(tensor, f"p{len(shape) - 1}", self.machine.lanes(dtype))

    def default_algorithms(self, groups, shapes, training):
        # measured: in a training step the backward through Winograd's transforms ate its gain
        return [] if training else default_algorithms(groups, shapes)

    def emit(self, program: Program, offsets, dtype, checks):
        return emit(program, offsets, dtype, checks=checks)

    def entry(self, program_name):
        return symbol(program_name) + "_forward"

    def kernel_symbol(self, program_name, kernel):
        return kernel_symbol(program_name, kernel)

    def compile(self, llvm_ir):
        return jit.object_code(llvm_ir)

    def optimized_ir(self, llvm_ir):
        return jit.optimized_ir(llvm_ir)

    def assembly(self, llvm_ir):
        return jit.assembly(llvm_ir)

    def load(self, obj, llvm_ir, entry, args, workspace, arrays, dtype, threads):
        return Executable(obj, llvm_ir, entry, args, workspace, arrays, dtype, threads)

    def kernel(self, loaded, program, kernel, offsets):
        return loaded.kernel(kernel_symbol(program.name, kernel.name), kernel_args(program, kernel), offsets)


CPU = CpuTarget()
