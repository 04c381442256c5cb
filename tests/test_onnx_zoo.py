"""The zoo (examples/) through ONNX, both ways, at small input sizes so CI stays fast:

- PyTorch's exports (the TorchScript exporter, opsets 13 and 17, batch dimension dynamic) of
  torchvision-style twins of every zoo network import with `dnnc import`, compile and compute
  what ONNX Runtime computes on the same file, to 1e-4; the bindings are named after
  PyTorch's modules (layer1_0_conv1), never after made-up tensor names;
- a PyTorch model of the features a zoo-like network may use besides: padding="same" with an
  even kernel (asymmetric pads), dilation, average pooling counting its padding, ceil_mode,
  LeakyReLU, hardtanh (Clip), softmax over channels, x.view(x.size(0), -1) (Shape -> Gather
  -> Unsqueeze -> Concat -> Reshape), LayerNorm (opset 17), log_softmax;
- dnnc's exports of the zoo networks (global_avgpool, relu6, conv without bias, dropout,
  batchnorm, concat, ...) compute in ONNX Runtime what dnnc computes, and import back;
- `dnnc export --weights CKPT` puts the checkpoint's input normalization in front, so ONNX
  Runtime on raw pixels computes what `dnnc run` computes.

The twins have BatchNorm with random statistics: PyTorch's exporter folds them into the
convolutions before them (DenseNet's, before a ReLU, stay BatchNormalization nodes). The
larger networks are exported at one opset only. Models compile without a schedule: naive
loop nests compile about three times faster, and test_schedule.py tests the schedules.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

import dnnc  # noqa: E402
from dnnc.io.onnx_io import export, import_model, weights_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4


# ----------------------------------------------------------------------------- torchvision-style twins

def conv_bn(cin, cout, k, s=1, p=0, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act(inplace=True)) if act else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, stem, widths, classes):
        super().__init__()
        self.stem, cin = stem, widths[0]
        for k, w in enumerate(widths):
            n = 2 if len(widths) == 4 else 3
            setattr(self, f"layer{k + 1}", nn.Sequential(*[BasicBlock(cin if i == 0 else w, w, 2 if i == 0 and k else 1)
                                                           for i in range(n)]))
            cin = w
        self.layers = len(widths)
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.stem(x)
        for k in range(self.layers):
            x = getattr(self, f"layer{k + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = [conv_bn(cin, hidden, 1, act=nn.ReLU6)] if t != 1 else []
        self.conv = nn.Sequential(*layers, conv_bn(hidden, hidden, 3, stride, 1, groups=hidden, act=nn.ReLU6),
                                  nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        feats, cin = [conv_bn(3, 32, 3, 2, 1, act=nn.ReLU6)], 32
        for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                           [6, 160, 3, 2], [6, 320, 1, 1]]:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*feats, conv_bn(cin, 1280, 1, act=nn.ReLU6))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1)), 1))


class VGG11BN(nn.Module):
    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(512, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096),
                                        nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))

    def forward(self, x):  # at 32x32 the features end at 1x1
        return self.classifier(torch.flatten(self.features(x), 1))


class Fire(nn.Module):
    def __init__(self, cin, squeeze, e1, e3):
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True)
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(squeeze, e1, 1), nn.ReLU(inplace=True)
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(squeeze, e3, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):  # torchvision's 1.1, whose max pools round up (ceil_mode)
    def __init__(self):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(inplace=True), pool(), Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool(),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(), Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, 1000, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm, self.relu = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, features):  # torchvision concatenates all earlier features at each layer
        return self.conv(self.relu(self.norm(torch.cat(features, 1))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, cin):
        super().__init__({f"denselayer{i + 1}": DenseLayer(cin + 12 * i, 12) for i in range(4)})

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0, self.denseblock1 = nn.Conv2d(1, 24, 3, padding=1, bias=False), DenseBlock(24)
        self.transition1 = nn.Sequential(nn.BatchNorm2d(72), nn.ReLU(inplace=True), nn.Conv2d(72, 36, 1, bias=False),
                                         nn.AvgPool2d(2, 2))
        self.denseblock2, self.norm5, self.classifier = DenseBlock(36), nn.BatchNorm2d(84), nn.Linear(84, 10)

    def forward(self, x):
        x = self.norm5(self.denseblock2(self.transition1(self.denseblock1(self.conv0(x)))))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(nn.functional.relu(x), (1, 1)), 1))


class Features(nn.Module):
    """What else a network may use (see the module docstring)."""

    def __init__(self, layernorm: bool):
        super().__init__()
        self.same = nn.Conv2d(3, 4, 4, padding="same")
        self.dilated = nn.Conv2d(4, 4, 3, dilation=2, padding=2)
        self.act = nn.LeakyReLU(0.2)
        self.pool = nn.AvgPool2d(3, 2, padding=1)
        self.ceil = nn.MaxPool2d(2, ceil_mode=True)
        self.fc = nn.Linear(64, 8)
        self.norm = nn.LayerNorm(8) if layernorm else nn.Identity()

    def forward(self, x):
        x = nn.functional.hardtanh(self.ceil(self.pool(self.act(self.dilated(self.same(x))))), -1, 2)
        probs = torch.softmax(x, 1)
        x = self.norm(self.fc(x.view(x.size(0), -1)))
        return torch.log_softmax(x, 1), probs


def mlp_dropout():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 256),
                         nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))


def resnet18():
    return ResNet(nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                nn.MaxPool2d(3, 2, 1)), [64, 128, 256, 512], 1000)


# name: (twin, input per example, opsets, a line the import must contain)
TWINS = {
    "mlp_dropout": (mlp_dropout, (1, 28, 28), (13, 17), "dense_1 = dense(flatten_0, 512) |> relu"),
    "resnet20": (lambda: ResNet(conv_bn(1, 16, 3, p=1), [16, 32, 64], 10), (1, 8, 8), (13, 17),
                 "layer1_0 = add(layer1_0_conv2, stem_0) |> relu"),
    "densenet": (DenseNet, (1, 8, 8), (13, 17), "denseblock1_denselayer2_norm = batchnorm("),
    "squeezenet": (SqueezeNet, (3, 34, 34), (13,), "|> maxpool2d_ceil(kernel_h=3, kernel_w=3, stride_h=2, stride_w=2)"),
    "resnet18": (resnet18, (3, 16, 16), (13,), "layer1_0_conv1 = conv(stem_0, filters=64, kernel=3, pad=1) |> relu"),
    "mobilenetv2": (MobileNetV2, (3, 16, 16), (17,), "features_1_conv_0_0 = conv(features_0_0, filters=32, kernel=3, "
                                                      "pad=1, groups=32) |> relu6"),
    "vgg11_bn": (VGG11BN, (3, 32, 32), (17,), "classifier_0 = dense(features_25, 4096) |> relu"),
    "features": (lambda: Features(False), (3, 15, 15), (13,), "same = conv2d(image, filters=4, kernel_h=4"),
    "features_layernorm": (lambda: Features(True), (3, 15, 15), (17,), "logits = layernorm(fc) |> log_softmax"),
}


@pytest.fixture(autouse=True, scope="module")
def compile_cache(tmp_path_factory):
    """A compile cache of this module's own: an import at the second opset is the same text as
    at the first, so it compiles once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DNNC_CACHE", "1")
    mp.setenv("DNNC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def randomized(m: nn.Module) -> nn.Module:
    """Eval mode; He-normal weights, so activations keep their scale through the depth (PyTorch's
    default initialization shrinks them to nothing in the deeper twins, whose outputs would then
    not depend on the input); batchnorm statistics and affine parameters away from 0 and 1."""
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.weight.data.normal_(0, (2 / mod.weight[0].numel()) ** 0.5, generator=g)
        if isinstance(mod, nn.BatchNorm2d):
            for t, lo in ((mod.running_mean, -0.5), (mod.running_var, 0.5), (mod.weight.data, 0.5),
                          (mod.bias.data, -0.5)):
                t.copy_(torch.rand(mod.num_features, generator=g) + lo)
    return m.eval()


def close(got, want, what=""):
    """To 1e-4 of the output's scale; and the examples' outputs differ, so the network is alive."""
    scale = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL * scale, err_msg=what)
    assert np.abs(want[0] - want[1]).max() > 1e-2 * scale, f"{what}: the output does not depend on the input"


