"""Every network of the zoo (examples/) against its PyTorch twin (tests/torch_twin.py) and the
float64 numpy reference (tests/numpy_net.py), at small input sizes so CI stays fast:

- the forward pass in inference (running statistics set to random values), compiled in
  float32 as deployed (and in float64 for the networks trained);
- in training (batch statistics, float64), three SGD steps (momentum, weight decay; Nesterov
  for every other network) on three batches against torch.optim.SGD: at each step the loss
  and every parameter's gradient, change and momentum; the batchnorm running statistics after
  the steps; the first step's loss and running statistics against numpy too.

Training is compared in float64 because in float32 it is not reproducible at these sizes:
batchnorm over the few values per channel of a 1x1 stage makes PyTorch's own float32
gradients of ResNet-18 differ from its float64 ones by 2e-3, and by O(1) after three steps.
In float64 dnnc and PyTorch agree to 1e-10 (the tolerance is 1e-8), in float32 to 4e-7 (1e-4).
Errors are relative to the tensor's largest reference value; a gradient that batchnorm
cancels (a conv bias before it) is zero up to roundoff, so a tensor's scale counts as at least
1e-3 of the largest gradient (or change) of any parameter.

Dropout is compiled at rate 0 (the rate rewritten in the source): dnnc's mask is a hash of
the step, position and layer, not torch's random numbers. Inference is the same at any rate,
and test_random_nets.py checks dropout in training against finite differences. dnnc's
gradients are read from the training step's `.grad` buffers, so a network compiles three
programs (forward in float32, forward and training step in float64), not four.

Compiling dominates: 2-4 s for a forward pass, 8-25 s for a training step, single-threaded.
So CI trains four networks (ResNet-20, DenseNet, SqueezeNet, the MLP) and checks the forward
pass of the other three; DNNC_ZOO=full trains all seven. The networks are checked in two worker
processes at once; DNNC_TEST_WORKERS=1 checks them one after the other in the test process
(for a debugger).
"""
from __future__ import annotations

