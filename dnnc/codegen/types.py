"""LLVM types and declarations shared by the code generator's modules."""
from __future__ import annotations

from functools import lru_cache

from llvmlite import ir

I64 = ir.IntType(64)
I32 = ir.IntType(32)
I1 = ir.IntType(1)
FLOAT = {"f32": ir.FloatType(), "f64": ir.DoubleType()}
FAST = ("reassoc", "contract")  # float flags that let LLVM fuse multiply-adds and reorder sums


@lru_cache(maxsize=4096)
def vconst(t: ir.VectorType, values: tuple) -> ir.Constant:
    """The vector constant of t with these lane values, made once: llvmlite wraps (and then
    formats) every lane of a new constant, which made constants a third of code generation."""
    return ir.Constant(t, list(values))


def is_vec(v: ir.Value) -> bool:
    return isinstance(v.type, ir.VectorType)


def vname(t: ir.VectorType) -> str:
    """The suffix of an intrinsic over a float vector type: v16f32, v8f64."""
    return f"v{t.count}{'f32' if isinstance(t.element, ir.FloatType) else 'f64'}"


def intrinsic(m: ir.Module, name: str, ret, args) -> ir.Function:
    """The declaration of a function of m, added on first use."""
    if name in m.globals:
        return m.globals[name]
    return ir.Function(m, ir.FunctionType(ret, args), name)
