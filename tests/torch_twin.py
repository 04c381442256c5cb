"""A PyTorch twin of any dnnc graph of built-in ops: the same layers through torch.nn.functional,
with the dnnc model's parameter values.

    twin = Twin(graph, model.params, model.states)       # float64 by default
    values = twin.run(feed, training=True)               # every tensor, and "loss" with labels
    values["loss"].backward(); twin.params["c1.weight"].grad
    torch.optim.SGD(twin.params.values(), ...)           # trains the same leaves

It reads each layer's op name, attribute values (`layer.inst.attrs`), inputs and parameter
names, so every network dnnc builds from the prelude's ops has a twin. Batchnorm updates the
twin's running statistics in training, as dnnc's training step does. Dropout is the identity
in inference and, in training, only at rate 0: dnnc's mask is a hash of the step, position and
layer, not torch's random numbers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from numpy_net import layer_tensors


def _conv(x, p, a, training):
    x, w, stride, pad, groups = x[0], p["weight"], a["stride"], a["pad"], a["groups"]
    if groups == 1 or x.dtype != torch.float64:
        return F.conv2d(x, w, p.get("bias"), stride, pad, 1, groups)
    # torch's float64 grouped conv on the CPU takes seconds a layer (MobileNetV2's depthwise
    # ones): the same sum over unfolded windows, group by group
    n, f, (cg, k) = x.shape[0], w.shape[0], w.shape[1:3]
    oh, ow = ((s + 2 * pad - k) // stride + 1 for s in x.shape[2:])
    cols = F.unfold(x, k, padding=pad, stride=stride).view(n, groups, cg * k * k, oh * ow)
    y = torch.einsum("ngkl,gfk->ngfl", cols, w.reshape(groups, f // groups, cg * k * k)).reshape(n, f, oh, ow)
    return y if "bias" not in p else y + p["bias"][:, None, None]


def _dropout(x, p, a, training):
    if training and a["rate"] > 0:
        raise NotImplementedError("dropout in training: dnnc's mask is its own hash")
    return x[0]


def _batchnorm(x, p, a, training):
    # F.batch_norm updates running_mean/var in place in training, with the unbiased variance
    return F.batch_norm(x[0], p["running_mean"], p["running_var"], p.get("weight"), p.get("bias"),
                        training=training, momentum=a["momentum"], eps=a["eps"])


OPS = {
    "conv": _conv,
    "dense": lambda x, p, a, t: F.linear(x[0], p["weight"], p.get("bias")),
    "relu": lambda x, p, a, t: F.relu(x[0]),
    "relu6": lambda x, p, a, t: F.relu6(x[0]),
    "clip": lambda x, p, a, t: torch.clamp(x[0], a["lo"], a["hi"]),
    "leaky_relu": lambda x, p, a, t: F.leaky_relu(x[0], a["slope"]),
    "sigmoid": lambda x, p, a, t: torch.sigmoid(x[0]),
    "tanh": lambda x, p, a, t: torch.tanh(x[0]),
    "maxpool": lambda x, p, a, t: F.max_pool2d(x[0], a["size"], a["stride"], a["pad"]),
    "avgpool": lambda x, p, a, t: F.avg_pool2d(x[0], a["size"], a["stride"], a["pad"], count_include_pad=False),
    "global_avgpool": lambda x, p, a, t: x[0].mean(dim=(2, 3), keepdim=True),
    "flatten": lambda x, p, a, t: torch.flatten(x[0], 1),
    "softmax": lambda x, p, a, t: F.softmax(x[0], dim=-1),
    "add": lambda x, p, a, t: x[0] + x[1],
    "concat": lambda x, p, a, t: torch.cat([x[0], x[1]], dim=1),
    "layernorm": lambda x, p, a, t: F.layer_norm(x[0], x[0].shape[-1:], p.get("weight"), p.get("bias"), a["eps"]),
    "batchnorm": _batchnorm,
    "dropout": _dropout,
    "softmax_cross_entropy": lambda x, p, a, t: F.cross_entropy(x[0], x[1].long()),
    "mse": lambda x, p, a, t: F.mse_loss(x[0], x[1]),
}


class Twin:
    """Leaf tensors for the graph's parameters (requires_grad, except inline weights) and
    states, and a run over the graph's layers."""

    def __init__(self, graph, params, states=None, dtype=torch.float64, device="cpu"):
        self.graph, self.dtype, self.device = graph, dtype, device
        self.params = {k: torch.tensor(np.asarray(params[k]), dtype=dtype, device=device,
                                       requires_grad=k not in graph.fixed) for k in graph.params}
        self.states = {k: torch.tensor(np.asarray(states[k]), dtype=dtype, device=device) for k in graph.states}
        for layer in graph.layers:
            if layer.op not in OPS:
                raise NotImplementedError(f"no PyTorch twin for op '{layer.op}' (layer {layer.name})")

    def tensor(self, a) -> torch.Tensor:
        if isinstance(a, torch.Tensor):
            return a.to(self.device, self.dtype)
        return torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)

    def run(self, feed: dict, training: bool | None = None) -> dict[str, torch.Tensor]:
        g = self.graph
        training = g.training if training is None else training
        vals = {k: self.tensor(v) for k, v in feed.items()}
        layers = list(g.layers) + ([g.loss] if g.loss and all(n in feed for n in g.labels) else [])
        for layer in layers:
            p = {k: (self.states if n in g.states else self.params)[n] for k, n in layer_tensors(g, layer).items()}
            vals[layer.output] = OPS[layer.op]([vals[i] for i in layer.inputs], p, dict(layer.inst.attrs), training)
        return vals
