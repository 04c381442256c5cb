"""NVPTX LLVM IR modules to PTX: the one step of runtime/ptx.py that takes long, run in
processes of their own so that a program's modules compile side by side (LLVM serves one
call at a time in a process). This file imports nothing of dnnc: a worker starts as
`python ptx_worker.py`, reads {"arch", "features", "modules": [text, ...]} as JSON on its
standard input and writes the list of their PTX texts as JSON on its standard output.
"""
from __future__ import annotations

import json
import sys
from functools import lru_cache

import llvmlite.binding as llvm

SPEED = 2  # LLVM's -O2, as on the CPU


@lru_cache(maxsize=8)
def target_machine(triple: str, arch: str, features: str):
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return llvm.Target.from_triple(triple).create_target_machine(cpu=arch, features=features, opt=3)


def parse(text: str):
    mod = llvm.parse_assembly(text)
    mod.verify()
    return mod


def optimize(mod, tm):
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=SPEED))
    pb.getModulePassManager().run(mod, pb)
    return mod


def assemble(text: str, arch: str, features: str) -> str:
    """The PTX of one module's text."""
    mod = parse(text)
    tm = target_machine(mod.triple, arch, features)
    return tm.emit_assembly(optimize(mod, tm))


def main() -> int:
    job = json.load(sys.stdin)
    json.dump([assemble(t, job["arch"], job["features"]) for t in job["modules"]], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
