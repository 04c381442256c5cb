"""NVIDIA GPUs: loops bound to threads, NVPTX LLVM IR, PTX, the CUDA driver API.

The same pipeline as the CPU's up to the loop nests (with the GPU's own default schedule,
schedule/gpu.py); then `bind` splits every kernel into launches whose leading data-parallel
loops are the GPU's threads (ir/passes/grid.py), gives contractions (convolutions, dense
layers, their gradients) to blocks of threads that stage operand tiles in shared memory
(ir/passes/shared.py), splits long reductions of few threads across more
(ir/passes/rfactor.py), gives each thread a register tile of outputs where that shares loads
(ir/passes/thread_tile.py) and unrolls narrow folds so their loads overlap
(ir/passes/unroll.py); the code generator emits NVPTX LLVM IR (codegen/nvptx.py),
llvmlite's NVPTX backend prints PTX (runtime/ptx.py) and the driver loads and runs it
(runtime/cuda.py, `dnnc[cuda]`).
"""
from __future__ import annotations

from ..base.errors import DnncError
from ..codegen import nvptx
from ..codegen.symbols import kernel_symbol, symbol
from ..ir import Program
from ..ir.passes.grid import bind_grid
from ..ir.passes.rfactor import split_reductions
from ..ir.passes.shared import stage_shared
from ..ir.passes.thread_tile import tile_threads
from ..ir.passes.unroll import unroll_folds
from ..runtime import ptx
from ..runtime.cuda import CudaExecutable, DeviceArrays, device_count
from ..schedule.gpu import gpu_schedule
from ..schedule.machine import Machine
from .base import Target


PRECISIONS = ("fp32", "tf32", "bf16")  # of the contractions' operands; sums are fp32 in each


class CudaTarget(Target):
    # the machine model of the CPU's heuristics does not apply: the GPU's schedule is its own
    machine = Machine("cuda", vector_bits=32, l2_bytes=50 << 20, cores=1, parallel_flops=1 << 62)
    # a convolution fused into its pool is no longer a contraction for blocks of threads to stage
    # (ir/passes/shared.py), and training computes it twice (the window's max, then its argmax):
    # VGG-16's five pooled convolutions and their twins took 236 of a 404 ms step that way
    fuses_pools = False

    def __init__(self, ordinal: int = 0, precision: str = "fp32"):
        """GPU `ordinal`; precision tf32 or bf16 runs the contractions on its tensor cores,
        their operands rounded to that format (each sum, and all else, stays fp32)."""
        self.ordinal = ordinal
        self.precision = precision
        self.name = "cuda" if precision == "fp32" else f"cuda:{precision}"  # what the code depends on

    def arrays(self, initial=None):
        return DeviceArrays(initial or {}, ordinal=self.ordinal)

    def packed(self, arrays, names, flat):
        return arrays.pack(names, flat)

    def for_rank(self, local):
        """One GPU a process: the `local`-th after this one, round the host's GPUs (processes
        beyond their number share them)."""
        return CudaTarget((self.ordinal + local) % device_count(), self.precision)

    def default_schedule(self, stmts, shapes, dtype):
        return gpu_schedule(stmts)

    def pack_tile(self, tensor, shape, dtype):
        return None  # a permuted copy is a plain nest, bound to threads like any other

    def default_algorithms(self, groups, shapes, training):
        return []

    def bind(self, program: Program) -> Program:
        staged = stage_shared(bind_grid(program), self.precision)
        return unroll_folds(tile_threads(split_reductions(staged)))

    def emit(self, program: Program, offsets, dtype, checks):
        if dtype != "f32":
            raise DnncError(f"the cuda target computes in f32, not {dtype}")
        return nvptx.emit(program, offsets, dtype, ptx.data_layout(), checks)

    def entry(self, program_name):
        return symbol(program_name)

    def kernel_symbol(self, program_name, kernel):
        return kernel_symbol(program_name, kernel)

    def compile(self, llvm_ir):
        return ptx.object_code(llvm_ir)

    def optimized_ir(self, llvm_ir):
        return ptx.optimized_ir(llvm_ir)

    def assembly(self, llvm_ir):
        return ptx.ptx(llvm_ir)

    def load(self, obj, llvm_ir, entry, args, workspace, arrays, dtype, threads):
        return CudaExecutable(obj, llvm_ir, entry, args, workspace, arrays, dtype)

    def kernel(self, loaded, program, kernel, offsets):
        return loaded.kernel(kernel_symbol(program.name, kernel.name), [], offsets)


CUDA = CudaTarget()