def export_twin(model, shape, path, opset, outputs=("logits",)):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, *shape), str(path), opset_version=opset, dynamo=False,
                          input_names=["image"], output_names=list(outputs), dynamic_axes={"image": {0: "N"}})


def onnxruntime(path, x) -> list[np.ndarray]:
    s = ort.InferenceSession(str(path))
    return s.run(None, {s.get_inputs()[0].name: x})


CASES = [(name, opset) for name, (_, _, opsets, _) in TWINS.items() for opset in opsets]


@pytest.mark.parametrize("name,opset", CASES, ids=[f"{n}-opset{o}" for n, o in CASES])
def test_pytorch_exports_import_and_match_onnxruntime(name, opset, tmp_path):
    make, shape, _, line = TWINS[name]
    torch.manual_seed(0)
    model, path = randomized(make()), tmp_path / f"{name}.onnx"
    outputs = ("logits", "probs") if name.startswith("features") else ("logits",)
    export_twin(model, shape, path, opset, outputs)
    text, layer_params = import_model(path)
    assert line in text, text
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "_output_" not in body and "onnx" not in body  # no made-up names
    net = dnnc.load(text)
    m = net.compile(batch=2, threads=1, schedule=False)
    for k, v in weights_for(net, layer_params).items():
        (m.params if k in m.params else m.states)[k] = v
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    got = m.forward(image=x)
    for o, want in zip(outputs, onnxruntime(path, x)):
        close(got[o], want, o)
    with torch.no_grad():  # and so computes what PyTorch does
        want = model(torch.from_numpy(x))
    close(got["logits"], (want[0] if outputs[1:] else want).numpy(), "PyTorch")


