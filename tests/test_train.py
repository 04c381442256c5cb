"""Training: exact resume, optimizers against torch.optim's formulas, learning-rate decay,
bad data and bad checkpoints at the command line, `dnnc eval`'s report, and the data loaders.

The data sets are small slices of the embedded digits written to tmp_path, so every run
takes a fraction of a second after compilation.
"""
from __future__ import annotations

import importlib

import gzip
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dnnc  # noqa: E402
from dnnc.io import data as datamod  # noqa: E402
trainmod = importlib.import_module("dnnc.training.train")  # the module (dnnc.train is the function)
from dnnc.base.errors import DnncError  # noqa: E402
from dnnc.te.optim import Optimizer, lr_at  # noqa: E402

LENET300 = ROOT / "examples" / "lenet300.net"
LENET300_ARG = "examples/lenet300.net"  # as a user types it, relative to the repository root


def quiet(*args, **kw):
    pass


@pytest.fixture(scope="module")
def digits():
    return datamod.embedded()


def write_npz(path, digits, n_train=320, n_test=64, seed=0):
    """A Keras-style .npz of uint8 images drawn from the embedded digits."""
    rng = np.random.default_rng(seed)
    i = rng.choice(len(digits.x_train), n_train, replace=False)
    j = rng.choice(len(digits.x_test), n_test, replace=False)
    as_u8 = lambda x: np.round(x * 255).astype(np.uint8)  # noqa: E731
    np.savez(path, x_train=as_u8(digits.x_train[i]), y_train=digits.y_train[i].astype(np.uint8),
             x_test=as_u8(digits.x_test[j]), y_test=digits.y_test[j].astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory, digits):
    return write_npz(tmp_path_factory.mktemp("data") / "small.npz", digits)


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "dnnc.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def checkpoint_arrays(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def assert_same_arrays(a: dict, b: dict, what=""):
    assert set(a) == set(b), what
    for k in a:
        if k == trainmod.META:
            continue
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}{k}"
        assert a[k].tobytes() == b[k].tobytes(), f"{what}{k} differs (max |diff| {np.abs(a[k] - b[k]).max()})"


# ----------------------------------------------------------------------------- (a) resume

def test_resume_after_epoch_one_is_bit_exact(tmp_path, small):
    net = dnnc.load(LENET300)
    direct, after1 = tmp_path / "direct.npz", tmp_path / "after1.npz"

    def log(msg):  # train() logs an epoch after writing its checkpoint: keep the first one
        if msg.startswith("epoch") and re.match(r"epoch\s+1/2\b", msg):
            after1.write_bytes(direct.read_bytes())

    r_direct = trainmod.train(net, data=str(small), epochs=2, batch=32, seed=7, out=str(direct), log=log,
                              progress=False)
    assert after1.exists()
    meta = trainmod.read_checkpoint(after1, net)[2]
    assert meta["progress"]["epoch"] == 1 and meta["progress"]["global_step"] == 10
    resumed = tmp_path / "resumed.npz"
    r_resumed = trainmod.train(net, data=str(small), epochs=2, batch=32, seed=7, out=str(resumed),
                               resume=str(after1), log=quiet, progress=False)
    a, b = checkpoint_arrays(direct), checkpoint_arrays(resumed)
    assert any(k.startswith(trainmod.STATE) for k in a), "the optimizer state is checkpointed"
    assert_same_arrays(a, b)
    for k in r_direct.model.params:
        assert r_direct.model.params[k].tobytes() == r_resumed.model.params[k].tobytes(), k
    assert len(r_resumed.history) == 2
    for h1, h2 in zip(r_direct.history, r_resumed.history):
        assert {k: v for k, v in h1.items() if k != "seconds"} == {k: v for k, v in h2.items() if k != "seconds"}
    assert r_direct.evaluation.accuracy == r_resumed.evaluation.accuracy
    # and training did something: the parameters moved from the checkpoint after epoch 1
    p1 = checkpoint_arrays(after1)
    assert not np.array_equal(p1["h1.weight"], a["h1.weight"])


