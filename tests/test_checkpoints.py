"""Checkpoints as files: `--resume` writes where it read, `train` never overwrites a checkpoint
of another network (or a file that is no checkpoint), and Model.load reads back parameters,
running statistics and the input normalization. Also Model.train_step's optimizer spec."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

import dnnc
from dnnc.base.errors import DnncError
from dnnc.te.optim import Optimizer

from test_errors import assert_clean_failure, dnnc_cli_many
from test_train import LENET300, LENET300_ARG, TINY, checkpoint_arrays, quiet, run_cli, write_npz

trainmod = importlib.import_module("dnnc.training.train")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from dnnc.io import data as datamod

    return write_npz(tmp_path_factory.mktemp("data") / "small.npz", datamod.embedded())


def epochs_in(path) -> int:
    with np.load(path) as z:
        return json.loads(bytes(z["__meta__"]).decode())["progress"]["epoch"]


# ----------------------------------------------------------------------------- the learning-rate decay

def test_checkpoints_name_the_lr_decay_and_old_ones_still_resume(tmp_path, small):
    # a checkpoint records `lr_decay`; one written before the rename records `schedule`: it still
    # loads, and a run resumed from it goes on under its decay, not the train block's (the same
    # bits as one run of two epochs)
    stepped = dnnc.load(LENET300.read_text().replace("lr_decay = cosine", "lr_decay = step(size=1, gamma=0.5)"))
    constant = dnnc.load(LENET300.read_text().replace("lr_decay = cosine", "lr_decay = constant"))
    opts = dict(data=str(small), batch=32, seed=2, log=quiet, progress=False)
    direct, after1, old = tmp_path / "direct.npz", tmp_path / "after1.npz", tmp_path / "old.npz"
    trainmod.train(stepped, epochs=2, out=str(direct), **opts)
    trainmod.train(stepped, epochs=1, out=str(after1), **opts)
    arrays = checkpoint_arrays(after1)
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    assert meta["settings"]["lr_decay"] == "step" and "schedule" not in meta["settings"]
    meta["settings"]["schedule"] = meta["settings"].pop("lr_decay")
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(old, **arrays)
    _, _, read = trainmod.read_checkpoint(old, constant)
    assert read["settings"]["lr_decay"] == "step" and "schedule" not in read["settings"]
    model = constant.compile(batch=4).load(str(old))
    assert model.params["h1.weight"].tobytes() == arrays["h1.weight"].tobytes()
    r = trainmod.train(constant, epochs=2, resume=str(old), **opts)
    want = checkpoint_arrays(direct)
    for k, v in r.model.params.items():
        assert v.tobytes() == want[k].tobytes(), k
    assert json.loads(bytes(checkpoint_arrays(old)["__meta__"]).decode())["settings"]["lr_decay"] == "step"


# ----------------------------------------------------------------------------- where train writes

def test_resume_writes_the_checkpoint_it_read(tmp_path, small):
    run = tmp_path / "run.npz"
    trainmod.train(dnnc.load(LENET300), str(small), epochs=1, batch=32, out=str(run), log=quiet, progress=False)
    r = run_cli("train", LENET300, "--data", small, "--epochs", "2", "--resume", "run.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert epochs_in(run) == 2, "the resumed run goes on in run.npz"
    assert r.stdout.splitlines()[-1].endswith("checkpoint run.npz")
    assert not (tmp_path / "lenet300.npz").exists()
    # --out still says otherwise
    other = tmp_path / "other.npz"
    r = run_cli("train", LENET300, "--data", small, "--epochs", "3", "--resume", run, "--out", other)
    assert r.returncode == 0, r.stderr
    assert epochs_in(other) == 3 and epochs_in(run) == 2


def _not_ours(tmp_path) -> dict:
    """Files that train must not overwrite, with what the refusal says of each."""
    meta = {"format": "dnnc-checkpoint", "network": "lenet5"}
    np.savez(tmp_path / "lenet5.npz", x=np.zeros(3), __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    np.savez(tmp_path / "weights5.npz", **{"c1.weight": np.zeros((6, 1, 5, 5), np.float32)})
    (tmp_path / "notes.npz").write_text("my notes, not a checkpoint\n")
    (tmp_path / "lenet300.net").write_text(LENET300.read_text())  # --out naming the source by mistake
    return {"lenet5.npz": "holds a checkpoint of network 'lenet5', not 'lenet300': choose another --out",
            "weights5.npz": "holds weights of another network ('c1.weight' is no parameter of 'lenet300')",
            "notes.npz": "is not a dnnc checkpoint: choose another --out",
            "lenet300.net": "is not a dnnc checkpoint: choose another --out"}


def test_train_never_overwrites_another_networks_checkpoint(tmp_path, small):
    cases = _not_ours(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in cases}
    argvs = [["train", LENET300_ARG, "--data", small, "--epochs", "1", "--out", tmp_path / name] for name in cases]
    argvs.append(["train", LENET300_ARG, "--data", small, "--epochs", "1", "--out", tmp_path / "nodir" / "x.npz"])
    results = dnnc_cli_many(argvs)
    for (name, fragment), r in zip(cases.items(), results):
        lines = assert_clean_failure(r, 1)
        assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / name}: error: ") and fragment in lines[0], \
            (name, lines)
        assert "epoch" not in r.stdout, "refused before training"
        assert (tmp_path / name).read_bytes() == before[name], name
    assert assert_clean_failure(results[-1], 1) == [f"{tmp_path / 'nodir' / 'x.npz'}: error: the directory does "
                                                    f"not exist"]
    # a checkpoint of the same network is replaced, from the library as from the command
    same = tmp_path / "same.npz"
    for epochs in (1, 2):
        trainmod.train(dnnc.load(LENET300), str(small), epochs=epochs, batch=32, out=str(same), log=quiet,
                       progress=False)
        assert epochs_in(same) == epochs
    with pytest.raises(DnncError, match="not 'lenet300': choose another --out"):
        trainmod.train(dnnc.load(LENET300), str(small), epochs=1, out=str(tmp_path / "lenet5.npz"), log=quiet)


def test_import_never_overwrites_another_networks_checkpoint(tmp_path):
    pytest.importorskip("onnx")
    model = tmp_path / "m.onnx"
    r = run_cli("export", LENET300, "-o", model)
    assert r.returncode == 0, r.stderr
    _not_ours(tmp_path)
    before = (tmp_path / "lenet5.npz").read_bytes()
    r = run_cli("import", model, "-o", tmp_path / "m.net", "--weights-out", tmp_path / "lenet5.npz")
    assert assert_clean_failure(r, 1) == [f"{tmp_path / 'lenet5.npz'}: error: holds a checkpoint of network "
                                          f"'lenet5', not 'lenet300': choose another --weights-out, or remove the "
                                          f"file to overwrite it"]
    assert (tmp_path / "lenet5.npz").read_bytes() == before and not (tmp_path / "m.net").exists()


# ----------------------------------------------------------------------------- Model.load

BN_NET = """
network bn {
    input image: [1, 28, 28]
    label digit: 10
    c1 = conv(image, filters=3, kernel=4, stride=4) |> batchnorm |> relu
    logits = dense(c1, 10)
    loss softmax_cross_entropy(logits, digit)
    output logits
}
"""


def test_model_load_takes_parameters_running_statistics_and_normalization(tmp_path, small):
    src = tmp_path / "bn.net"
    src.write_text(BN_NET)
    net = dnnc.load(src)
    ckpt = tmp_path / "bn.npz"
    r = trainmod.train(net, str(small), epochs=1, batch=32, seed=3, out=str(ckpt), log=quiet, progress=False)
    saved = checkpoint_arrays(ckpt)
    model = net.compile(batch=8).load(ckpt)  # load returns the model
    for name in list(model.params) + list(model.states):
        assert np.array_equal(model.buffers[name], saved[name]), name
    assert not np.array_equal(saved["c1.batchnorm.running_mean"], np.zeros(3)), "statistics were trained"
    mean, std = trainmod.read_checkpoint(ckpt, net)[2]["normalization"]
    assert model.normalization == pytest.approx((mean, std)) and 0 < mean < 1
    # forward() takes pixels as the data set holds them and normalizes them as training did
    with np.load(small) as z:
        pixels = z["x_test"][:8, None].astype(np.float32) / 255
    raw = net.compile(batch=8).load(ckpt)
    raw.normalization = None
    got = model.forward(image=pixels)["logits"]
    np.testing.assert_allclose(got, raw.forward(image=(pixels - mean) / std)["logits"], rtol=1e-6)
    np.testing.assert_allclose(got, r.model.forward(image=pixels)["logits"], rtol=1e-5, atol=1e-6)
    # another network's checkpoint: refused in one line naming the file
    with pytest.raises(DnncError) as info:
        dnnc.load(LENET300).compile(batch=1).load(ckpt)
    assert str(info.value) == f"{ckpt}: error: is a checkpoint of network 'bn', not 'lenet300'"
    assert "\n" not in info.value.render()


# ----------------------------------------------------------------------------- train_step's optimizer

def test_train_step_takes_an_optimizer_spec():
    batch = {"x": np.linspace(-1, 1, 20).reshape(4, 5), "y": np.array([0, 2, 1, 0])}
    results = {}
    for how in ("sgd(lr=0.1, momentum=0.9)", Optimizer("sgd", lr=0.1, momentum=0.9), "adam", "adam(lr=0.001)"):
        model = dnnc.load(TINY).compile(batch=4, dtype="f64", seed=1)
        losses = [model.train_step(how, **batch) for _ in range(3)]
        results[str(how)] = (losses, {k: v.copy() for k, v in model.params.items()})
    sgd_text, sgd_obj = results["sgd(lr=0.1, momentum=0.9)"], results[str(Optimizer("sgd", lr=0.1, momentum=0.9))]
    assert sgd_text[0] == sgd_obj[0] and sgd_text[0][2] < sgd_text[0][0], "the same steps; the loss falls"
    assert all(np.array_equal(sgd_text[1][k], sgd_obj[1][k]) for k in sgd_text[1])
    assert results["adam"][0] == results["adam(lr=0.001)"][0]
    model = dnnc.load(TINY).compile(batch=4)
    bad = {"sgdd": "unknown optimizer 'sgdd'; did you mean 'sgd'?", "sgd(lr=fast)": "expected NAME=NUMBER",
           "sgd(momentum=-1)": "momentum must be a non-negative number", "adam(lr=0.1": "expected sgd(...) or adam",
           "sgd(speed=1)": "sgd(...) takes lr=, momentum=, nesterov=, weight_decay="}
    for spec, fragment in bad.items():
        with pytest.raises(DnncError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            model.train_step(spec, **batch)
    with pytest.raises(DnncError, match="an optimizer is a string such as 'sgd"):
        model.train_step(0.1, **batch)
