"""PTX from NVPTX LLVM IR with llvmlite's NVPTX backend, and the launch plan beside it.

No CUDA toolkit is involved: LLVM optimizes the module (O2, as on the CPU) and prints PTX,
which the driver compiles for the device when it loads it. What a program's `compile` gives
(its "object", cached like the CPU's machine code) is a small JSON document: the PTX text
and the launches of codegen/nvptx.py's launch lines, and whether it is the debug build.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache

import llvmlite.binding as llvm

from ..codegen.nvptx import TRIPLE

ARCH = "sm_90"  # the lent H200 (Hopper); the driver runs this PTX on its own and later GPUs
PTX_FEATURES = "+ptx80"


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the kernel's symbol, the entry it runs, its threads (the grid's
    points) and buffer arguments, a temporary given as its offset in the workspace (elements)."""

    symbol: str
    entry: str
    points: int
    args: tuple[tuple[str, int | None], ...]


@lru_cache(maxsize=4)
def target_machine(arch: str = ARCH):
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return llvm.Target.from_triple(TRIPLE).create_target_machine(cpu=arch, features=PTX_FEATURES, opt=3)


def data_layout(arch: str = ARCH) -> str:
    return str(target_machine(arch).target_data)


def parse(text: str):
    mod = llvm.parse_assembly(text)
    mod.verify()
    return mod


def optimize(mod, arch: str = ARCH):
    pto = llvm.create_pipeline_tuning_options(speed_level=2)
    pb = llvm.create_pass_builder(target_machine(arch), pto)
    pb.getModulePassManager().run(mod, pb)
    return mod


def optimized_ir(text: str, arch: str = ARCH) -> str:
    return str(optimize(parse(text), arch))


def ptx(text: str, arch: str = ARCH) -> str:
    """PTX assembly of NVPTX LLVM IR text."""
    return target_machine(arch).emit_assembly(optimize(parse(text), arch))


def launches(text: str) -> list[Launch]:
    """The launch lines of emitted IR text, in order."""
    out = []
    for line in text.splitlines():
        if line.startswith("; launch "):
            _, _, symbol, entry, points, *args = line.split()
            out.append(Launch(symbol, entry, int(points), tuple(_arg(a) for a in args)))
    return out


def _arg(a: str) -> tuple[str, int | None]:
    name, _, offset = a.partition("@")
    return name, int(offset) if offset else None


def object_code(text: str, arch: str = ARCH) -> bytes:
    """What the loader takes: the PTX and the launch plan, as JSON."""
    plan = [asdict(x) for x in launches(text)]
    checks = "\n; checks\n" in text
    return json.dumps({"arch": arch, "ptx": ptx(text, arch), "launches": plan, "checks": checks}).encode()


def read_object(obj: bytes) -> tuple[str, list[Launch], bool]:
    """The PTX, the launches and whether the kernels check their indices (the debug build)."""
    d = json.loads(obj)
    plan = [Launch(**{**x, "args": tuple(map(tuple, x["args"]))}) for x in d["launches"]]
    return d["ptx"], plan, d.get("checks", False)