DROPOUT300 = LENET300.read_text().replace("lr_decay = cosine", "lr_decay = constant").replace(
    "h1 = dense(image, 300) |> relu", "h1 = dense(image, 300) |> relu |> dropout(rate=0.3)")


def test_resume_with_dropout_and_a_later_epoch_count(tmp_path, small):
    # run 1 epoch, then resume it asking for 2: with a constant learning rate this is the same run
    # as 2 epochs at once, dropout masks included (they follow the global step and the seed)
    assert "dropout" in DROPOUT300 and "constant" in DROPOUT300
    src = tmp_path / "drop300.net"
    src.write_text(DROPOUT300)
    net = dnnc.load(src)
    a, b, direct = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "direct.npz"
    trainmod.train(net, data=str(small), epochs=1, batch=32, seed=3, out=str(a), log=quiet, progress=False)
    # a different --seed on the command line does not override the checkpoint's
    trainmod.train(net, data=str(small), epochs=2, batch=32, seed=99, out=str(b), resume=str(a), log=quiet,
                   progress=False)
    trainmod.train(net, data=str(small), epochs=2, batch=32, seed=3, out=str(direct), log=quiet, progress=False)
    assert_same_arrays(checkpoint_arrays(direct), checkpoint_arrays(b))


def test_dropout_masks_change_between_training_steps(tmp_path, digits):
    # 32 copies of one example and lr 0: the parameters never change, so the training loss
    # differs from step to step only through dropout's masks
    x = np.repeat(np.round(digits.x_train[:1] * 255).astype(np.uint8), 32, axis=0)
    y = np.repeat(digits.y_train[:1], 32)
    data = tmp_path / "same.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    src = tmp_path / "drop300.net"
    src.write_text(DROPOUT300)
    r = trainmod.train(dnnc.load(src), data=str(data), epochs=3, batch=32, lr=0.0, seed=1,
                       out=str(tmp_path / "o.npz"), log=quiet, progress=False)
    losses = [h["train_loss"] for h in r.history]
    assert len(set(losses)) == 3, f"the same dropout mask at every step: losses {losses}"


# ----------------------------------------------------------------------------- (b) optimizers

TINY = """
network tiny {
    input x: [5]
    label y: 3
    h = dense(x, 6) |> tanh
    logits = dense(h, 3)
    loss softmax_cross_entropy(logits, y)
}
"""


def numpy_step(opt: Optimizer, params, grads, state, t):
    """One step of torch.optim.SGD (dampening 0) or torch.optim.Adam, in numpy."""
    for k in params:
        g = grads[k] + opt.weight_decay * params[k]
        if opt.kind == "sgd":
            if opt.momentum:
                buf = g.copy() if k not in state else opt.momentum * state[k] + g
                state[k] = buf
                g = g + opt.momentum * buf if opt.nesterov else buf
            params[k] = params[k] - opt.lr * g
        else:
            m, v = state.get(k, (np.zeros_like(g), np.zeros_like(g)))
            m = opt.beta1 * m + (1 - opt.beta1) * g
            v = opt.beta2 * v + (1 - opt.beta2) * g * g
            state[k] = (m, v)
            step_size = opt.lr / (1 - opt.beta1 ** t)
            denom = np.sqrt(v) / math.sqrt(1 - opt.beta2 ** t) + opt.eps
            params[k] = params[k] - step_size * m / denom


def torch_optimizer(torch, opt: Optimizer, tensors):
    if opt.kind == "sgd":
        return torch.optim.SGD(tensors, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                               weight_decay=opt.weight_decay)
    return torch.optim.Adam(tensors, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                            weight_decay=opt.weight_decay)