# the zoo's own networks at small sizes (1x1 before the ImageNet ones' classifiers) and their twins
ZOO = {"mlp_dropout": None, "resnet20": (1, 8, 8), "densenet": (1, 8, 8), "squeezenet": (3, 32, 32),
       "resnet18": (3, 16, 16), "mobilenetv2": (3, 16, 16), "vgg11_bn": (3, 32, 32)}


def tensors_in_order(net, params: dict, states: dict) -> list[np.ndarray]:
    """Each layer's parameters then running statistics, as PyTorch's state_dict orders them."""
    out = []
    for layer in net.layers:
        stem = layer.params[0].rsplit(".", 1)[0] if layer.params else ""
        out += [params[p] for p in layer.params] + [states[f"{stem}.{s.name}"] for s in layer.inst.states]
    return out


@pytest.mark.parametrize("name", ZOO)
def test_zoo_exports_match_onnxruntime_and_import_back(name, tmp_path):
    """dnnc's export computes in ONNX Runtime what the network computes (its PyTorch twin given
    the same weights, which also shows the twins are the zoo's networks), and imports back as
    the same layers with the same attributes, inputs and weights."""
    net = dnnc.load(ROOT / "examples" / f"{name}.net")
    shape = ZOO[name] or net.inputs["image"]
    net = net.with_inputs({"image": shape})
    rng = np.random.default_rng(0)
    params = {k: v * np.float32(6 ** 0.5) if v.ndim > 1 else v for k, v in net.init_params(seed=0).items()}  # He
    states = {k: (rng.random(s) + 0.5 if k.endswith("var") else 0.2 * rng.standard_normal(s)).astype(np.float32)
              for k, s in ((k, net.graph.state_specs[k].shape) for k in net.graph.states)}
    export(net, {**params, **states}, tmp_path / "m.onnx")
    twin = TWINS[name][0]()
    torch_tensors = [v for k, v in twin.state_dict().items() if not k.endswith("num_batches_tracked")]
    ours = tensors_in_order(net, params, states)
    assert [tuple(t.shape) for t in torch_tensors] == [a.shape for a in ours]
    twin.load_state_dict({k: torch.from_numpy(a) for k, a in zip([k for k in twin.state_dict()
                                                                  if not k.endswith("num_batches_tracked")], ours)},
                         strict=False)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    with torch.no_grad():
        want = twin.eval()(torch.from_numpy(x)).numpy()
    got, = onnxruntime(tmp_path / "m.onnx", x)
    close(got, want)

    text, layer_params = import_model(tmp_path / "m.onnx")
    back = dnnc.load(text)
    layers = [layer for layer in net.layers if layer.op != "dropout"]  # exported as Identity
    assert [(a.op, a.inst.attrs) for a in layers] == [(b.op, b.inst.attrs) for b in back.layers]
    same, others = {net.graph.inputs[0]: back.graph.inputs[0]}, iter(back.layers)
    for a in net.layers:
        if a.op == "dropout":
            same[a.output] = same[a.inputs[0]]
            continue
        b = next(others)
        assert [same[t] for t in a.inputs] == list(b.inputs), (a.name, b.name)
        same[a.output] = b.output
    assert [same[o] for o in net.graph.outputs] == list(back.graph.outputs)
    imported = weights_for(back, layer_params)
    for a, b in zip(ours, tensors_in_order(back, imported, imported)):
        np.testing.assert_array_equal(a, b)


