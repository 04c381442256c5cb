"""User-facing errors: one located line, the source line and a caret; never a traceback."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A place in a source file (1-based line and column)."""

    file: str
    line: int
    col: int
    text: str = ""  # the whole source line, for the caret display

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def did_you_mean(word: str, choices) -> str:
    """'; did you mean 'X'?' for the nearest choice to a mistyped word, or ''."""
    import difflib

    choices = [str(c) for c in choices]
    near = [c for c in choices if sorted(c) == sorted(word) and c != word][:1]  # letters swapped: ri, ir
    near = near or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not near and word.startswith("-") and not word.startswith("--"):
        near = difflib.get_close_matches("-" + word, choices, n=1, cutoff=0.6)  # -out for --out
    return f"; did you mean '{near[0]}'?" if near else ""


class DnncError(Exception):
    """An error in the user's input (source, data, checkpoint, flag). Exit status 1."""

    exit_code = 1

    def __init__(self, message: str, loc: Loc | None = None, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.path = path

    def __str__(self) -> str:
        """`file:line:col: error: message` (or `file: error: message`) where the error has a
        place, so a printed or logged exception says where; the bare message where it has none."""
        if self.loc is None and not self.path:
            return self.message
        return self.headline()

    def headline(self) -> str:
        """The first line of render(): where, then the message."""
        if self.loc is not None:
            return f"{self.loc}: error: {self.message}"
        if self.path:
            return f"{self.path}: error: {self.message}"
        return f"error: {self.message}"

    def render(self) -> str:
        """The headline, then for a located error the source line and a caret under the column."""
        if self.loc is not None and self.loc.text:
            caret = " " * (self.loc.col - 1) + "^"
            return f"{self.headline()}\n    {self.loc.text}\n    {caret}"
        return self.headline()


class UsageError(DnncError):
    """A bad command-line value. Exit status 2."""

    exit_code = 2


class CompilerBug(Exception):
    """An internal invariant failed (for example the verifier rejected a pass's output)."""