OPTIMIZERS = {
    "sgd": Optimizer("sgd", lr=0.1),
    "sgd-momentum": Optimizer("sgd", lr=0.1, momentum=0.9),
    "sgd-nesterov-wd": Optimizer("sgd", lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.05),
    "sgd-wd": Optimizer("sgd", lr=0.05, weight_decay=0.1),
    "adam": Optimizer("adam", lr=0.01),
    "adam-wd-betas": Optimizer("adam", lr=0.02, weight_decay=0.01, beta1=0.8, beta2=0.99, eps=1e-6),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_matches_torch_formulas(name):
    opt = OPTIMIZERS[name]
    model = dnnc.load(TINY).compile(batch=4, dtype="f64", seed=2)
    rng = np.random.default_rng(4)
    ref = {k: v.copy() for k, v in model.params.items()}
    initial = {k: v.copy() for k, v in ref.items()}
    state: dict = {}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in ref.items()}
        topt = torch_optimizer(torch, opt, list(tp.values()))
    for t in range(1, 4):
        batch = {"x": rng.normal(size=(4, 5)), "y": rng.integers(0, 3, 4)}
        _, grads = model.loss_and_grad(**batch)  # at the current parameters (both sides agree on them)
        for k in ref:
            np.testing.assert_allclose(model.params[k], ref[k], rtol=1e-12, atol=1e-14)
        numpy_step(opt, ref, grads, state, t)
        if torch is not None:
            for k, p in tp.items():
                p.grad = torch.tensor(grads[k])
            topt.step()
            for k, p in tp.items():
                np.testing.assert_allclose(ref[k], p.detach().numpy(), rtol=1e-12, atol=1e-14,
                                           err_msg=f"numpy formulas vs torch.optim, {k} step {t}")
        model.train_step(opt, step=t, **batch)
        for k in ref:
            np.testing.assert_allclose(model.params[k], ref[k], rtol=1e-10, atol=1e-13,
                                       err_msg=f"{name}: {k} after step {t}")
    # the parameters moved
    assert all(not np.allclose(model.params[k], initial[k]) for k in ref)


def test_train_step_lr_override():
    opt = Optimizer("sgd", lr=0.1)
    model = dnnc.load(TINY).compile(batch=2, dtype="f64", seed=1)
    batch = {"x": np.ones((2, 5)), "y": np.array([0, 2])}
    w0 = {k: v.copy() for k, v in model.params.items()}
    _, g = model.loss_and_grad(**batch)
    model.train_step(opt, lr=0.5, **batch)
    for k in w0:
        np.testing.assert_allclose(model.params[k], w0[k] - 0.5 * g[k], rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- (c) learning-rate decay

def test_lr_constant():
    for e in range(4):
        for k in range(5):
            assert lr_at("constant", 0.3, e, 4, k, 5) == 0.3


def test_lr_step():
    # x gamma every step_size epochs, within an epoch constant
    for e in range(9):
        for k in (0, 3):
            assert lr_at("step", 0.2, e, 9, k, 4, step_size=2, gamma=0.5) == pytest.approx(0.2 * 0.5 ** (e // 2),
                                                                                          rel=1e-15)
    # default step size: a third of the epochs
    assert [lr_at("step", 1.0, e, 9, 0, 4) for e in range(9)] == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01], rel=1e-12)
    assert lr_at("step", 1.0, 1, 2, 0, 4) == pytest.approx(0.1)  # epochs // 3 == 0: every epoch


def test_lr_cosine():
    epochs, spe, base = 3, 7, 0.4
    total = epochs * spe
    rates = [lr_at("cosine", base, e, epochs, k, spe) for e in range(epochs) for k in range(spe)]
    for t, r in enumerate(rates):
        assert r == pytest.approx(0.5 * base * (1 + math.cos(math.pi * t / total)), rel=1e-14, abs=1e-16)
    assert rates[0] == base
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert 0 < rates[-1] < 0.01 * base


def test_lr_unknown_decay():
    with pytest.raises(ValueError):
        lr_at("linear", 0.1, 0, 1, 0, 1)


def test_lr_decay_from_train_block():
    net = dnnc.load(LENET300.read_text().replace("lr_decay = cosine", "lr_decay = step(size=2, gamma=0.5)"))
    s = trainmod.settings_from(net)
    assert (s.lr_decay, s.step_size, s.gamma) == ("step", 2, 0.5)
    assert trainmod.settings_from(dnnc.load(LENET300)).lr_decay == "cosine"
    assert trainmod.LR_DECAYS == ("constant", "step", "cosine")


