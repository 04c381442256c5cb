"""User errors: one located line `FILE:LINE:COL: error: ...`, the source line, a caret, exit 1
(2 for a bad command line) and never a traceback, from the CLI and as DnncError from the API.

The bad .net files are in tests/corpus (test_corpus.py); here are the other commands, bad
paths, command lines, weights, inputs and the Python API."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.base.errors import DnncError

ROOT = Path(__file__).resolve().parent.parent
LENET = "examples/lenet5.net"


def dnnc_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dnnc.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def dnnc_cli_many(argvs: list[list]) -> list[subprocess.CompletedProcess]:
    """Run several CLI invocations side by side (each is mostly interpreter start-up)."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return list(pool.map(lambda argv: dnnc_cli(*argv), argvs))


def assert_clean_failure(r: subprocess.CompletedProcess, code: int = 1) -> list[str]:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert lines, "no error message"
    assert "error: " in lines[0], r.stderr
    return lines


def assert_located(stderr_lines: list[str], path: str, src: str, line: int, col: int, fragment: str) -> None:
    head = stderr_lines[0]
    prefix = f"{path}:{line}:{col}: error: "
    assert head.startswith(prefix), (head, prefix)
    assert fragment in head, (fragment, head)
    # then the source line and a caret under the column
    assert len(stderr_lines) == 3, stderr_lines
    assert stderr_lines[1] == "    " + src.splitlines()[line - 1]
    assert stderr_lines[2] == "    " + " " * (col - 1) + "^"


NET = "network n {{\n    input x: [{shape}]\n{body}\n}}\n"


def net(body: str, shape: str = "1, 8, 8") -> str:
    return NET.format(shape=shape, body="\n".join("    " + b for b in body.split("\n")))


@pytest.mark.parametrize("command", [["info"], ["ir", "--stage", "te"], ["ir", "--stage", "ast"],
                                     ["compile", "-o", "OUT"]])
def test_other_commands_report_source_errors(tmp_path, command):
    src = net("y = conv(x, filters=2, kernel=5)", "1, 4, 4")
    path = tmp_path / "small.net"
    path.write_text(src)
    command = [str(tmp_path / "out.o") if c == "OUT" else c for c in command]
    r = dnnc_cli(command[0], path, *command[1:])
    assert_located(assert_clean_failure(r, 1), str(path), src, 3, 9, "is too small")


def test_expected_tokens_are_spelled_out():
    from dnnc.front.parse import _expected

    assert _expected(["__ANON_0"]) == "'->'"
    assert _expected(["__ANON_1"]) == "'|>'"
    assert _expected(["NAME", "RBRACE", "SEMICOLON"]) == "'}', ';', a name"


# ----------------------------------------------------------------------------- files

BAD_PATHS = {  # kind -> message
    "missing": "no such file",
    "directory": "is a directory, not a .net file",
    "binary": "not a text file (expected .net source in UTF-8)",
}


def _bad_path(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "nope.net"
    if kind == "directory":
        (tmp_path / "dir.net").mkdir(exist_ok=True)
        return tmp_path / "dir.net"
    path = tmp_path / "bin.net"
    path.write_bytes(b"network n {\n  input x: [\xff\xfe]\n}\n")
    return path


def test_bad_source_paths_cli(tmp_path):
    """A missing file, a directory and a non-UTF-8 file, through every command that reads a .net."""
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.float32))
    commands = [["check"], ["ir", "--stage", "ast"], ["run", "--input", str(tmp_path / "x.npy")],
                ["compile", "-o", str(tmp_path / "out.o")]]
    cases = [(kind, _bad_path(tmp_path, kind), cmd) for kind in BAD_PATHS for cmd in commands]
    results = dnnc_cli_many([[cmd[0], path, *cmd[1:]] for _, path, cmd in cases])
    for (kind, path, cmd), r in zip(cases, results):
        lines = assert_clean_failure(r, 1)
        assert lines == [f"{path}: error: {BAD_PATHS[kind]}"], (kind, cmd, lines)
    assert not (tmp_path / "out.o").exists()


