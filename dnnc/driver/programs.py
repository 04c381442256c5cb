"""The programs a network compiles to, each the driver's stage list run for one kind of job.

Each is one Program of kernels (one per layer and stage), so one native call does the
whole job and the memory planner shares storage across all of it by liveness. These
functions return the program as lowered, before the loop-IR passes (driver.compile's
loop_stages runs them); `schedule` is a Schedule, or True (the defaults) or False (plain nests).
"""
from __future__ import annotations

from ..front.graph import Graph
from ..ir import Program
from ..schedule.steps import Schedule, as_schedule
from ..target import get as get_target
from ..te.optim import Optimizer
from .compile import lower
from .unit import Job, Unit


def job_for(g: Graph, kind: str = "forward", optimizer: Optimizer | None = None, dtype: str = "f32",
            schedule: Schedule | bool = True, target="cpu", **more) -> Job:
    return Job(g, get_target(target), kind, optimizer, dtype, as_schedule(schedule), **more)


def program_of(job: Job) -> Program:
    """The job's loop-nest program as lowered (the `loops` stage, before the loop-IR passes)."""
    return lower(job, upto="loops")[-1][1].program


def lower_graph(g: Graph, outputs: tuple[str, ...] | None = None, with_loss: bool = False,
                name: str | None = None, dtype: str = "f32", schedule: Schedule | bool = True,
                sparse: dict[str, int] | None = None, target="cpu") -> Program:
    """The forward program of g: every layer needed for `outputs` (default g.outputs), and the
    loss with `with_loss`. `sparse` names dense-layer weights to read in ELL form. The program
    is whole: it computes its weight-only statements too (no prepare program)."""
    return program_of(job_for(g, "loss" if with_loss else "forward", None, dtype, schedule, target,
                              sparse=tuple(sorted((sparse or {}).items())), outputs=outputs, name=name,
                              hoist=False))


def training_program(g: Graph, optimizer: Optimizer | None = None, dtype: str = "f32",
                     name: str | None = None, schedule: Schedule | bool = True, target="cpu") -> Program:
    """Forward (with the values the backward needs saved), loss, backward and, with an
    optimizer, the parameter update: d loss / d param lands in `param.grad`."""
    return program_of(job_for(g, "train" if optimizer else "grad", optimizer, dtype, schedule, target, name=name))


def update_program(g: Graph, optimizer: Optimizer, dtype: str = "f32", target="cpu") -> Program:
    """The optimizer's step alone, for gradients computed elsewhere (summed over replicas or ranks)."""
    return program_of(job_for(g, "update", optimizer, dtype, True, target))


def training_groups(g: Graph, optimizer: Optimizer | None = None, dtype: str = "f32",
                    schedule: Schedule | bool = True) -> Unit:
    """The training program's statements just before scheduling (the `buffers` stage's unit)."""
    return lower(job_for(g, "train" if optimizer else "grad", optimizer, dtype, schedule), upto="buffers")[-1][1]
