"""Every `dnnc` command in the README's code blocks runs and exits 0, or fails as the README
shows it failing.

The commands run in README order, each once, in one temporary directory holding copies of
examples/ and docs/, so the files they write (lenet5.npz, run.npz, pictures) land there and
later commands read them. They share one compile cache (DNNC_CACHE_DIR), so each program is
compiled once. To keep the file near a minute on two cores, some commands are shortened or
skipped, always the same way:

- `dnnc train` runs one epoch (`--epochs 1` added, or put in place of the README's count); a
  `--resume` of such a run gets `--epochs 2`, so that it trains one epoch more;
- `mpiexec` runs need mpi4py and mpiexec and are skipped without them; a run on a hostfile of
  other machines (`mpiexec -f hosts`) is skipped;
- a command that reads or writes pictures needs Pillow, `--plot` needs matplotlib;
- `--target cuda` needs an NVIDIA GPU, its driver and cuda-bindings.

A command shown after `$ ` with its output must print that output (`...` stands for any text):
an error on stderr, with a non-zero exit status, or lines found in its stdout. Files the
README names but does not ship (`bad.net`) are made as its example shows them.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# bad.net as the README's example of a located error shows it: the mistake on line 5, column 10
BAD_NET = """# a conv layer with no filters
network bad {
    input image: [1, 28, 28]

    c1 = conv(image, filters=0, kernel=5)
    output c1
}
"""


@dataclass(frozen=True)
class Command:
    text: str  # as the README writes it, without its comment
    shown: tuple[str, ...] | None  # the output the README shows after `$ COMMAND`, if any

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def dnnc(self) -> list[str]:
        """The words from `dnnc` on (after `mpiexec ...` or `pip install . &&`)."""
        words = self.argv
        return words[words.index("dnnc"):]


def readme_commands() -> list[Command]:
    text = README.read_text(encoding="utf-8")
    found: dict[str, Command] = {}
    for block in re.finditer(r"^( *)```[^\n]*\n(.*?)^\1```", text, re.M | re.S):
        lines = [line[len(block.group(1)):] for line in block.group(2).splitlines()]
        for k, line in enumerate(lines):
            if line.startswith("$ "):
                rest = lines[k + 1:]
                end = next((j for j, x in enumerate(rest) if x.startswith("$ ")), len(rest))
                command, shown = line[2:], tuple(rest[:end])
            else:
                m = re.match(r"(?:.*&& )?((?:mpiexec .*?)?\bdnnc .*)", line)
                if not m:
                    continue
                command, shown = m.group(1), None
            command = re.sub(r"\s+#.*$", "", command).strip()
            found.setdefault(command, Command(command, shown))  # the same command twice runs once
    return list(found.values())


COMMANDS = readme_commands()


def shortened(words: list[str]) -> list[str]:
    """A training command cut to one epoch (a resumed one to two: one more than it resumes)."""
    if words[1] != "train":
        return words
    out = []
    skip = False
    for w in words:
        if skip:
            skip = False
        elif w == "--epochs":
            skip = True
        else:
            out.append(w)
    return out + ["--epochs", "2" if "--resume" in words else "1"]


def writes(c: Command) -> str | None:
    """The checkpoint a training command writes (as dnnc train chooses it)."""
    w = c.dnnc
    if w[1] != "train":
        return None
    for flag in ("--out", "-o", "--resume"):
        if flag in w:
            return w[w.index(flag) + 1]
    return Path(w[2]).stem + ".npz"  # the example's network is named as its file


def reads(c: Command) -> list[str]:
    """Checkpoints the command needs that an earlier README command writes."""
    w = c.dnnc
    names = [w[k + 1] for k, x in enumerate(w[:-1]) if x in ("--weights", "--resume")]
    if w[1] == "filters":
        names.append(w[2])
    return [n for n in names if n.endswith(".npz")]


def skip_reason(c: Command) -> str | None:
    words = c.argv
    if words[0] == "mpiexec":
        if "-f" in words:
            return "needs a hostfile of other machines"
        if importlib.util.find_spec("mpi4py") is None or mpiexec() is None:
            return "needs mpi4py and mpiexec (pip install 'dnnc[mpi]')"
    if any(w.endswith(".png") for w in words) and importlib.util.find_spec("PIL") is None:
        return "needs Pillow (pip install 'dnnc[images]')"
    if "--plot" in words and importlib.util.find_spec("matplotlib") is None:
        return "needs matplotlib (pip install 'dnnc[plot]')"
    if c.dnnc[1] in ("export", "import") and importlib.util.find_spec("onnx") is None:
        return "needs onnx (pip install 'dnnc[onnx]')"
    if "cuda" in words and words[words.index("cuda") - 1] == "--target" and not gpu_here():
        return "needs an NVIDIA GPU, its driver and cuda-bindings (pip install 'dnnc[cuda]')"
    return None


def gpu_here() -> bool:
    try:
        from dnnc.runtime.cuda import device

        device(0)
        return True
    except Exception:
        return False


def mpiexec() -> str | None:
    here = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, beside this interpreter
    return str(here) if here.exists() else shutil.which("mpiexec")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    for sub in ("examples", "docs"):
        shutil.copytree(ROOT / sub, d / sub)
    (d / "bad.net").write_text(BAD_NET)
    return d


def run(c: Command, workdir: Path) -> subprocess.CompletedProcess:
    words = c.argv
    k = words.index("dnnc")
    prefix = [mpiexec(), *words[1:k]] if words[0] == "mpiexec" else []
    argv = prefix + [sys.executable, "-m", "dnnc.cli"] + shortened(words[k:])[1:]
    env = {**os.environ, "DNNC_CACHE": "1", "DNNC_CACHE_DIR": str(workdir / "cache")}
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def matches(shown: str, line: str) -> bool:
    return re.fullmatch(re.escape(shown).replace(re.escape("..."), ".*"), line) is not None


def test_the_readme_has_the_commands_it_should():
    texts = [c.text for c in COMMANDS]
    assert len(texts) >= 15, texts
    for expected in ("dnnc train examples/lenet5.net", "dnnc train examples/lenet5.net --resume run.npz",
                     "dnnc check bad.net", "dnnc run examples/lenet5.net --weights lenet5.npz --input docs/digit.png"):
        assert expected in texts, expected


@pytest.mark.parametrize("c", COMMANDS, ids=[c.text for c in COMMANDS])
def test_readme_command(c: Command, workdir: Path):
    reason = skip_reason(c)
    if reason:
        pytest.skip(reason)
    for name in reads(c):  # made by an earlier command, unless that one was deselected
        if not (workdir / name).exists():
            producer = next(p for p in COMMANDS if writes(p) == name and skip_reason(p) is None)
            assert run(producer, workdir).returncode == 0, producer.text
    r = run(c, workdir)
    assert "Traceback" not in r.stderr, r.stderr
    if c.shown and "error: " in c.shown[0]:  # a failure the README shows on purpose
        assert r.returncode != 0, r.stdout
        got = r.stderr.splitlines()
        assert len(got) == len(c.shown) and all(matches(s, g) for s, g in zip(c.shown, got)), (c.shown, got)
        return
    assert r.returncode == 0, f"{c.text}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    for shown in c.shown or ():
        if shown.strip() != "...":
            assert any(matches(shown, line) for line in r.stdout.splitlines()), (shown, r.stdout[-3000:])
