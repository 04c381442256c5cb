"""Kernels from named groups of statements: each statement naive or tiled as its schedule says."""
from __future__ import annotations

from ..base.errors import DnncError
from ..ir import Buffer, Kernel, Program, Stmt
from ..te.stmt import TStmt
from .nest import lower_stmt
from .tile import _argmax_partner, lower_tile


KIND_ORDER = {"input": 0, "label": 1, "hyper": 2, "param": 3, "state": 4, "output": 5, "grad": 6, "temp": 7,
              "local": 8}


def lower_groups(name: str, buffers: list[Buffer], groups: list[tuple[str, list[TStmt]]],
                 schedule: bool | list = True, dtype: str = "f32", overrides: list = ()) -> Program:
    """One kernel per named group of statements, over the given buffers (args first).

    With `schedule` (True: the default schedule; or the list of steps to apply) statements
    are packed and tiled as the steps say; with False each is the naive nest of lower_stmt.
    """
    from ..te.conv import Algorithm
    from ..schedule.steps import Tile, apply_packs, default_schedule, merge, schedulable

    shapes = {b.name: b.shape for b in buffers}
    buffers = list(buffers)
    tiles: dict[tuple[str, int], Tile] = {}
    steps: list = []
    if schedule is not False:
        flat = [st for _, stmts in groups for st in stmts]
        steps = default_schedule(flat, shapes, dtype) if schedule is True else list(schedule)
        steps = merge(steps, list(overrides))
        tiles = {s.key: s for s in steps if isinstance(s, Tile)}
        new_groups = []
        writers: dict[str, int] = {}
        for kname, stmts in groups:
            stmts, temps = apply_packs(stmts, steps, shapes, writers)
            for t, s in temps:
                shapes[t] = s
                buffers.append(Buffer(t, s, "temp", dtype))
                if (t, 0) not in tiles:
                    tiles[t, 0] = Tile(t, f"p{len(s) - 1}", 16 if dtype == "f32" else 8)
            new_groups.append((kname, stmts))
        groups = new_groups
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
    written = {st.tensor for _, stmts in groups for st in stmts}
    for o in overrides:
        if o.tensor not in written and not isinstance(o, Algorithm):
            raise DnncError(f"schedule step {o}: no statement writes {o.tensor} (statements write: "
                            f"{', '.join(sorted(written))})")
    buffers = sorted(buffers, key=lambda b: KIND_ORDER[b.kind])
    return Program(name, tuple(buffers), tuple(kernels), tuple(steps) if schedule is not False else ())