@pytest.mark.parametrize("kind", sorted(BAD_PATHS))
def test_bad_source_paths_api(tmp_path, kind):
    path = _bad_path(tmp_path, kind)
    for arg in (path, str(path)):
        with pytest.raises(DnncError) as info:
            dnnc.load(arg)
        assert info.value.render() == f"{path}: error: {BAD_PATHS[kind]}"


def test_unreadable_source_api(tmp_path, monkeypatch):
    path = tmp_path / "locked.net"
    path.write_text(net("y = relu(x)"))

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(DnncError) as info:
        dnnc.load(path)
    assert info.value.render() == f"{path}: error: cannot read (Permission denied)"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.net"
    path.write_text("# nothing here\n")
    r = dnnc_cli("check", path)
    assert assert_clean_failure(r, 1) == [f"{path}: error: no network in this file (write: network NAME {{ ... }})"]


# ----------------------------------------------------------------------------- command line

BAD_COMMAND_LINES = [
    (["info", LENET, "--batch", "0"], "argument --batch: must be at least 1, got 0"),
    (["info", LENET, "--batch", "abc"], "argument --batch: expected a whole number, got 'abc'"),
    (["ir", LENET, "--batch", "-3"], "argument --batch"),
    (["ir", LENET, "--stage", "bogus"], "unknown stage 'bogus' (stages: ast, graph, te, sparsify, fold, algorithms, pool_first"),
    (["ir", LENET, "--layer", "nope"], "no layer 'nope' (layers: c1.conv"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["check"], "the following arguments are required: net"),
    (["run", LENET], "the following arguments are required: --input"),
    (["compile", LENET], "the following arguments are required: -o/--out"),
    (["check", LENET, "--bogus"], "unrecognized arguments: --bogus"),
    (["train", LENET, "--servers", "2"], "--servers and --staleness go with --distributed=ps"),
    (["train", LENET, "--distributed=bogus"], "argument --distributed: invalid choice: 'bogus'"),
    (["train", LENET, "--on-nan", "maybe"], "argument --on-nan: invalid choice: 'maybe'"),
    (["train", LENET, "--data-parallel", "--async"], "argument --async: not allowed with argument --data-parallel"),
    (["train", LENET, "--staleness", "-1"], "argument --staleness"),
    (["compress", LENET], "the following arguments are required: --weights, -o/--out"),
    (["filters", "w.npz", "-o", "f.png"], "the following arguments are required: --layer"),
    (["export", LENET], "the following arguments are required: -o/--out"),
    (["import", "m.onnx"], "the following arguments are required: -o/--out, --weights-out"),
    (["info", LENET, "--graph"], "argument --graph: expected one argument"),
    (["compress", LENET, "--weights", "w.npz", "-o", "m.dnnz", "--retrain", "x"], "argument --retrain"),
]


def test_bad_command_line():
    results = dnnc_cli_many([args for args, _ in BAD_COMMAND_LINES])
    for (args, fragment), r in zip(BAD_COMMAND_LINES, results):
        lines = assert_clean_failure(r, 2)
        assert len(lines) == 1, (args, lines)
        assert lines[0].startswith("dnnc: error: "), (args, lines)
        assert fragment in lines[0], (args, lines)


