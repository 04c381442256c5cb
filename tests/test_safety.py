"""Safe loading: no pickle, no user text run as Python, and files named in a .net file read only
from its own directory."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import numpy as np
import pytest

import dnnc
from dnnc.base.errors import DnncError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "dnnc").rglob("*.py"))


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            yield name, node


def test_no_pickle_and_no_eval_anywhere():
    assert len(SOURCES) > 30
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "cPickle", "dill", "shelve", "marshal") for n in names), path
        for name, call in _calls(tree):
            assert not (name in ("eval", "exec", "compile") and isinstance(call.func, ast.Name)), f"{path}: {name}()"
            if name == "load" and isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "np":
                kw = {k.arg: k.value for k in call.keywords}
                assert "allow_pickle" in kw and isinstance(kw["allow_pickle"], ast.Constant) \
                    and kw["allow_pickle"].value is False, f"{path}:{call.lineno}: np.load without allow_pickle=False"


def test_a_pickled_array_is_refused(tmp_path):
    """An .npy holding Python objects (which numpy would unpickle) is not read."""
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "w.npz", **{"c1.weight": np.array([{"a": 1}], dtype=object)})
    from dnnc.base.fileio import load_npy, load_npz

    with pytest.raises(DnncError):
        load_npy(tmp_path / "obj.npy")
    with pytest.raises(DnncError):
        dict(load_npz(tmp_path / "w.npz"))


NET = """network n {{
    input x: [1, 5, 5]
    y = conv(x, filters=1, kernel=3, bias=0, weights="{path}")
    output y
}}
"""


def test_weights_from_a_file_beside_the_net_file(tmp_path, monkeypatch):
    (tmp_path / "k").mkdir()
    w = np.arange(9, dtype=np.float32).reshape(3, 3)
    np.save(tmp_path / "k" / "w.npy", w)
    (tmp_path / "a.net").write_text(NET.format(path="k/w.npy"))
    model = dnnc.load(tmp_path / "a.net").compile(batch=1)
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = 1.0  # an impulse: the output is the flipped kernel around it
    y = model.forward(x=x)["y"][0, 0]
    assert np.array_equal(y, w[::-1, ::-1])
    assert np.array_equal(model.params["y.weight"][0, 0], w)
    # relative to the .net file, not to the current directory
    monkeypatch.chdir(ROOT)
    assert dnnc.load(tmp_path / "a.net").graph.fixed["y.weight"].shape == (1, 1, 3, 3)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked-directory"])
def test_paths_never_leave_the_net_files_directory(tmp_path, how):
    outside = tmp_path / "secret.npy"
    np.save(outside, np.ones((3, 3), np.float32))
    home = tmp_path / "net"
    home.mkdir()
    if how == "dotdot":
        path = "../secret.npy"
    elif how == "absolute":
        path = str(outside)
    elif how == "symlink":
        (home / "link.npy").symlink_to(outside)
        path = "link.npy"
    else:
        (home / "d").symlink_to(tmp_path)
        path = "d/secret.npy"
    (home / "a.net").write_text(NET.format(path=path))
    with pytest.raises(DnncError) as info:
        dnnc.load(home / "a.net")
    assert info.value.loc is not None and info.value.loc.line == 3
    assert "absolute" in info.value.message or "leads outside the directory" in info.value.message


def test_the_train_block_names_its_data(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_train import write_npz

    trainmod = importlib.import_module("dnnc.training.train")
    write_npz(tmp_path / "few.npz", importlib.import_module("dnnc.io.data").embedded(), n_train=64, n_test=32)
    src = (ROOT / "examples" / "lenet300.net").read_text()
    src = src.replace("train {", 'train { data = "few.npz";')
    assert 'data = "few.npz"' in src
    (tmp_path / "mlp.net").write_text(src)
    net = dnnc.load(tmp_path / "mlp.net")
    assert trainmod.data_path(net) == str(tmp_path / "few.npz")
    assert trainmod.data_path(net, "other") == "other"  # --data wins
    r = trainmod.train(net, epochs=1, batch=32, out=str(tmp_path / "c.npz"), log=lambda *a: None, progress=False)
    assert r.evaluation.count == 32  # the test split of few.npz, not the embedded digits
