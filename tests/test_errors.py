"""User errors: one located line `FILE:LINE:COL: error: ...`, the source line, a caret, exit 1
(2 for a bad command line) and never a traceback, from the CLI and as DnncError from the API."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.errors import DnncError

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


# (id, source, line, col, fragment of the message)
SOURCE_ERRORS = [
    # syntax
    ("unexpected-token", net("y = conv(x, filters=2 kernel=3)"), 3, 27,
     "unexpected 'kernel'; expected ')', ','"),
    ("unexpected-character", net("y = conv(x, filters=2, kernel=3) $ relu"), 3, 38, "unexpected character '$'"),
    ("unexpected-character-after-inserted-semicolons",
     "op f(x[n, k]) -> y[n, k]\n{\n    y[i, j] = x[i, j]\n}\nnetwork n {\n    input x: [4]\n    y = x |\"s\"> f\n}\n",
     7, 11, "unexpected character '|'"),
    ("unexpected-eof", "network n {\n    input x: [1, 8, 8]\n    y = relu(x)\n", 3, 16,
     "unexpected end of file; expected '}'"),
    ("unexpected-end-of-line",
     "op f(x[n, k]) -> y[n, k]\n{\n    t[n, i] = x[n, i] *\n    y[n, i] = t[n, i]\n}\n"
     "network n {\n    input x: [4]\n    y = f(x)\n}\n", 3, 24, "unexpected end of line; expected"),
    ("arrow-expected", "op f(x[n]) y[n] { y[i] = x[i] }\n", 1, 12, "unexpected 'y'; expected '->'"),
    # names
    ("unknown-op", net("y = frobnicate(x)"), 3, 9, "unknown op 'frobnicate'"),
    ("unknown-op-in-pipeline", net("y = relu(x) |> frob"), 3, 20, "unknown op 'frob'"),
    ("unknown-tensor", net("y = relu(z)"), 3, 14, "unknown tensor 'z'"),
    ("unknown-output", net("y = relu(x)\noutput z"), 4, 12, "unknown tensor 'z'"),
    ("op-as-tensor", net("y = relu(relu)"), 3, 14, "'relu' is an op, not a tensor"),
    ("binding-named-like-op", net("relu = relu(x)"), 3, 5, "'relu' is the name of an op"),
    ("used-before-bound", net("y = relu(z)\nz = relu(x)"), 3, 14, "'z' is used before it is bound (at line 4)"),
    ("duplicate-binding", net("y = relu(x)\ny = sigmoid(x)"), 4, 5, "'y' is already bound at line 3"),
    ("binding-without-op", net("y = x"), 3, 5, "a binding needs an op"),
    # arguments
    ("unknown-keyword", net("y = conv(x, filters=2, kernel=3, strid=2)"), 3, 38, "conv: unknown argument 'strid'"),
    ("non-integer-kernel", net("y = conv(x, filters=2, kernel=2.5)"), 3, 9,
     "conv: argument 'kernel' must be an integer, got 2.5"),
    ("name-as-number", net("y = dense(x, units=x)"), 3, 18, "dense: expected a number, got 'x'"),
    ("missing-argument", net("y = conv(x, filters=2)"), 3, 9, "conv: missing argument 'kernel'"),
    ("missing-input", net("y = add(x)"), 3, 9, "add: missing input 'b'"),
    ("too-many-arguments", net("y = maxpool(x, 2, 2, 0, 1)"), 3, 29, "maxpool: too many arguments"),
    ("argument-twice", net("y = conv(x, filters=2, kernel=3, filters=3)"), 3, 38, "argument 'filters' given twice"),
    ("number-as-tensor", net("y = relu(-1)"), 3, 14, "relu: input 'x' must be a tensor name"),
    # shapes
    ("add-shape-mismatch", net("a = conv(x, filters=2, kernel=3)\nb = conv(x, filters=2, kernel=5)\ny = add(a, b)"),
     5, 9, "add: input 'b' has trailing shape [1, 2, 4, 4] but an earlier input has [1, 2, 6, 6]"),
    ("concat-spatial-mismatch",
     net("a = conv(x, filters=2, kernel=3)\nb = conv(x, filters=3, kernel=5)\ny = concat(a, b)"),
     5, 9, "concat: input 'b' has trailing shape [4, 4] but an earlier input has [6, 6]"),
    ("conv-output-too-small", net("y = conv(x, filters=2, kernel=5)", "1, 4, 4"), 3, 9,
     "conv: output would have shape [1, 2, 0, 0]: the input [1, 1, 4, 4] is too small"),
    ("rank-mismatch", net("y = flatten(x) |> conv(filters=1, kernel=1)"), 3, 23,
     "conv: input 'x' must have rank 4, got shape [1, 64]"),
    ("require-groups", net("y = conv(x, filters=4, kernel=3, groups=2)", "3, 8, 8"), 3, 9,
     "conv: requires c % groups == 0, but c = 3, groups = 2"),
    ("require-pool-pad", net("y = maxpool(x, 2, pad=3)"), 3, 9, "maxpool: requires pad <= size / 2"),
    ("stride-zero-shown-at-call", net("y = conv(x, filters=2, kernel=3, stride=0)"), 3, 9,
     "conv: division by zero"),
    ("zero-input-dimension", net("y = relu(x)", "0, 3"), 2, 11, "input 'x' has a dimension below 1"),
    ("loss-not-scalar", net("y = relu(x)\nloss relu(y)"), 4, 10, "the loss must be a single number"),
    # user ops
    ("op-unknown-name", "op foo(x[n, k]) -> y[n, k]\n{\n    y[n, i] = x[n, i] * scale\n}\n"
     "network n {\n    input x: [4]\n    y = foo(x)\n}\n", 3, 25, "unknown name 'scale'"),
    ("op-index-out-of-range", "op shift(x[n, k]) -> y[n, k]\n{\n    y[b, i] = x[b, i + 1]\n}\n"
     "network n {\n    input x: [4]\n    y = shift(x)\n}\n", 3, 15,
     "index i + 1 of x may be out of range: it spans [1, 4] but dimension 1 has size 4"),
    ("op-select-branch-out-of-range", "op f(x[n, k]) -> y[n]\n{\n    y[i] = select(i < 1, x[i, 0], x[i, 5])\n}\n"
     "network n {\n    input x: [2]\n    y = f(x)\n}\n", 3, 35, "index 5 of x may be out of range"),
    ("op-reduction-range-unknown", "op foo(x[n, k]) -> y[n]\n{\n    y[i] = sum(j) 2.0\n}\n"
     "network n {\n    input x: [4]\n    y = foo(x)\n}\n", 3, 12, "cannot tell the range of index 'j'"),
    ("op-assigned-twice", "op foo(x[n, k]) -> y[n, k]\n{\n    y[n, i] = x[n, i]\n    y[n, i] = x[n, i] * 2.0\n}\n"
     "network n {\n    input x: [4]\n    y = foo(x)\n}\n", 4, 5, "foo: tensor 'y' is assigned twice"),
    ("op-redefines-builtin", "op relu(x[...]) -> y[...]\n{\n    y[...] = x[...]\n}\n"
     "network n {\n    input x: [4]\n    y = relu(x)\n}\n", 1, 4, "op 'relu' is already a built-in op"),
    ("op-defined-twice", "op f(x[n]) -> y[n] { y[i] = x[i] }\nop f(x[n]) -> y[n] { y[i] = x[i] }\n"
     "network n {\n    input x: [4]\n    y = relu(x)\n}\n", 2, 4, "op 'f' is already defined at"),
    ("op-unknown-function", "op f(x[n, k]) -> y[n, k]\n{\n    y[i, j] = foo(x[i, j])\n}\n"
     "network n {\n    input x: [4]\n    y = f(x)\n}\n", 3, 15, "unknown function 'foo'"),
    ("op-condition-as-value", "op f(x[n, k]) -> y[n, k]\n{\n    y[i, j] = x[i, j] > 0.0\n}\n"
     "network n {\n    input x: [4]\n    y = f(x)\n}\n", 3, 5, "is a condition, not a number"),
    ("op-output-never-assigned", "op f(x[n, k]) -> y[n, k]\n{\n    t[i, j] = x[i, j]\n}\n"
     "network n {\n    input x: [4]\n    y = f(x)\n}\n", 1, 18, "the output 'y' is never assigned"),
    ("op-unknown-initializer", "op f(x[n, k]) -> y[n, k]\n{\n    param w[k] ~ foo\n    y[i, j] = x[i, j] * w[j]\n}\n"
     "network n {\n    input x: [4]\n    y = f(x)\n}\n", 3, 11, "unknown initializer 'foo'"),
    ("op-require-fails", "op f(x[n, k]) -> y[n, k]\n{\n    require k > 5\n    y[i, j] = x[i, j]\n}\n"
     "network n {\n    input x: [4]\n    y = f(x)\n}\n", 8, 9, "f: requires k > 5, but k = 4"),
    # inline weights
    ("inline-weights-wrong-shape", net("y = conv(x, filters=1, kernel=3, weights=[[1, 2], [3, 4]])"), 3, 38,
     "conv: 'weight' has shape [2, 2], which does not fit the parameter's shape [1, 1, 3, 3]"),
    ("inline-weights-ragged", net("y = conv(x, filters=2, kernel=3, weights=[[1, 2], [3]])"), 3, 38,
     "conv: 'weight' must be a number or a nested list of numbers of equal lengths"),
    ("inline-bias-not-finite", net("y = conv(x, filters=2, kernel=3, bias=1e999)"), 3, 38,
     "conv: 'bias' must hold finite numbers"),
]


@pytest.mark.parametrize("src,line,col,fragment", [c[1:] for c in SOURCE_ERRORS], ids=[c[0] for c in SOURCE_ERRORS])
def test_source_error_api(src, line, col, fragment):
    with pytest.raises(DnncError) as info:
        dnnc.load(src)
    e = info.value
    assert (e.loc.file, e.loc.line, e.loc.col) == ("<string>", line, col), e.render()
    assert fragment in e.message
    assert e.render().startswith(f"<string>:{line}:{col}: error: ")


# Checked through the API only: the CLI prints every DnncError with the same render(), and each
# subprocess costs about 0.4 s of start-up. Every kind the CLI must handle stays in the CLI run.
API_ONLY = {"unknown-op-in-pipeline", "unknown-output", "op-as-tensor", "binding-named-like-op",
            "binding-without-op", "name-as-number", "missing-input", "argument-twice", "number-as-tensor",
            "rank-mismatch", "require-pool-pad", "zero-input-dimension", "op-select-branch-out-of-range",
            "op-defined-twice", "op-unknown-function", "op-condition-as-value", "op-output-never-assigned",
            "op-unknown-initializer", "inline-weights-ragged", "inline-bias-not-finite"}


def test_source_errors_cli(tmp_path):
    """The source errors through `dnnc check` (one subprocess per case)."""
    cases = [c for c in SOURCE_ERRORS if c[0] not in API_ONLY]
    assert len(cases) + len(API_ONLY) == len(SOURCE_ERRORS)
    paths = []
    for name, src, *_ in cases:
        paths.append(tmp_path / f"{name}.net")
        paths[-1].write_text(src)
    results = dnnc_cli_many([["check", p] for p in paths])
    for (name, src, line, col, fragment), path, r in zip(cases, paths, results):
        lines = assert_clean_failure(r, 1)
        assert r.stdout == "", name
        assert_located(lines, str(path), src, line, col, fragment)


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
    from dnnc.frontend import _expected

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
    (["ir", LENET, "--stage", "bogus"], "unknown stage 'bogus' (stages: ast, graph, te, schedule, loops, split_edges, fold_guards"),
    (["ir", LENET, "--layer", "nope"], "no layer 'nope' (layers: c1.conv"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["check"], "the following arguments are required: net"),
    (["run", LENET], "the following arguments are required: --input"),
    (["compile", LENET], "the following arguments are required: -o/--output"),
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
             ["run", LENET, "--input", x, "--output", f"probs={tmp_path / 'y.npy'}"]]
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
    from dnnc.errors import DnncError

    huge = dnnc.load("network huge {\n input x: [64, 40000, 40000]\n y = conv(x, filters=64, kernel=3, pad=1)\n"
                     " output y\n}")
    with pytest.raises(DnncError, match=r"network 'huge' at batch 1 needs at least 1\.12 TiB of memory .* "
                                        r"available: use a smaller batch or input"):
        huge.compile(batch=1)