BAD_FILES = {  # (what the file holds, the command, the message): each one line, exit 1
    "a truncated .dnnz": (b"DNNZ\x01\x00" + bytes(40), ["eval", LENET, "--weights", "{f}"], "checksum"),
    "a .dnnz that is not one": (b"DNNX" + bytes(60), ["eval", LENET, "--weights", "{f}"], "not an .npz archive"),
    "garbage as ONNX": (b"\x08\x07garbage", ["import", "{f}", "-o", "{d}/x.net", "--weights-out", "{d}/x.npz"],
                        "not a readable ONNX model"),
    "a missing checkpoint for filters": (None, ["filters", "{d}/none.npz", "--layer", "c1", "-o", "{d}/f.png"],
                                         "no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_for_the_newer_commands(case, tmp_path):
    content, args, fragment = BAD_FILES[case]
    f = tmp_path / "input.bin"
    if content is not None:
        f.write_bytes(content)
    r = dnnc_cli(*[a.format(f=f, d=tmp_path) for a in args])
    lines = assert_clean_failure(r, 1)
    assert len(lines) == 1 and fragment in lines[0], (case, lines)
    assert not (tmp_path / "x.net").exists() and not (tmp_path / "f.png").exists()


def test_compile_bad_output_name(tmp_path):
    r = dnnc_cli("compile", LENET, "-o", tmp_path / "lenet.c")
    assert assert_clean_failure(r, 1) == [f"{tmp_path / 'lenet.c'}: error: the object file name must end in .o"]
    r = dnnc_cli("compile", LENET, "-o", tmp_path / "no" / "lenet.o")
    assert assert_clean_failure(r, 1) == [f"{tmp_path / 'no' / 'lenet.o'}: error: the directory does not exist"]


# ----------------------------------------------------------------------------- dnnc run

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    params = dnnc.load(ROOT / LENET).init_params()
    np.save(d / "x.npy", np.zeros((2, 1, 28, 28), np.float32))
    np.save(d / "x_bad_shape.npy", np.zeros((2, 3, 28, 28), np.float32))
    np.save(d / "x_empty.npy", np.zeros((0, 1, 28, 28), np.float32))
    np.save(d / "x_text.npy", np.array(["a", "b"]))
    np.save(d / "x_complex.npy", np.zeros((1, 28, 28), np.complex64))
    (d / "x_garbage.npy").write_bytes(b"this is not an array")
    (d / "x_truncated.npy").write_bytes((d / "x.npy").read_bytes()[:200])
    np.savez(d / "w_ok.npz", **params)
    np.savez(d / "w_missing.npz", **{k: v for k, v in params.items() if k != "c1.bias"})
    np.savez(d / "w_shape.npz", **{**params, "c1.weight": np.zeros((6, 1, 3, 3), np.float32)})
    np.savez(d / "w_nan.npz", **{**params, "f3.bias": np.full(120, np.nan, np.float32)})
    (d / "w_garbage.npz").write_bytes(b"PK but not really a zip file")
    (d / "w_text.npz").write_bytes(b"hello")
    return d


def test_run_ok(files):
    r = dnnc_cli("run", LENET, "--input", files / "x.npy", "--weights", files / "w_ok.npz")
    assert r.returncode == 0, r.stderr
    assert "logits: [2, 10]" in r.stdout


BAD_WEIGHTS = [
    ("nope.npz", "no such file"),
    ("w_missing.npz", "missing parameter 'c1.bias'"),
    ("w_shape.npz", "parameter 'c1.weight' has shape [6, 1, 3, 3], the network needs [6, 1, 5, 5]"),
    ("w_nan.npz", "parameter 'f3.bias' must hold finite floating-point values"),
    ("w_garbage.npz", "not an .npz archive"),
    ("w_text.npz", "not an .npz archive"),
    ("x.npy", "is an .npy array, not an .npz archive"),
    (".", "is a directory"),
]

BAD_INPUTS = [
    ("nope.npy", "no such file"),
    ("x_bad_shape.npy", "input 'image' must have shape [N, 1, 28, 28] or [1, 28, 28], got [2, 3, 28, 28]"),
    ("x_empty.npy", "input 'image' holds no examples"),
    ("x_text.npy", "not real numbers"),
    ("x_complex.npy", "not real numbers"),
    ("x_garbage.npy", "not an .npy file"),
    ("x_truncated.npy", "not a readable .npy file"),
    ("w_ok.npz", "is an .npz archive; --input takes one .npy array"),
]


def test_run_bad_files(files):
    argvs = [["run", LENET, "--input", files / "x.npy", "--weights", files / w, "--batch", "2"] for w, _ in BAD_WEIGHTS]
    argvs += [["run", LENET, "--input", files / x] for x, _ in BAD_INPUTS]
    results = dnnc_cli_many(argvs)
    for (name, message), r in zip(BAD_WEIGHTS + BAD_INPUTS, results):
        path = files / name
        lines = assert_clean_failure(r, 1)
        assert len(lines) == 1 and lines[0].startswith(f"{path}: error: "), (name, lines)
        assert message in lines[0], (name, lines)


def test_run_bad_names(files, tmp_path):
    x = files / "x.npy"
    argvs = [["run", LENET, "--input", f"pixels={x}", "--input", f"image={x}"],
             ["run", LENET, "--input", f"pixels={x}"],
             ["run", LENET, "--input", "image="],
             ["run", LENET, "--input", x, "--out", f"probs={tmp_path / 'y.npy'}"]]
    expected = ["dnnc: error: no input named 'pixels' (names: image)",
                "dnnc: error: no input named 'pixels' (names: image)",
                "dnnc: error: no file name after 'image='",
                "dnnc: error: no output named 'probs' (names: logits)"]
    for argv, want, r in zip(argvs, expected, dnnc_cli_many(argvs)):
        assert assert_clean_failure(r, 2) == [want], argv
    assert not (tmp_path / "y.npy").exists()


# ----------------------------------------------------------------------------- Python API

def test_api_forward_errors():
    model = dnnc.load(ROOT / LENET).compile(batch=2)
    with pytest.raises(DnncError, match="missing input 'image'"):
        model.forward()
    with pytest.raises(DnncError, match=r"input 'image' must have shape \[N, 1, 28, 28\]"):
        model.forward(image=np.zeros((2, 3, 28, 28)))
    with pytest.raises(DnncError, match="unknown input 'label'"):
        model.forward(image=np.zeros((1, 28, 28)), label=np.zeros(3))
    with pytest.raises(DnncError, match=r"parameter c1.bias has shape \[6\]"):
        model.params["c1.bias"] = np.zeros(7)
    with pytest.raises(DnncError, match="batch must be at least 1"):
        dnnc.load(ROOT / LENET).compile(batch=0)


def test_api_no_network_named():
    with pytest.raises(DnncError, match="no network named 'other' \\(have: n\\)"):
        dnnc.load(net("y = relu(x)"), network="other")


def test_a_network_too_big_for_memory_is_refused_before_allocating():
    """1.12 TiB of activations: one line saying how much it needs, not a MemoryError."""
    import dnnc
    from dnnc.base.errors import DnncError

    huge = dnnc.load("network huge {\n input x: [64, 40000, 40000]\n y = conv(x, filters=64, kernel=3, pad=1)\n"
                     " output y\n}")
    with pytest.raises(DnncError, match=r"network 'huge' at batch 1 needs at least 1\.12 TiB of memory .* "
                                        r"available: use a smaller batch or input"):
        huge.compile(batch=1)


def test_str_of_an_error_says_where(tmp_path):
    """str(DnncError) is its first line as the command prints it: `file:line:col: error: ...`
    when it has a place, `file: error: ...` for a whole file, the bare message otherwise."""
    path = tmp_path / "bad.net"
    path.write_text(net("y = conv(x, filters=0, kernel=3)"))
    with pytest.raises(DnncError) as info:
        dnnc.load(path)
    e = info.value
    assert str(e) == f"{path}:3:9: error: {e.message}" == e.render().splitlines()[0]
    assert f"{e}".startswith(f"{path}:3:9: error: conv: ")  # as a log line or an f-string shows it
    with pytest.raises(DnncError) as info:
        dnnc.load(tmp_path / "none.net")
    assert str(info.value) == f"{tmp_path / 'none.net'}: error: no such file"
    assert str(DnncError("no place")) == "no place"
    # and the command prints the place once, not twice
    r = dnnc_cli("check", path)
    lines = assert_clean_failure(r, 1)
    assert lines[0] == str(e) and lines[0].count(str(path)) == 1
