"""The reference interpreter: runs any stage of the loop-nest IR on numpy arrays.

Slow (one Python step per scalar operation) and simple on purpose: it is the oracle that
every pass and the JIT are checked against, on small shapes. Arithmetic is float64; each
store rounds to the buffer's dtype, like the compiled code.
"""
from __future__ import annotations

import math

import numpy as np

from ..te.expr import Binary, Const, Expr, Load, Scalar, Select, Unary, Var
from . import If, Let, Loop, Mma, Program, Set, Store

DTYPES = {"f32": np.float32, "f64": np.float64}


def run(p: Program, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute p. `arrays` supplies inputs, labels and params; returns every buffer."""
    bufs: dict[str, np.ndarray] = {}
    for b in p.buffers:
        dt = DTYPES[b.dtype]
        if b.name in arrays:
            bufs[b.name] = np.array(arrays[b.name], dtype=dt).reshape(b.shape)
        else:
            bufs[b.name] = np.full(b.shape, np.nan, dtype=dt)  # catches reads of unwritten data
    for k in p.kernels:
        _block(k.body, {}, {}, bufs)
    return bufs


def _block(stmts, env, regs, bufs):
    for s in stmts:
        if isinstance(s, Loop):
            for v in range(s.extent):
                env[s.var] = v
                _block(s.body, env, regs, bufs)
            del env[s.var]
        elif isinstance(s, If):
            _block(s.then if _eval(s.cond, env, regs, bufs) else s.orelse, env, regs, bufs)
        elif isinstance(s, Store):
            idx = tuple(int(_eval(i, env, regs, bufs)) for i in s.index)
            bufs[s.buffer][idx] = _eval(s.value, env, regs, bufs)
        elif isinstance(s, (Let, Set)):
            regs[s.name] = float(_eval(s.value, env, regs, bufs))
        elif isinstance(s, Mma):
            _block(s.expand(), env, regs, bufs)
        else:
            raise TypeError(s)


_UN = {"neg": lambda a: -a, "exp": math.exp, "log": lambda a: math.log(a) if a > 0 else (-math.inf if a == 0 else math.nan),
       "sqrt": math.sqrt, "tanh": math.tanh, "abs": abs, "not": lambda a: not a,
       "sigmoid": lambda a: 1.0 / (1.0 + math.exp(-a)) if a > -700 else 0.0, "index": lambda a: int(a),
       "tf32": lambda a: _rounded(a, lambda i: i + 0x1000, 0xFFFFE000),
       "bf16": lambda a: _rounded(a, lambda i: i + 0x7FFF + ((i >> 16) & 1), 0xFFFF0000)}


def _rounded(a: float, carry, mask: int) -> float:
    """a as float32, its bits rounded (carry) and cut (mask) to a shorter mantissa."""
    with np.errstate(over="ignore"):
        bits = int(np.float32(a).view(np.uint32))
    return float(np.uint32((carry(bits) & mask) & 0xFFFFFFFF).view(np.float32))


def _eval(e: Expr, env, regs, bufs):
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Var):
        return env[e.name]
    if isinstance(e, Scalar):
        return regs[e.name]
    if isinstance(e, Load):
        idx = tuple(int(_eval(i, env, regs, bufs)) for i in e.index)
        if any(i < 0 for i in idx):
            raise IndexError(f"{e.tensor}{list(idx)}")
        return float(bufs[e.tensor][idx])
    if isinstance(e, Select):
        return _eval(e.a if _eval(e.cond, env, regs, bufs) else e.b, env, regs, bufs)
    if isinstance(e, Unary):
        return _UN[e.op](_eval(e.a, env, regs, bufs))
    if isinstance(e, Binary):
        a = _eval(e.a, env, regs, bufs)
        if e.op == "and":
            return a and _eval(e.b, env, regs, bufs)
        if e.op == "or":
            return a or _eval(e.b, env, regs, bufs)
        b = _eval(e.b, env, regs, bufs)
        op = e.op
        if op == "uniform":
            return uniform(int(a), int(b))
        if op == "/":
            return a // b if isinstance(a, int) and isinstance(b, int) else a / b
        if op == "max":  # like the compiled code: the first operand unless the second is greater
            return b if b > a else a
        if op == "min":
            return b if b < a else a
        return _BIN[op](a, b)
    raise TypeError(e)


_BIN = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "%": lambda a, b: a % b,
        "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


M64 = (1 << 64) - 1


def uniform(seed: int, index: int) -> float:
    """The generated code's random numbers: splitmix64, top 24 bits, in [0, 1)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return (z >> 40) / float(1 << 24)
