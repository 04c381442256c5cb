"""The interface every target implements (see the package's docstring)."""
from __future__ import annotations

from ..ir import Program
from ..schedule.machine import Machine
from ..te.stmt import TStmt


class Target:
    """A machine dnnc compiles for. Subclasses implement every method; all are pure except
    `load`, which returns a program bound to buffers."""

    name: str
    machine: Machine
    fuses_pools = True  # a max pool computed straight from the convolution before it (te/pool.py)

    def default_schedule(self, stmts: list[TStmt], shapes: dict, dtype: str) -> list:
        """Tile and Pack steps for the statements of one program."""
        raise NotImplementedError

    def pack_tile(self, tensor: str, shape: tuple[int, ...], dtype: str):
        """The Tile step of a packed copy (a permuted copy of a tensor, made by a Pack step), or
        None for a plain nest."""
        raise NotImplementedError

    def default_algorithms(self, groups, shapes: dict, training: bool) -> list:
        """Algorithm steps (im2col, Winograd) for the convolutions where they pay."""
        raise NotImplementedError

    def bind(self, program: Program) -> Program:
        """The loop-nest program with its loops bound to the machine's parallel hardware."""
        return program

    def arrays(self, initial=None) -> dict:
        """The dict of host arrays by name that this target's loaded programs run on."""
        return dict(initial or {})

    def packed(self, arrays: dict, names: list[str], flat):
        """`names` in `arrays`, views of the one host array `flat`, as one unit to exchange
        with other processes: its `pull()` makes `flat` hold what the programs last wrote,
        its `push()` gives them what the host wrote there. Call before loading programs."""
        return OnHost()

    def for_rank(self, local: int) -> "Target":
        """The target of the `local`-th process of a distributed run on one host."""
        return self

    def emit(self, program: Program, offsets: dict[str, int], dtype: str, checks: bool) -> str:
        """LLVM IR text of a planned program; its entry point is `entry(program.name)`."""
        raise NotImplementedError

    def entry(self, program_name: str) -> str:
        raise NotImplementedError

    def kernel_symbol(self, program_name: str, kernel: str) -> str:
        """The symbol of one kernel in the emitted code (for `dnnc ir --layer` and `dnnc bench`)."""
        raise NotImplementedError

    def compile(self, llvm_ir: str) -> bytes:
        """Machine code (an object file) for emitted LLVM IR."""
        raise NotImplementedError

    def optimized_ir(self, llvm_ir: str) -> str:
        """The LLVM IR after the target's optimization pipeline (printed, not run)."""
        raise NotImplementedError

    def assembly(self, llvm_ir: str) -> str:
        raise NotImplementedError

    def load(self, obj: bytes | None, llvm_ir: str | None, entry: str, args: list, workspace: int,
             arrays: dict, dtype: str, threads: int):
        """A runnable program bound to `arrays` (from object code, or from the IR text when
        the object is not at hand)."""
        raise NotImplementedError

    def kernel(self, loaded, program: Program, kernel, offsets: dict[str, int]):
        """One kernel of a loaded program as a call of no arguments (None where it was inlined)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Target({self.name})"


class OnHost:
    """Buffers the programs read and write where the host does: nothing to move."""

    def pull(self) -> None:
        pass

    def push(self) -> None:
        pass
