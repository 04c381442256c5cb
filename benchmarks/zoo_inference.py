"""Inference on the networks users bring, dnnc against ONNX Runtime and PyTorch eager, side by side.

Every network runs with the same weights in all three: dnnc's model; ONNX Runtime on the
model dnnc exports (`dnnc export`); PyTorch eager on the twin of the graph (tests/torch_twin.py)
in float32 under no_grad. The CIFAR-style CNN goes the other way: a PyTorch model exported to
ONNX (the TorchScript exporter), imported by dnnc, and ONNX Runtime on that same file. The
three alternate call by call; medians. Outputs are checked to agree before anything is timed.

Usage: python benchmarks/zoo_inference.py [--threads 1] [--repeat 20] [--only resnet18_b1 ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_t = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
os.environ.setdefault("OMP_NUM_THREADS", _t)
import numpy as np  # noqa: E402

import dnnc  # noqa: E402
from dnnc.io.onnx_io import export, import_model, weights_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# (label, example (None: the CIFAR CNN from a PyTorch ONNX export), batch)
WORKLOADS = [
    ("resnet18_b1", "resnet18.net", 1),
    ("resnet18_b16", "resnet18.net", 16),
    ("mobilenetv2_b1", "mobilenetv2.net", 1),
    ("cifar_cnn_b64", None, 64),
]


def medians(fns: dict, repeat: int) -> dict[str, float]:
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # no spin-waiting between runs: the spinning threads would hold the cores the other engines
    # run on next, in this process that alternates between them call by call
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def cifar_cnn(torch):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Linear(4096, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    torch.manual_seed(0)
    m = Net().eval()
    for mod in m.modules():  # statistics as a trained network has them, not the identity
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m


def build(label, example, batch, threads, tmp: Path, torch):
    """(dnnc call, ORT call, torch call or None, input) for one workload, checked to agree."""
    rng = np.random.default_rng(0)
    if example is None:  # the CIFAR CNN from a PyTorch ONNX export
        tm = cifar_cnn(torch)
        path = tmp / f"{label}.onnx"
        x = torch.zeros(1, 3, 32, 32)
        torch.onnx.export(tm, x, str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, dynamo=False)
        source, weights = import_model(path)
        net = dnnc.load(source)
        model = net.compile(batch=batch, threads=threads)
        vals = weights_for(net, weights)
        model.params.update_from({k: v for k, v in vals.items() if k in model.params})
        model.states.update_from({k: v for k, v in vals.items() if k in model.states})
        inp = net.graph.inputs[0]
        feed = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        tx = torch.from_numpy(feed)

        def torch_fn():
            with torch.no_grad():
                return tm(tx)
    else:
        net = dnnc.load(ROOT / "examples" / example)
        model = net.compile(batch=batch, threads=threads)
        for k in model.states:  # trained-looking statistics, so batchnorm is not the identity
            model.states[k] = (rng.uniform(0.5, 2.0, model.states[k].shape) if k.endswith("var")
                               else rng.uniform(-0.5, 0.5, model.states[k].shape))
        inp = net.graph.inputs[0]
        feed = rng.standard_normal((batch, *net.inputs[inp])).astype(np.float32)
        path = tmp / f"{label}.onnx"
        export(net, {**dict(model.params), **dict(model.states)}, path)
        from torch_twin import Twin

        twin = Twin(model.graph, model.params, model.states, dtype=torch.float32)
        tx = torch.from_numpy(feed)

        def torch_fn():
            with torch.no_grad():
                return twin.run({inp: tx}, training=False)[net.graph.outputs[0]]
    sess = ort_session(path, threads)
    oin = sess.get_inputs()[0].name
    ours = model.forward(**{inp: feed})[net.graph.outputs[0]]
    theirs = sess.run(None, {oin: feed})[0]
    err = float(np.max(np.abs(ours - theirs)) / (np.max(np.abs(theirs)) + 1e-30))
    if err > 1e-3:
        raise SystemExit(f"{label}: dnnc and ONNX Runtime disagree (relative {err:.2e})")
    model.buffers[inp][...] = feed

    return model.run_batch, (lambda: sess.run(None, {oin: feed})), torch_fn, err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--only", nargs="*", help="workload labels (default: all)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(f"{'workload':18s} {'dnnc':>10s} {'ORT':>10s} {'torch':>10s}   vs ORT  vs torch  (one run, "
          f"{args.threads} thread(s), medians of {args.repeat})")
    with tempfile.TemporaryDirectory() as d:
        for label, example, batch in WORKLOADS:
            if args.only and label not in args.only:
                continue
            ours, ort_fn, torch_fn, err = build(label, example, batch, args.threads, Path(d), torch)
            t = medians({"dnnc": ours, "ort": ort_fn, "torch": torch_fn}, args.repeat)
            print(f"{label:18s} {t['dnnc'] * 1e3:8.2f}ms {t['ort'] * 1e3:8.2f}ms {t['torch'] * 1e3:8.2f}ms"
                  f"   {t['ort'] / t['dnnc']:5.2f}x  {t['torch'] / t['dnnc']:5.2f}x   (max diff vs ORT {err:.1e})",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
