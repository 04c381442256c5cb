"""What the dnnc command's subcommands share: loading a network and the compile flags."""
from __future__ import annotations

from pathlib import Path

from ..api import load
from ..base.errors import DnncError, UsageError
from ..base.fileio import no_such_file
from ..schedule.steps import Schedule, parse_step
from ..target import on_device


def load_network(path: str):
    if not Path(path).exists():
        raise no_such_file(path)
    return load(Path(path))


def schedule_of(args) -> Schedule:
    """The schedule the flags ask for: --schedule steps over the defaults, or --no-schedule."""
    try:
        steps = tuple(parse_step(s) for s in args.schedule)
    except DnncError as e:
        raise UsageError(f"--schedule: {e.message}") from None
    return Schedule(steps, not args.no_schedule)


def compile_options(args) -> dict:
    """Keyword arguments for Network.compile and the commands built on it."""
    try:
        target = on_device(args.target, getattr(args, "device", 0), getattr(args, "precision", "fp32"))
    except DnncError as e:
        raise UsageError(e.message) from None
    out = {"schedule": schedule_of(args), "target": target}
    if getattr(args, "threads", None):
        out["threads"] = args.threads
    return out