@pytest.mark.parametrize("value", ["cosine", "step(size=5, gamma=0.1)"])
def test_schedule_in_a_train_block_names_lr_decay(value):
    src = LENET300.read_text().replace("lr_decay = cosine", f"schedule = {value}")
    with pytest.raises(DnncError) as info:
        dnnc.load(src)
    e = info.value
    assert e.message == (f"the learning-rate schedule is now 'lr_decay = {value}' "
                         "(the name 'schedule' is for loop schedules)")
    line = next(k for k, text in enumerate(src.splitlines(), 1) if "schedule =" in text)
    assert (e.loc.line, e.loc.col) == (line, src.splitlines()[line - 1].index("schedule") + 1)


# ----------------------------------------------------------------------------- (d) bad data

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(a: np.ndarray, dtype=np.uint8) -> bytes:
    a = np.asarray(a).astype(dtype)
    head = bytes([0, 0, IDX_CODES[a.dtype], a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.tobytes()


def write_mnist_dir(d: Path, digits, n_train=96, n_test=40, gz=True, overrides=None):
    """The four MNIST files under their standard names; overrides: {stem: raw bytes}."""
    d.mkdir(parents=True, exist_ok=True)
    u8 = lambda x: np.round(x * 255).astype(np.uint8)  # noqa: E731
    arrays = {
        "train-images-idx3-ubyte": idx_bytes(u8(digits.x_train[:n_train])),
        "train-labels-idx1-ubyte": idx_bytes(digits.y_train[:n_train]),
        "t10k-images-idx3-ubyte": idx_bytes(u8(digits.x_test[:n_test])),
        "t10k-labels-idx1-ubyte": idx_bytes(digits.y_test[:n_test]),
    }
    arrays.update(overrides or {})
    paths = {}
    for stem, raw in arrays.items():
        p = d / (stem + ".gz" if gz else stem)
        p.write_bytes(gzip.compress(raw) if gz else raw)
        paths[stem] = p
    return paths


def bad_data_cases(tmp: Path, digits):
    """(name, --data argument, the file the error must name, a word the message must contain)."""
    cases = []
    ok_labels = digits.y_train[:96]

    little = bytearray(idx_bytes(np.round(digits.x_train[:96] * 255).astype(np.uint8)))
    little[0:4] = (2051).to_bytes(4, "little")  # the magic number written little-endian
    p = write_mnist_dir(tmp / "magic", digits, overrides={"train-images-idx3-ubyte": bytes(little)})
    cases.append(("wrong magic", tmp / "magic", p["train-images-idx3-ubyte"], "magic"))

    bad = bytearray(idx_bytes(ok_labels))
    bad[0:4] = b"\x1f\x8c\x08\x01"
    p = write_mnist_dir(tmp / "magic2", digits, gz=False, overrides={"train-labels-idx1-ubyte": bytes(bad)})
    cases.append(("wrong magic, raw", tmp / "magic2", p["train-labels-idx1-ubyte"], "magic"))

    full = idx_bytes(np.round(digits.x_test[:40] * 255).astype(np.uint8))
    p = write_mnist_dir(tmp / "trunc", digits, gz=False, overrides={"t10k-images-idx3-ubyte": full[:-100]})
    cases.append(("truncated raw IDX", tmp / "trunc", p["t10k-images-idx3-ubyte"], "truncated"))

    p = write_mnist_dir(tmp / "trunc_gz_body", digits, overrides={"t10k-images-idx3-ubyte": full[:-100]})
    cases.append(("truncated IDX, gzipped", tmp / "trunc_gz_body", p["t10k-images-idx3-ubyte"], "truncated"))

    p = write_mnist_dir(tmp / "trunc_gz", digits)
    stream = p["train-images-idx3-ubyte"].read_bytes()
    p["train-images-idx3-ubyte"].write_bytes(stream[: len(stream) // 2])
    cases.append(("truncated gzip stream", tmp / "trunc_gz", p["train-images-idx3-ubyte"], "truncated"))

    p = write_mnist_dir(tmp / "counts", digits, overrides={"train-labels-idx1-ubyte": idx_bytes(ok_labels[:90])})
    cases.append(("image and label counts differ", tmp / "counts", p["train-images-idx3-ubyte"], "labels"))

    wide = ok_labels.copy()
    wide[5] = 12
    p = write_mnist_dir(tmp / "classes", digits, overrides={"train-labels-idx1-ubyte": idx_bytes(wide)})
    cases.append(("label outside the classes (IDX)", tmp / "classes", p["train-labels-idx1-ubyte"], "12"))

    npz = tmp / "classes.npz"
    write_npz(npz, digits, 64, 16)
    z = dict(np.load(npz))
    z["y_test"] = z["y_test"].astype(np.int64)
    z["y_test"][3] = -1
    np.savez(npz, **z)
    cases.append(("label outside the classes (npz)", npz, npz, "-1"))

    npz = tmp / "missing.npz"
    write_npz(npz, digits, 64, 16)
    z = dict(np.load(npz))
    del z["y_test"]
    np.savez(npz, **z)
    cases.append(("npz missing a key", npz, npz, "y_test"))

    npz = tmp / "counts.npz"
    write_npz(npz, digits, 64, 16)
    z = dict(np.load(npz))
    z["y_train"] = z["y_train"][:60]
    np.savez(npz, **z)
    cases.append(("npz counts differ", npz, npz, "60"))

    empty = tmp / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no data here\n")
    cases.append(("directory without IDX files", empty, empty, "IDX"))

    text = tmp / "notes.npz"
    text.write_text("this is not a zip archive\n")
    cases.append(("npz that is not one", text, text, "not an .npz"))
    return cases


def test_bad_data_at_the_command_line(tmp_path, digits):
    cases = bad_data_cases(tmp_path / "bad", digits)
    failures = []
    for name, data, culprit, word in cases:
        out_dir = tmp_path / ("out-" + re.sub(r"\W+", "-", name))
        out_dir.mkdir()
        r = run_cli("train", LENET300_ARG, "--data", data, "--epochs", 1, "--out", out_dir / "out.npz")
        lines = r.stderr.strip().splitlines()
        problems = []
        if r.returncode == 0:
            problems.append("exit status 0")
        if "Traceback" in r.stderr + r.stdout:
            problems.append("a traceback")
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr")
        elif not lines[0].startswith(f"{culprit}: error: "):
            problems.append(f"does not start with '{culprit}: error: '")
        elif word.lower() not in lines[0].split(": error: ", 1)[1].lower():
            problems.append(f"does not mention {word!r}")
        if list(out_dir.iterdir()):
            problems.append(f"left files behind: {[p.name for p in out_dir.iterdir()]}")
        if problems:
            failures.append(f"{name}: {', '.join(problems)}\n    stderr: {r.stderr.strip()[:300]}")
    assert not failures, "\n".join(failures)


def test_bad_data_in_the_library(tmp_path, digits):
    # the same faults raise DnncError naming the file from the Python API
    for name, data, culprit, word in bad_data_cases(tmp_path, digits):
        with pytest.raises(DnncError) as e:
            ds = datamod.load(data)
            datamod.fit(ds, (1, 28, 28), 10)
        assert e.value.render().startswith(f"{culprit}: error: "), name
        assert word.lower() in e.value.message.lower(), name
        assert "pickle" not in e.value.message, name


# ----------------------------------------------------------------------------- (e) bad checkpoints

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small):
    """A real checkpoint of lenet300 after one epoch on the small set."""
    d = tmp_path_factory.mktemp("ckpt")
    out = d / "lenet300.npz"
    trainmod.train(dnnc.load(LENET300), data=str(small), epochs=1, batch=32, seed=1, out=str(out), log=quiet,
                   progress=False)
    return out


def test_bad_checkpoints_for_eval(tmp_path, checkpoint, small):
    good = checkpoint_arrays(checkpoint)
    cases = []
    missing = dict(good)
    del missing["h2.bias"]
    np.savez(tmp_path / "missing.npz", **missing)
    cases.append(("missing parameter", tmp_path / "missing.npz", "h2.bias"))
    shaped = dict(good)
    shaped["h1.weight"] = shaped["h1.weight"][:, :700]
    np.savez(tmp_path / "shape.npz", **shaped)
    cases.append(("misshapen parameter", tmp_path / "shape.npz", "h1.weight"))
    (tmp_path / "text.npz").write_text("h1.weight = 0\n")
    cases.append(("not an npz", tmp_path / "text.npz", "npz"))
    raw = checkpoint.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    cases.append(("truncated npz", tmp_path / "cut.npz", "npz"))
    flipped = bytearray(raw)
    k = raw.find(b"h1.weight.npy") + 2000  # inside the stored array: the zip's CRC no longer matches
    flipped[k:k + 8] = bytes(255 - x for x in flipped[k:k + 8])
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    cases.append(("corrupted bytes in an npz", tmp_path / "flipped.npz", "npz"))
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npz").write_bytes((tmp_path / "array.npy").read_bytes())
    cases.append(("an .npy array named .npz", tmp_path / "array.npz", "npy"))
    nonfinite = dict(good)
    nonfinite["logits.bias"] = nonfinite["logits.bias"].copy()
    nonfinite["logits.bias"][0] = np.nan
    np.savez(tmp_path / "nan.npz", **nonfinite)
    cases.append(("a NaN parameter", tmp_path / "nan.npz", "logits.bias"))
    failures = []
    for name, path, word in cases:
        r = run_cli("eval", LENET300_ARG, "--weights", path, "--data", small)
        lines = r.stderr.strip().splitlines()
        ok = (r.returncode != 0 and "Traceback" not in r.stderr + r.stdout and len(lines) == 1
              and lines[0].startswith(f"{path}: error: ") and word in lines[0].split(": error: ", 1)[1]
              and "pickle" not in r.stderr and "accuracy" not in r.stdout)
        if not ok:
            failures.append(f"{name}: exit {r.returncode}, stderr: {r.stderr.strip()[:300]}")
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------- (f) dnnc eval

def parse_eval(stdout: str):
    lines = stdout.splitlines()
    m = re.match(r"accuracy ([\d.]+)% on (\d+) examples", lines[0])
    assert m, stdout
    per = dict(re.findall(r"(\d+):([\d.]+)%", next(l for l in lines if l.startswith("per class"))))
    k = next(i for i, l in enumerate(lines) if l.startswith("confusion"))
    rows = [list(map(int, l.split()[1:])) for l in lines[k + 2:] if l.strip()]
    return float(m.group(1)), int(m.group(2)), {int(c): float(a) for c, a in per.items()}, np.array(rows)


def test_eval_report_counts_every_example(tmp_path, checkpoint, digits):
    data = write_npz(tmp_path / "eval.npz", digits, n_train=40, n_test=70, seed=5)  # 70 = 2 x 32 + 6
    r = run_cli("eval", LENET300_ARG, "--weights", checkpoint, "--data", data, "--batch", 32)
    assert r.returncode == 0, r.stderr
    acc, count, per, conf = parse_eval(r.stdout)
    assert count == 70 and conf.shape == (10, 10)
    assert conf.sum() == 70
    # the matrix is the true one: predictions of the checkpoint's parameters on every example
    params, _, meta = trainmod.read_checkpoint(checkpoint, dnnc.load(LENET300))
    mean, std = meta["normalization"]
    with np.load(data) as z:
        x = (z["x_test"].astype(np.float32) / 255.0 - mean) / std
        y = z["y_test"].astype(np.int64)
    h = x.reshape(70, -1).astype(np.float64)
    for layer in ("h1", "h2"):
        h = np.maximum(h @ params[f"{layer}.weight"].T + params[f"{layer}.bias"], 0)
    pred = (h @ params["logits.weight"].T + params["logits.bias"]).argmax(axis=1)
    expect = np.zeros((10, 10), np.int64)
    np.add.at(expect, (y, pred), 1)
    np.testing.assert_array_equal(conf, expect)
    np.testing.assert_array_equal(conf.sum(axis=1), np.bincount(y, minlength=10))
    assert acc == pytest.approx(100 * np.trace(expect) / 70, abs=0.006)
    for c in range(10):
        if expect[c].sum():
            assert per[c] == pytest.approx(100 * expect[c, c] / expect[c].sum(), abs=0.06)
    # the library's evaluate agrees, and so does a batch that divides nothing evenly
    ev = trainmod.evaluate(dnnc.load(LENET300), str(checkpoint), str(data), batch=13)
    assert ev.count == 70 and ev.confusion.sum() == 70
    np.testing.assert_array_equal(ev.confusion, expect)


# ----------------------------------------------------------------------------- (g) loaders

def test_idx_gzipped_and_raw_agree(tmp_path, digits):
    images = np.round(digits.x_test[:30] * 255).astype(np.uint8)
    raw = idx_bytes(images)
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    a = datamod.read_idx(tmp_path / "a-idx3-ubyte")
    b = datamod.read_idx(tmp_path / "a-idx3-ubyte.gz")
    assert a.shape == b.shape == (30, 28, 28) and a.dtype == b.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, images)
    # other element types, big-endian as the format says
    for dtype in (">i2", ">i4", ">f4", ">f8", np.int8):
        v = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
        (tmp_path / "t.idx").write_bytes(idx_bytes(v, dtype))
        got = datamod.read_idx(tmp_path / "t.idx")
        np.testing.assert_array_equal(got, v)
        assert got.shape == (2, 3, 4)


def test_mnist_names_in_a_directory(tmp_path, digits):
    for gz in (True, False):
        d = tmp_path / ("gz" if gz else "raw")
        write_mnist_dir(d, digits, n_train=50, n_test=20, gz=gz)
        ds = datamod.load(d)
        assert ds.x_train.shape == (50, 28, 28) and ds.x_test.shape == (20, 28, 28)
        np.testing.assert_array_equal(ds.y_train, digits.y_train[:50])
        np.testing.assert_array_equal(ds.y_test, digits.y_test[:20])
        np.testing.assert_allclose(ds.x_train, np.round(digits.x_train[:50] * 255) / 255, atol=1e-7)
        assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    # a mix of gzipped and raw files, and the mirrors' train-images.idx3-ubyte spelling
    d = tmp_path / "mixed"
    write_mnist_dir(d, digits, n_train=50, n_test=20, gz=True)
    (d / "t10k-labels-idx1-ubyte.gz").rename(d / "t10k-labels.idx1-ubyte.gz")
    raw = gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())
    (d / "train-images-idx3-ubyte.gz").unlink()
    (d / "train-images-idx3-ubyte").write_bytes(raw)
    ds = datamod.load(d)
    assert len(ds.x_train) == 50 and len(ds.y_test) == 20
    # one set of images and labels alone: split 80/20
    d = tmp_path / "one"
    d.mkdir()
    (d / "images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.round(digits.x_test[:25] * 255))))
    (d / "labels-idx1-ubyte").write_bytes(idx_bytes(digits.y_test[:25]))
    ds = datamod.load(d)
    assert (len(ds.x_train), len(ds.x_test)) == (20, 5)
    np.testing.assert_array_equal(ds.y_test, digits.y_test[20:25])


def test_train_on_an_idx_directory(tmp_path, digits):
    d = tmp_path / "mnist"
    write_mnist_dir(d, digits, n_train=64, n_test=20)
    r = trainmod.train(dnnc.load(LENET300), data=str(d), epochs=1, batch=32, seed=0, out=str(tmp_path / "o.npz"),
                       log=quiet, progress=False)
    assert r.evaluation.count == 20 and r.evaluation.confusion.sum() == 20
    assert (tmp_path / "o.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist", "o.npz"]  # no temp files left


def test_a_non_finite_gradient_stops_training_naming_the_layer_or_is_skipped(tmp_path):
    """A learning rate of 1e12 blows up at the second step: stop names the parameter and layer
    (and writes no checkpoint of broken weights); skip undoes such steps and goes on."""
    import subprocess
    import sys

    net = str(ROOT / "examples" / "lenet5.net")
    out = tmp_path / "w.npz"
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "train", net, "--epochs", "1", "--lr", "1e12", "--out",
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "error: the gradient of c1.weight (layer c1.conv) became nan at epoch 1, step 2" in r.stderr
    assert not out.exists()
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "train", net, "--epochs", "1", "--lr", "1e12",
                        "--on-nan", "skip", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "skipped: the gradient of c1.weight (layer c1.conv) became nan" in r.stdout and "steps skipped)" in r.stdout
    import numpy as np

    assert all(np.isfinite(v).all() for k, v in np.load(out).items() if not k.startswith("__"))
