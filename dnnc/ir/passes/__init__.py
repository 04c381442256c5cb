"""The pass pipeline: one explicit list of named passes over the loop-nest IR.

Each pass is a pure function Program -> Program stating its invariant in its docstring.
The verifier runs after every pass, so a faulty pass is a compile error, never wrong code.
"""
from __future__ import annotations

from .. import Program
from ..verify import verify
from .simplify import fold_guards
from .split import split_edges

PIPELINE = [
    ("split_edges", split_edges),  # masked edges peeled off, so that
    ("fold_guards", fold_guards),  # the guards the middle iterations satisfy disappear
]


def run(p: Program, upto: str | None = None) -> list[tuple[str, Program]]:
    """The program after lowering and after each pass, verified at every stage."""
    stages = [("loops", verify(p))]
    for name, fn in PIPELINE:
        p = verify(fn(p))
        stages.append((name, p))
        if name == upto:
            break
    return stages


def names() -> list[str]:
    return [n for n, _ in PIPELINE]
