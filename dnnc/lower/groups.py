"""Kernels from named groups of statements: each statement naive or tiled as its schedule says."""
from __future__ import annotations

from ..base.errors import DnncError
from ..ir import Buffer, Kernel, Program, Stmt
from ..schedule.analysis import schedulable
from ..schedule.steps import Tile
from ..te.stmt import TStmt
from .nest import lower_stmt
from .tile import _argmax_partner, lower_tile


KIND_ORDER = {"input": 0, "label": 1, "hyper": 2, "param": 3, "state": 4, "derived": 5, "output": 6, "grad": 7,
              "temp": 8, "local": 9}


def lower_groups(name: str, buffers: list[Buffer], groups: list[tuple[str, list[TStmt]]],
                 tiles: dict[tuple[str, int], Tile], dtype: str = "f32", steps: tuple = ()) -> Program:
    """One kernel per named group of statements, over the given buffers (args first).

    Invariant: each statement is lowered as the Tile keyed by (its tensor, which writer of
    it) says, or as the naive nest of lower_stmt when no Tile names it. `steps` is the
    schedule the program records (what `dnnc ir --stage schedule` prints).
    """
    shapes = {b.name: b.shape for b in buffers}
    buffers = list(buffers)
    kernels = []
    seen: dict[str, int] = {}
    for kname, stmts in groups:
        body: list[Stmt] = []
        paired: set[int] = set()
        for k, st in enumerate(stmts):
            nth = seen.get(st.tensor, 0)
            seen[st.tensor] = nth + 1
            if k in paired:
                continue
            if (st.tensor, nth) in tiles:
                step = tiles[st.tensor, nth]
                if not schedulable(st, shapes):
                    raise DnncError(f"schedule step {step}: {st.tensor} cannot be tiled: " + (
                        "it is written at computed positions (a scatter)" if st.index is not None else
                        "its reductions nest in a way a register tile cannot hold") + "; use naive(...)")
                across = step.vector not in dict(st.axes)
                partner = _argmax_partner(st, stmts[k + 1:]) if not across else None
                if partner is not None:  # the max and its argmax in one nest
                    paired.add(k + 1)
                nest, local = lower_tile(st, shapes, step, partner)
                body += nest
                for b in local:
                    shapes[b.name] = b.shape
                    buffers.append(Buffer(b.name, b.shape, "local", dtype))
            else:
                body += lower_stmt(st, shapes)
        kernels.append(Kernel(kname, tuple(body), kname))
    buffers = sorted(buffers, key=lambda b: KIND_ORDER[b.kind])
    return Program(name, tuple(buffers), tuple(kernels), tuple(steps))
