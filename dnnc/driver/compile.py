"""The driver: a Job through the stage list, then the target's compiler and loader.

`lower` gives every stage's output (what `dnnc ir` prints); `Built` is a loaded program,
from the disk cache when it holds the job's key (the program is then lowered again only if
someone asks to see it).
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..ir import Buffer, Program
from ..runtime import cache, jit
from ..target.base import Target
from . import stages as pipeline
from .stages import Stage
from .unit import Job, Unit


def stages_of(job: Job) -> list[Stage]:
    """The stages the job runs, in the list's order: those of its kind of program, from its
    start (the first stage, unless the job starts from a given unit)."""
    out, started = [], job.start is None
    for stage in pipeline.STAGES:
        started = started or stage.name == job.start
        if started and job.kind in stage.kinds:
            out.append(stage)
    return out


def _first(job: Job) -> Unit:
    return Unit(job) if job.given is None else job.given.but(job=job)


def lower(job: Job, upto: str | None = None) -> list[tuple[str, Unit]]:
    """The unit after each stage that belongs to the job's kind of program, up to `upto`."""
    u, out = _first(job), []
    for stage in stages_of(job):
        u = stage.run(u)
        out.append((stage.name, u))
        if stage.name == upto:
            break
    return out


def profile(job: Job) -> list[tuple[str, float]]:
    """Seconds in each stage of the job, then in loading (the target's compiler making machine
    code from the LLVM IR, as a model's first compile does), measured once: what
    `dnnc bench --compile-profile` prints. The process's memo of machine code is bypassed. A
    forward pass's prepare program follows, its rows named `prepare: STAGE`."""
    u, out = _first(job), []
    for stage in stages_of(job):
        t0 = time.perf_counter()
        u = stage.run(u)
        out.append((stage.name, time.perf_counter() - t0))
    args = [(b.name, b.shape, b.kind) for b in u.program.args]
    t0 = time.perf_counter()
    with jit.fresh():
        job.target.load(None, u.llvm_ir, job.target.entry(u.program.name), args, u.workspace, {}, job.dtype, 1)
    out.append(("load", time.perf_counter() - t0))
    if has_prepare(job, args):  # its prepare program, as Built makes it
        out += [(f"prepare: {name}", t) for name, t in profile(replace(job, kind="prepare"))]
    return out


def run(job: Job) -> Unit:
    """The job through every stage: its program planned and its LLVM IR emitted."""
    return lower(job)[-1][1]


def from_statements(name: str, buffers: list[Buffer], groups, target: Target, dtype: str = "f32") -> Job:
    """A job for statements given directly, not a graph's (a parameter server's shard update):
    it starts at the `schedule` stage."""
    return Job(None, target, "statements", dtype=dtype, name=name, start="schedule",
               given=Unit(None, groups=list(groups), buffers=tuple(buffers), shapes={b.name: b.shape for b in buffers}))


def from_program(program: Program, target: Target, dtype: str = "f32", checks: bool = False) -> Job:
    """A job for a program already lowered to loop nests (or built by hand): it starts at
    the loop-IR stages after `loops`."""
    after = pipeline.loop_passes()[0].name
    return Job(None, target, "statements", dtype=dtype, checks=checks, name=program.name, start=after,
               given=Unit(None, program=pipeline.verify(program)))


def loop_stages(program: Program, upto: str | None = None) -> list[tuple[str, Program]]:
    """A loop-nest program (lowered, or built by hand) after `loops` and after each loop-IR
    stage that follows it, verified at every one."""
    u = Unit(Job(None, None, "statements"), program=pipeline.verify(program))
    out = [("loops", u.program)]
    for stage in pipeline.loop_passes():
        u = stage.run(u)
        out.append((stage.name, u.program))
        if stage.name == upto:
            break
    return out


WEIGHTS_STAMP = "weights.stamp"  # a counter in the shared arrays, advanced whenever the weights change
WRITES_WEIGHTS = ("train", "update")


def has_prepare(job: Job, args) -> bool:
    """Whether a program with these (name, shape, kind) arguments needs a prepare program: a
    forward pass that reads derived buffers."""
    return job.kind == "forward" and any(k == "derived" for _, _, k in args)


def weights_changed(arrays: dict) -> None:
    """Say that the parameters (or running statistics) in `arrays` changed, so a forward pass
    recomputes its weight-only results before its next run."""
    arrays.setdefault(WEIGHTS_STAMP, np.zeros(1, np.int64))[0] += 1


class Built:
    """A compiled program loaded for a target: `run()` runs it on the shared arrays.

    A forward pass with weight-only statements (te/weights.py) also builds its `prepare`
    program and runs it first whenever the arrays' weights stamp moved since it last did; a
    training step or update advances the stamp."""

    def __init__(self, job: Job, arrays: dict, threads: int = 1, key: str | None = None):
        t0 = time.perf_counter()
        self.job = job
        self.stamp = arrays.setdefault(WEIGHTS_STAMP, np.zeros(1, np.int64))
        self.prepared = -1
        self._unit: Unit | None = None
        self._stages: list | None = None
        target = job.target
        hit = cache.load(key) if key else None
        if hit is not None:
            meta, obj = hit
            self.exe = target.load(obj, None, meta["entry"], meta["args"], meta["workspace"], arrays,
                                   job.dtype, threads)
            self.seconds = {"front": 0.0, "llvm": time.perf_counter() - t0, "cached": True}
        else:
            u = self._unit = run(job)
            t1 = time.perf_counter()
            args = [(b.name, b.shape, b.kind) for b in u.program.args]
            self.exe = target.load(None, u.llvm_ir, target.entry(u.program.name), args, u.workspace, arrays,
                                   job.dtype, threads)
            self.seconds = {"front": t1 - t0, "llvm": time.perf_counter() - t1, "cached": False}
            if key and self.exe.obj:
                cache.store(key, {"entry": self.exe.entry, "workspace": u.workspace,
                                  "args": [[n, list(s), k] for n, s, k in args]}, self.exe.obj)
        self.prepare: Built | None = None
        if has_prepare(job, self.exe.args):
            self.prepare = Built(replace(job, kind="prepare"), arrays, threads,
                                 cache.key(of=key, part="prepare") if key else None)
            self.seconds = {k: v + self.prepare.seconds.get(k, 0) if k != "cached" else v
                            for k, v in self.seconds.items()}

    @property
    def unit(self) -> Unit:
        if self._unit is None:
            self._unit = run(self.job)
        return self._unit

    @property
    def stages(self):
        """The loop-nest program after each loop-IR stage (lowered again, once, on first use)."""
        if self._stages is None:
            units = lower(self.job)
            self._unit = units[-1][1]
            self._stages = [(name, u.program) for name, u in units if name in pipeline.loop_stage_names()]
        return self._stages

    @property
    def program(self):
        return self.unit.program

    @property
    def llvm_ir(self) -> str:
        return self.unit.llvm_ir

    def set_threads(self, n: int) -> None:
        self.exe.set_threads(n)
        if self.prepare is not None:
            self.prepare.set_threads(n)

    def run(self) -> None:
        if self.prepare is not None and self.prepared != self.stamp[0]:
            self.prepare.run()
            self.prepared = int(self.stamp[0])
        self.exe.run()
        if self.job.kind in WRITES_WEIGHTS:
            self.stamp[0] += 1
