"""A float64 numpy forward pass of any dnnc graph of built-in ops, through tests/reference.py.

It reads only what the graph states: each layer's op name, attribute values
(`layer.inst.attrs`, defaults filled in), tensor inputs and parameter names. So it checks the
compiled code of a network, not the graph building itself (the generators that use it check
the shapes they expect).

    values, states = run(graph, params, feed, states)

`feed` holds the inputs (and labels, for the loss); `values` holds every tensor the layers
compute, and "loss" when the graph has one and its labels are fed; `states` after the run is
the running statistics, updated as a training step updates them when `graph.training`.
Dropout is the identity in inference, and in training only at rate 0 (the mask is dnnc's own
hash: compare gradients against finite differences instead).
"""
from __future__ import annotations

import reference as ref


def layer_tensors(graph, layer) -> dict[str, str]:
    """The parameters and states a layer reads: local name (`weight`) -> global (`c1.weight`).
    A parameter given as false (`bias=false`) is read nowhere, so it is absent (the
    reference functions take None for a missing bias)."""
    from dnnc.te.expr import Load

    mine = set(graph.params) | set(graph.states)
    out = {}
    for st in layer.inst.stmts + layer.inst.updates:
        for e in st.value.walk():
            if isinstance(e, Load) and e.tensor in mine:
                out[e.tensor.rsplit(".", 1)[1]] = e.tensor
    return out


def run(graph, params: dict, feed: dict, states: dict | None = None) -> tuple[dict, dict]:
    training = graph.training
    vals = {k: ref.f64(v) for k, v in feed.items()}
    states = {k: ref.f64(v) for k, v in (states or {}).items()}
    layers = list(graph.layers) + ([graph.loss] if graph.loss and all(l in feed for l in graph.labels) else [])
    for layer in layers:
        a = dict(layer.inst.attrs)
        names = layer_tensors(graph, layer)
        t = {k: (states if g in graph.states else params)[g] for k, g in names.items()}
        x = [vals[i] for i in layer.inputs]
        op = layer.op
        if op == "conv":
            y = ref.conv2d(x[0], t["weight"], t.get("bias"), a["stride"], a["pad"], a["groups"])
        elif op == "dense":
            y = ref.dense(x[0], t["weight"], t.get("bias"))
        elif op in ("maxpool", "avgpool"):
            y = getattr(ref, op)(x[0], a["size"], a["stride"], a["pad"])
        elif op == "clip":
            y = ref.clip(x[0], a["lo"], a["hi"])
        elif op == "leaky_relu":
            y = ref.leaky_relu(x[0], a["slope"])
        elif op in ("relu", "relu6", "sigmoid", "tanh", "flatten", "softmax", "global_avgpool"):
            y = getattr(ref, op)(x[0])
        elif op in ("add", "concat", "mse"):
            y = getattr(ref, op)(x[0], x[1])
        elif op == "softmax_cross_entropy":
            y = ref.softmax_cross_entropy(x[0], x[1])
        elif op == "layernorm":
            y = ref.layernorm(x[0], t["weight"], t["bias"], a["eps"])
        elif op == "batchnorm":
            rm, rv = names["running_mean"], names["running_var"]
            y = ref.batchnorm(x[0], t["weight"], t["bias"], states[rm], states[rv], a["eps"], training)
            if training:
                states[rm], states[rv] = ref.batchnorm_update(x[0], states[rm], states[rv], a["momentum"])
        elif op == "dropout":
            assert not (training and a["rate"] > 0), "dropout's mask is dnnc's hash: not modelled"
            y = x[0]
        else:
            raise NotImplementedError(f"no numpy reference for op '{op}' (layer {layer.name})")
        vals[layer.output] = ref.f64(y)
    return vals, states