def test_export_with_a_checkpoint_takes_raw_pixels_as_dnnc_run_does(tmp_path):
    """The training set's normalization, from the checkpoint's record, becomes Sub and Div nodes."""
    net = dnnc.load(ROOT / "examples" / "lenet5.net")
    m = net.compile(batch=2, threads=1)
    arrays = {k: m.params[k] for k in m.params}
    meta = {"format": "dnnc-checkpoint", "network": "lenet5", "normalization": [0.1307, 0.3081]}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "ckpt.npz", **arrays)
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)  # raw pixels in [0, 1]
    np.save(tmp_path / "x.npy", x)
    cli = [sys.executable, "-m", "dnnc.cli"]
    r = subprocess.run(cli + ["export", str(ROOT / "examples" / "lenet5.net"), "--weights", str(tmp_path / "ckpt.npz"),
                              "-o", str(tmp_path / "m.onnx")], capture_output=True, text=True)
    assert r.returncode == 0 and "inputs normalized as in training" in r.stdout, r.stderr
    r = subprocess.run(cli + ["run", str(ROOT / "examples" / "lenet5.net"), "--weights", str(tmp_path / "ckpt.npz"),
                              "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = np.load(tmp_path / "y.npy")
    got, = onnxruntime(tmp_path / "m.onnx", x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(m.forward(image=x)["logits"], want, atol=1e-3)  # normalization matters here
    text, layer_params = import_model(tmp_path / "m.onnx")  # and imports as two scalar ops
    assert "image_normalized = sub_scalar(image, c=0.1307) |> div_scalar(c=0.3081)" in text
    back = dnnc.load(text)
    m2 = back.compile(batch=2, threads=1, schedule=False)
    for k, v in weights_for(back, layer_params).items():
        m2.params[k] = v
    np.testing.assert_allclose(m2.forward(image=x)["logits"], want, rtol=1e-5, atol=1e-5)


def test_dnnc_import_command_on_a_pytorch_export(tmp_path):
    export_twin(randomized(mlp_dropout()), (1, 28, 28), tmp_path / "m.onnx", 17)
    r = subprocess.run([sys.executable, "-m", "dnnc.cli", "import", str(tmp_path / "m.onnx"), "-o",
                        str(tmp_path / "m.net"), "--weights-out", str(tmp_path / "w.npz")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    m = dnnc.load(tmp_path / "m.net").compile(batch=1, threads=1, schedule=False).load(tmp_path / "w.npz")
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    got, = onnxruntime(tmp_path / "m.onnx", x)
    np.testing.assert_allclose(m.forward(image=x)["logits"], got, rtol=TOL, atol=TOL)
