"""The bad-input corpus: every file in tests/corpus/net is a .net file with one mistake, and
tests/corpus/expected.txt says where its error is and part of what it says.

Each is checked through the API (a DnncError at that line and column), and a third of them
through `dnnc check` (exactly three lines on stderr: FILE:LINE:COL: error: ..., the source line, a
caret; exit 1; nothing on stdout; no traceback). Bad ONNX files follow: each refused by
`dnnc import` in one line, with no output file written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.base.errors import DnncError

from test_errors import assert_clean_failure, assert_located, dnnc_cli, dnnc_cli_many

CORPUS = Path(__file__).resolve().parent / "corpus"


def _cases() -> list[tuple[str, int, int, str]]:
    out = []
    for row in (CORPUS / "expected.txt").read_text().splitlines():
        if row.strip() and not row.startswith("#"):
            name, where, fragment = row.split("\t")
            line, col = map(int, where.split(":"))
            out.append((name, line, col, fragment))
    return out


CASES = _cases()


def test_the_corpus_is_complete():
    listed = {name for name, *_ in CASES}
    present = {p.name for p in (CORPUS / "net").glob("*.net")}
    assert listed == present, (listed ^ present)
    assert len(CASES) >= 80


@pytest.mark.parametrize("name,line,col,fragment", CASES, ids=[c[0] for c in CASES])
def test_corpus_api(name, line, col, fragment):
    path = CORPUS / "net" / name
    with pytest.raises(DnncError) as info:
        dnnc.load(path)
    e = info.value
    assert (e.loc.file, e.loc.line, e.loc.col) == (str(path), line, col), e.render()
    assert fragment in e.message, (fragment, e.message)


# Every DnncError reaches the user through the same render(), and each subprocess costs about
# 0.4 s of start-up: the command runs a third of the corpus, spread over every kind of mistake,
# plus the files whose bytes are unusual (line ends, non-ASCII, nesting).
CLI_CASES = [c for k, c in enumerate(CASES) if k % 3 == 0 or c[0] in (
    "crlf-line-ends.net", "non-ascii-name.net", "deep-nesting.net", "weights-outside.net", "op-calls-itself.net")]


def test_corpus_cli():
    paths = [CORPUS / "net" / name for name, *_ in CLI_CASES]
    results = dnnc_cli_many([["check", p] for p in paths])
    for (name, line, col, fragment), path, r in zip(CLI_CASES, paths, results):
        lines = assert_clean_failure(r, 1)
        assert r.stdout == "", name
        src = path.read_bytes().decode()
        assert_located(lines, str(path), src, line, col, fragment)


# ----------------------------------------------------------------------------- ONNX files

def _model(onnx, helper, numpy_helper, weight: np.ndarray | None = None, external: bool = False,
           bad_node: bool = False):
    """A one-layer ONNX model (Gemm), damaged as asked."""
    w = np.ones((3, 4), np.float32) if weight is None else weight
    init = numpy_helper.from_array(w, "W")
    if external:
        init.data_location = onnx.TensorProto.EXTERNAL
        init.ClearField("raw_data")
        entry = init.external_data.add()
        entry.key, entry.value = "location", "../../../etc/passwd"
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])
    node = helper.make_node("Gemm", ["x", "W"], ["y"], transB=1) if not bad_node else \
        helper.make_node("Gemm", ["x", "missing"], ["y"], transB=1)
    g = helper.make_graph([node], "g", [x], [y], [init])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _onnx_cases(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    def save(name, model):
        p = tmp_path / name
        p.write_bytes(model.SerializeToString())
        return p

    good = save("good.onnx", _model(onnx, helper, numpy_helper))
    short = _model(onnx, helper, numpy_helper)
    short.graph.initializer[0].raw_data = short.graph.initializer[0].raw_data[:20]
    cut = save("cut.onnx", _model(onnx, helper, numpy_helper))
    cut.write_bytes(cut.read_bytes()[:-7])
    return [
        ("external data", save("ext.onnx", _model(onnx, helper, numpy_helper, external=True)), {},
         "keeps its weights in external data files"),
        ("a node reading a tensor nobody makes", save("bad.onnx", _model(onnx, helper, numpy_helper, bad_node=True)),
         {}, "not a valid ONNX model"),
        ("weights shorter than their shape", save("short.onnx", short), {}, "raw_data size (20 bytes) is too small"),
        ("a non-finite weight", save("nan.onnx", _model(onnx, helper, numpy_helper,
                                                        weight=np.full((3, 4), np.nan, np.float32))), {},
         "initializer 'W' does not hold 12 finite numbers"),
        ("over the size limit", good, {"DNNC_MAX_ONNX_BYTES": "64"}, "more than the 64 dnnc reads"),
        ("truncated", cut, {}, "not a readable ONNX model"),
        ("a directory", tmp_path, {}, "is not a file"),
        ("a typo in the name", tmp_path / "god.onnx", {}, "no such file (did you mean"),
    ]


def test_bad_onnx_files_are_refused_before_use(tmp_path, monkeypatch):
    cases = _onnx_cases(tmp_path)
    for what, path, env, fragment in cases:
        for k, v in env.items():
            monkeypatch.setenv(k, v)  # the child process inherits it
        r = dnnc_cli("import", path, "-o", tmp_path / "out.net", "--weights-out", tmp_path / "out.npz")
        for k in env:
            monkeypatch.delenv(k)
        lines = assert_clean_failure(r, 1)
        assert len(lines) == 1 and lines[0].startswith(f"{path}: error: ") and fragment in lines[0], (what, lines)
        assert not (tmp_path / "out.net").exists() and not (tmp_path / "out.npz").exists(), what
    # and the undamaged model imports
    r = dnnc_cli("import", tmp_path / "good.onnx", "-o", tmp_path / "out.net", "--weights-out", tmp_path / "out.npz")
    assert r.returncode == 0, r.stderr


def test_a_network_too_big_for_memory_is_refused_at_the_command_line():
    big = CORPUS / "too-big.net"
    argvs = [["bench", big, "--batch", "1"], ["bench", big, "--batch", "1", "--per-layer"]]
    for argv, r in zip(argvs, dnnc_cli_many(argvs)):
        lines = assert_clean_failure(r, 1)
        assert len(lines) == 1 and "needs at least 1.12 TiB of memory" in lines[0], (argv, lines)


# ----------------------------------------------------------------------------- checkpoints to resume

def test_bad_checkpoints_for_resume(tmp_path):
    """Each refused in one line naming the file; nothing written to --out."""
    import json

    net = dnnc.load(Path(__file__).resolve().parent.parent / "examples" / "lenet300.net")
    params = net.init_params()
    np.savez(tmp_path / "params_only.npz", **params)

    def with_meta(name, meta):
        arrays = dict(params)
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        np.savez(tmp_path / name, **arrays)

    with_meta("other_network.npz", {"format": "dnnc-checkpoint", "network": "lenet5"})
    with_meta("meta_a_list.npz", [1, 2])
    with_meta("meta_incomplete.npz", {"format": "dnnc-checkpoint", "network": "lenet300", "seed": 1})
    with_meta("meta_wrong_types.npz", {"format": "dnnc-checkpoint", "network": "lenet300", "seed": "x",
                                       "normalization": [0.1, 0.3], "progress": {}, "settings": {}})
    cases = [("params_only.npz", "holds parameters only, not a training state to resume"),
             ("other_network.npz", "is a checkpoint of network 'lenet5', not 'lenet300'"),
             ("meta_a_list.npz", "corrupt checkpoint metadata"),
             ("meta_incomplete.npz", "corrupt checkpoint metadata (cannot resume from it)"),
             ("meta_wrong_types.npz", "corrupt checkpoint metadata (cannot resume from it)")]
    argvs = [["train", "examples/lenet300.net", "--resume", tmp_path / name, "--epochs", "1",
              "--out", tmp_path / "out.npz"] for name, _ in cases]
    for (name, fragment), r in zip(cases, dnnc_cli_many(argvs)):
        lines = assert_clean_failure(r, 1)
        assert lines == [f"{tmp_path / name}: error: {fragment}"] or (len(lines) == 1 and fragment in lines[0]), \
            (name, lines)
    assert not (tmp_path / "out.npz").exists()
