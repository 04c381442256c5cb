"""PTX from NVPTX LLVM IR with llvmlite's NVPTX backend, and the launch plan beside it.

No CUDA toolkit is involved: LLVM optimizes the module (O2, as on the CPU) and prints PTX,
which the driver compiles for the device when it loads it. What a program's `compile` gives
(its "object", cached like the CPU's machine code) is a small JSON document: the PTX text
of each module, the launches of codegen/nvptx.py's launch lines, and whether it is the
debug build. A program's modules are compiled side by side, one process a core.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

from ..codegen.nvptx import TRIPLE
from . import ptx_worker

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


def target_machine(arch: str = ARCH):
    return ptx_worker.target_machine(TRIPLE, arch, PTX_FEATURES)


def data_layout(arch: str = ARCH) -> str:
    return str(target_machine(arch).target_data)


def optimized_ir(text: str, arch: str = ARCH) -> str:
    tm = target_machine(arch)
    return "\n".join(str(ptx_worker.optimize(ptx_worker.parse(t), tm)) for t in modules(text))


def modules(text: str) -> list[str]:
    """The texts of the modules of emitted IR (codegen/nvptx.py), each from its `; ModuleID`."""
    starts = [m.start() for m in re.finditer(r"^; ModuleID", text, re.M)] or [0]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def parts(text: str, arch: str = ARCH) -> list[str]:
    """The PTX of each module of NVPTX LLVM IR text: side by side, in up to one process a
    core, where there are several modules and cores."""
    texts = modules(text)
    n = min(len(texts), WORKERS)
    if n == 1:
        return [ptx_worker.assemble(t, arch, PTX_FEATURES) for t in texts]
    shares = [texts[k::n] for k in range(n)]  # a module's place: k + n * (its place in share k)
    workers = []
    for share in shares:
        with tempfile.TemporaryFile("w+") as job:
            json.dump({"arch": arch, "features": PTX_FEATURES, "modules": share}, job)
            job.seek(0)
            workers.append(subprocess.Popen([sys.executable, ptx_worker.__file__], stdin=job,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    for w in workers:
        out, err = w.communicate()
        if w.returncode != 0:
            raise RuntimeError(f"the PTX compiler process failed: {err.strip()[-2000:]}")
        done.append(json.loads(out))
    return [done[i % n][i // n] for i in range(len(texts))]


def ptx(text: str, arch: str = ARCH) -> str:
    """PTX assembly of NVPTX LLVM IR text (its modules' one after the other)."""
    return "\n".join(parts(text, arch))


WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    return json.dumps({"arch": arch, "ptx": parts(text, arch), "launches": plan, "checks": checks}).encode()


def read_object(obj: bytes) -> tuple[list[str], list[Launch], bool]:
    """The PTX of each module, the launches and whether the kernels check their indices (the
    debug build)."""
    d = json.loads(obj)
    plan = [Launch(**{**x, "args": tuple(map(tuple, x["args"]))}) for x in d["launches"]]
    return d["ptx"], plan, d.get("checks", False)