import multiprocessing
import os
import re
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (ROOT, HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import dnnc  # noqa: E402
import numpy_net  # noqa: E402
from dnnc.te.optim import Optimizer  # noqa: E402

TOL32 = 1e-4  # float32 against float64
TOL = 1e-8  # float64 against float64
FLOOR = 1e-3  # of the largest gradient (or displacement) of any parameter
STEPS = 3
LR, MOMENTUM, WD = 0.01, 0.9, 0.01  # weight decay large enough that its share of a step shows
WORKERS = int(os.environ.get("DNNC_TEST_WORKERS", "2"))

# per-example input and batch: the ImageNet networks at about their smallest size (1x1 before
# the classifier), the digit networks at a quarter of 28x28; the slowest to compile first.
# Batch 3 is odd, so vector loops over the batch have a remainder; MobileNetV2 needs 8: at 1x1
# a depthwise conv reads one tap, and batchnorm's variance over 3 values of a small tap is
# below its eps, which makes the gradients 1e8 and the steps diverge (in PyTorch alike).
ZOO = {
    "mobilenetv2": ((3, 16, 16), 8),  # five stride-2 stages: 16 -> 1 by the fourth
    "resnet18": ((3, 16, 16), 3),  # stem and pool /4, then /2 thrice: 1x1 in the last stage
    "resnet20": ((1, 8, 8), 3),
    "vgg11_bn": ((3, 32, 32), 3),  # five 2x2 max pools
    "squeezenet": ((3, 32, 32), 3),  # a stride-2 3x3 stem and three stride-2 3x3 pools
    "densenet": ((1, 8, 8), 3),
    "mlp_dropout": ((1, 28, 28), 3),
}


# Compiling the training programs of the three largest takes 15-30 s each, too long for CI:
# it trains the other four; DNNC_ZOO=full trains all seven (about 2.5 minutes on 2 cores).
TRAINED = set(ZOO) if os.environ.get("DNNC_ZOO") == "full" else {"resnet20", "densenet", "squeezenet",
                                                                  "mlp_dropout"}


def zoo_network(name: str):
    """The network at its CI input size, dropout at rate 0 (with the number rewritten)."""
    src = (ROOT / "examples" / f"{name}.net").read_text()
    src, n = re.subn(r"dropout\(([^()]*?)(?:rate=)?[0-9.]+\)", r"dropout(\1rate=0.0)", src)
    assert n == src.count("dropout("), "every dropout's rate rewritten"
    net = dnnc.load(src)
    (image,) = net.inputs
    return net.with_inputs({image: ZOO[name][0]})


def err(got, want, floor: float = 0.0) -> float:
    """The largest |got - want|, relative to want's largest magnitude (at least `floor`)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), floor, 1e-30))


def check(name: str) -> dict:
    """{what was compared: (its error, the tolerance)}."""
    try:
        return _check(name)
    except Exception as e:  # dnnc's errors carry fields that do not unpickle in the parent
        raise RuntimeError(f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc()}") from None


def _check(name: str) -> dict:
    import torch
    from torch_twin import Twin

    net, batch_size = zoo_network(name), ZOO[name][1]
    f32 = net.compile(batch=batch_size, seed=1)  # the forward pass as it is deployed
    rng = np.random.default_rng(sum(map(ord, name)))
    # values float32 holds exactly: He-normal weights (with the prelude's PyTorch initialization
    # and running statistics, the deeper networks' outputs hardly depend on their input), scales
    # and shifts off 1 and 0 (where their gradients are special)
    def draw(k, shape):
        if len(shape) > 1:
            return rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[1:]))
        return (1.0 if k.endswith("batchnorm.weight") else 0.0) + 0.1 * rng.normal(size=shape)

    params = {k: np.float32(draw(k, p.shape)).astype(np.float64) for k, p in f32.params.items()}
    states = {k: np.float32(rng.uniform(0.5, 2.0, s.shape) if k.endswith("running_var") else
                            rng.normal(0, 0.2, s.shape)).astype(np.float64) for k, s in f32.states.items()}
    f32.params.update_from(params)
    f32.states.update_from(states)
    (image,), (label,), (out,) = net.inputs, f32.graph.labels, f32.outputs
    shape, classes = net.inputs[image], f32.graph.classes[label]

    def batch():
        return {image: np.float32(rng.normal(size=(batch_size,) + shape)).astype(np.float64),
                label: rng.integers(0, classes, batch_size)}

    rep: dict[str, tuple[float, float]] = {}
    feed = batch()
    x = {image: feed[image]}
    g = net.at_batch(batch_size)
    ref = Twin(g, params, states).run(x)[out].detach().numpy()
    ref_np = numpy_net.run(g, params, x, states)[0][out]
    got = f32.forward(**x)[out]
    rep["forward in float32"] = (err(got, ref), TOL32)
    # and what depends on the input, which must be a part worth comparing
    spread = ref - ref.mean(axis=0)
    rep["forward in float32 less its mean over the batch"] = (err(got - got.mean(axis=0), spread), TOL32)
    assert np.abs(spread).max() > 1e-2 * np.abs(ref).max(), f"{name}: the output hardly depends on the input"
    rep["torch's forward against numpy's"] = (err(ref, ref_np), TOL)  # each reference checks the other
    if name not in TRAINED:
        return rep
    model = net.compile(batch=batch_size, seed=1, dtype="f64")
    model.params.update_from(params)
    model.states.update_from(states)
    rep["forward"] = (err(model.forward(**x)[out], ref), TOL)

    g = net.at_batch(batch_size, training=True)
    twin = Twin(g, model.params, model.states)
    nesterov = list(ZOO).index(name) % 2 == 1
    opt = Optimizer("sgd", lr=LR, momentum=MOMENTUM, nesterov=nesterov, weight_decay=WD)
    topt = torch.optim.SGD(list(twin.params.values()), lr=LR, momentum=MOMENTUM, nesterov=nesterov,
                           weight_decay=WD)
    for step in range(1, STEPS + 1):
        if step > 1:
            feed = batch()
            # each step from the same state: the twin takes dnnc's parameters and momentum
            # (compared below), so roundoff cannot grow over the steps (it does by 1e3 a step
            # in ResNet-18, whose batchnorm sees 3 values per channel at 1x1)
            with torch.no_grad():
                for k, p in twin.params.items():
                    p.copy_(torch.from_numpy(model.params[k]))
                    topt.state[p]["momentum_buffer"].copy_(torch.from_numpy(model.buffers[k + ".v"]))
        before = {k: v.copy() for k, v in model.params.items()}
        if step == 1:
            ref_np, states_np = numpy_net.run(g, before, feed, dict(model.states))
        loss = model.train_step(opt, step=step, **feed)
        topt.zero_grad()
        tl = twin.run(feed, training=True)["loss"]
        tl.backward()
        topt.step()
        rep[f"loss at step {step}"] = (err(loss, tl.item()), TOL)
        if step == 1:
            rep["loss at step 1 against numpy"] = (err(loss, ref_np["loss"]), TOL)
            for k, v in states_np.items():
                rep[f"{k} after step 1 against numpy"] = (err(model.states[k], v), TOL)
        grads = {k: p.grad.numpy() for k, p in twin.params.items()}
        moved = {k: p.detach().numpy() - before[k] for k, p in twin.params.items()}
        top, most = (max(np.abs(v).max() for v in d.values()) for d in (grads, moved))
        for k, p in twin.params.items():  # dnnc's gradients: the .grad buffers of the step
            rep[f"gradient of {k} at step {step}"] = (err(model.buffers[k + ".grad"], grads[k], FLOOR * top), TOL)
            rep[f"change of {k} at step {step}"] = (err(model.params[k] - before[k], moved[k], FLOOR * most), TOL)
            rep[f"momentum of {k} at step {step}"] = (err(model.buffers[k + ".v"], topt.state[p]["momentum_buffer"]),
                                                      TOL)
    for k, v in twin.states.items():
        rep[f"{k} after {STEPS} steps"] = (err(model.states[k], v.numpy()), TOL)
    return rep


@pytest.fixture(scope="module")
def report(request):
    """report(name): the errors of one network; with workers, every network of this run is
    submitted when the module starts, the slowest first."""
    pytest.importorskip("torch")
    if WORKERS <= 1:
        yield check
        return
    names = [it.callspec.params["name"] for it in request.session.items
             if it.module is request.module and hasattr(it, "callspec")]
    names.sort(key=lambda n: n not in TRAINED)  # the slowest first: ZOO's order among equals
    pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {n: pool.submit(check, n) for n in names}
        yield lambda name: futures[name].result()
    finally:
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_network_matches_torch_and_numpy(name, report):
    rep = report(name)
    bad = {k: (e, tol) for k, (e, tol) in rep.items() if not e <= tol}  # a NaN fails too
    worst = sorted(bad.items(), key=lambda kv: -kv[1][0])[:20]
    assert not bad, f"{name}: {len(bad)} of {len(rep)} comparisons off (error relative to scale > tolerance):\n" + \
        "\n".join(f"  {k}: {e:.3g} > {tol:g}" for k, (e, tol) in worst)
    if name not in TRAINED:
        return
    net = zoo_network(name)
    # not vacuous: every parameter's gradient, change and momentum was compared, and every state
    what = ("gradient", "change", "momentum")
    assert {f"{w} of {k} at step {STEPS}" for k in net.params for w in what} <= set(rep)
    assert len([k for k in rep if k.endswith(f"after {STEPS} steps")]) == len(net.graph.states)
