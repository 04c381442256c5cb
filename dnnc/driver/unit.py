"""What the driver compiles (a Job) and the program on its way down the pipeline (a Unit)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..front.graph import Graph
from ..ir import Buffer, Program
from ..schedule.steps import Schedule
from ..target.base import Target
from ..te.conv import Algorithm
from ..te.optim import Optimizer
from ..te.stmt import TStmt

KINDS = ("forward", "prepare", "loss", "grad", "train", "update", "statements")
TRAINING = ("grad", "train")  # programs with a backward pass


@dataclass(frozen=True, eq=False)
class Job:
    """One program of a graph for a target.

    kind: `forward`; `prepare` (the forward pass's weight-only statements, run when the
    weights change); `loss` (forward and loss); `grad` (loss and gradients); `train` (one
    step with `optimizer`); `update` (the optimizer's step alone, from `.grad` buffers).
    `statements` (a program of statements given directly). `sparse` names dense-layer
    weights read in ELL form with R entries per row."""

    graph: Graph | None  # None for `statements`
    target: Target
    kind: str = "forward"
    optimizer: Optimizer | None = None
    dtype: str = "f32"
    schedule: Schedule = Schedule()
    sparse: tuple[tuple[str, int], ...] = ()
    checks: bool = False
    outputs: tuple[str, ...] | None = None  # a forward program's outputs (default: the graph's)
    name: str | None = None
    given: "Unit | None" = None  # for `statements`: the unit the pipeline starts from
    start: str | None = None  # ... and the stage it starts at
    hoist: bool = True  # a forward pass leaves its weight-only statements to `prepare`

    @property
    def with_loss(self) -> bool:
        return self.kind not in ("forward", "prepare")

    @property
    def training(self) -> bool:
        return self.kind in TRAINING

    @property
    def program_name(self) -> str:
        suffix = {"update": "_update", "prepare": "_prepare"}.get(self.kind, "")
        return self.name or self.graph.name + suffix


Groups = list[tuple[str, list[TStmt]]]


@dataclass(frozen=True, eq=False)
class Unit:
    """A program between two stages. Each stage returns a new Unit with what it made; none
    changes a value it was given (the dicts and lists are copied before they change)."""

    job: Job
    groups: Groups = field(default_factory=list)  # named groups of statements: one kernel each
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # buffer kinds by tensor (before `buffers`)
    finals: frozenset = frozenset()  # the program's outputs
    steps: tuple = ()  # the user's steps, then (after `algorithms`) the algorithm steps chosen
    owner: dict[str, str] = field(default_factory=dict)  # forward tensor -> its group (for backward)
    forward: tuple[TStmt, ...] = ()  # the normalized forward statements the backward differentiates
    buffers: tuple[Buffer, ...] = ()
    schedule: tuple = ()  # the resolved schedule: default and user steps, merged
    tiles: dict = field(default_factory=dict)  # (tensor, nth writer) -> Tile
    program: Program | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    workspace: int = 0
    llvm_ir: str | None = None

    def but(self, **changes) -> "Unit":
        return replace(self, **changes)

    @property
    def keep(self) -> set[str]:
        """Tensors the fusions leave alone: the outputs, and every tensor a Tile or Naive step
        names (so the step applies to its own loop nest)."""
        return set(self.finals) | {s.tensor for s in self.steps if not isinstance(s, Algorithm)}

