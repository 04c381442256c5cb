"""The status line while an epoch runs: a redrawn bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time

from ..base.units import human_seconds

STATUS_SECONDS = 10.0  # the longest wait between status lines when the output is not a terminal


class Status:
    """How far the current epoch has got, on stderr: on a terminal one line rewritten in place;
    elsewhere (a log file, a pipe) a line at least every STATUS_SECONDS, so that a long epoch
    still shows it is alive. `mode` is "bar", "lines" or None (silent)."""

    def __init__(self, mode: str | None, epochs: int, steps: int, batch: int, stream=None):
        self.mode, self.epochs, self.steps, self.batch = mode, epochs, steps, batch
        self.stream = stream or sys.stderr
        self.epoch_seconds = None  # of the last whole epoch, evaluation and checkpoint included
        self.whole = False  # whether the epoch under way started at its first step
        self.t0 = self.last = time.perf_counter()
        self.shown = 0  # the length of the line a terminal shows now

    def start_epoch(self, epoch: int, done: int) -> None:
        now = time.perf_counter()
        if self.whole:
            self.epoch_seconds = now - self.t0
        self.epoch, self.first, self.t0, self.last = epoch, done, now, now
        self.whole = done == 0

    def step(self, done: int, loss_sum: float) -> None:
        """`done` steps of this epoch are done; `loss_sum` is the sum of their losses."""
        if self.mode is None:
            return
        now = time.perf_counter()
        if self.mode == "bar" and done % 5 and done != self.steps:
            return
        if self.mode == "lines" and now - self.last < STATUS_SECONDS:
            return
        self.last = now
        per_step = (now - self.t0) / max(done - self.first, 1)
        left = (self.steps - done) * per_step
        later = self.epochs - self.epoch - 1
        left += later * (self.epoch_seconds if self.epoch_seconds else self.steps * per_step)
        text = (f"epoch {self.epoch + 1}/{self.epochs}  step {done}/{self.steps}  loss {loss_sum / done:.4f}  "
                f"{self.batch / per_step:,.0f} images/s  ETA {human_seconds(left)}")
        if self.mode == "bar":
            self.stream.write("\r  " + text.ljust(self.shown))
            self.shown = len(text)
        else:
            self.stream.write("  " + text + "\n")
        self.stream.flush()

    def end_steps(self) -> None:
        if self.mode == "bar" and self.shown:
            self.stream.write("\r" + " " * (self.shown + 2) + "\r")
            self.stream.flush()
            self.shown = 0


def status_mode(progress) -> str | None:
    if progress is None:
        return "bar" if sys.stderr.isatty() else "lines"
    if progress is True:
        return "bar"
    if progress in ("bar", "lines"):
        return progress
    return None


def count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")
