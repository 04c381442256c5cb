"""Per-layer footprint: output shape, parameters, weight and activation memory, FLOPs.

Rows follow the reference lecture's VGG-16 table: one row per layer, an activation
(one input, no parameters, same shape, no reduction) folded into the row of its producer,
weights counted without biases and biases in their own column, memory in binary units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..base.units import human_bytes
from ..te.expr import Reduce
from ..front.graph import DTYPE_BYTES, Graph, Layer
from ..driver.programs import lower_graph, training_program
from ..ir.memory import lifetimes, plan
from ..training.train import settings_from
from ..te.names import grad_name


@dataclass
class Row:
    name: str
    ops: list[str]
    shape: tuple[int, ...]  # per example
    weights: int  # parameter values other than biases
    biases: int
    out_values: int  # per example
    flops: int  # per example


def _is_activation(layer: Layer, g: Graph) -> bool:
    """One input, no parameters, as many values out as in, no reduction (relu, flatten)."""
    inst = layer.inst
    return (len(layer.inputs) == 1 and not layer.params and len(inst.stmts) == 1
            and math.prod(g.tensors[layer.inputs[0]].shape) == math.prod(g.tensors[layer.output].shape)
            and not any(isinstance(x, Reduce) for x in inst.stmts[0].value.walk()))


def rows(g: Graph) -> list[Row]:
    out: list[Row] = []
    for name in g.inputs:
        shape = g.tensors[name].shape[1:]
        out.append(Row(name, ["input"], shape, 0, 0, math.prod(shape), 0))
    last_output = None
    for layer in g.layers:
        shape = g.tensors[layer.output].shape[1:]
        flops = layer.inst.flops // g.batch
        if _is_activation(layer, g) and out and layer.inputs[0] == last_output:
            row = out[-1]
            row.ops.append(layer.op)
            row.flops += flops
            if _binding_of(g, row.name) == layer.binding:
                row.name = layer.binding
            last_output = layer.output
            continue
        w = sum(math.prod(g.param_specs[p].shape) for p in layer.params if not p.endswith(".bias"))
        b = sum(math.prod(g.param_specs[p].shape) for p in layer.params if p.endswith(".bias"))
        out.append(Row(layer.name, [layer.op], shape, w, b, math.prod(shape), flops))
        last_output = layer.output
    return out


def _binding_of(g: Graph, layer_name: str) -> str | None:
    for layer in g.layers:
        if layer.name == layer_name:
            return layer.binding
    return None


def human_count(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if n < 1000 or unit == "T":
            break
        n /= 1000
    return f"{n:.3g}{unit}" if unit else str(int(n))


def table(g: Graph, batch: int = 1) -> str:
    rs = rows(g)
    head = ["layer", "op", "output", "neurons", "weights", "weight mem", "biases", "output/ex", f"output x{batch}",
            "FLOPs/ex"]
    body = []
    for r in rs:
        body.append([r.name, "+".join(r.ops), "x".join(map(str, r.shape)) or "1", f"{r.out_values:,}",
                     f"{r.weights:,}" if r.weights else "", human_bytes(r.weights * DTYPE_BYTES) if r.weights else "",
                     f"{r.biases:,}" if r.biases else "", human_bytes(r.out_values * DTYPE_BYTES),
                     human_bytes(r.out_values * DTYPE_BYTES * batch), human_count(r.flops) if r.flops else ""])
    tw = sum(r.weights for r in rs)
    tb = sum(r.biases for r in rs)
    to = sum(r.out_values for r in rs)
    tf = sum(r.flops for r in rs)
    body.append(["total", "", "", "", f"{tw:,}", human_bytes(tw * DTYPE_BYTES), f"{tb:,}",
                 human_bytes(to * DTYPE_BYTES), human_bytes(to * DTYPE_BYTES * batch), human_count(tf)])
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    right = {3, 4, 5, 6, 7, 8, 9}

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body[:-1]]
    out += [line(["-" * w for w in widths]), line(body[-1])]
    params = tw + tb
    out.append("")
    out.append(f"parameters: {params:,} ({human_bytes(params * DTYPE_BYTES)}); activations per example: "
               f"{human_bytes(to * DTYPE_BYTES)}; forward FLOPs per example: {human_count(tf)}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- planned memory

def planned(net, batch: int, training: bool) -> str:
    """The memory the compiled program will use, from the memory planner, per layer and in all.

    Weights, gradients and optimizer state are per parameter; activations are the temporaries
    the planner lays out in one workspace, shared by liveness, so their total is the
    workspace's size, not the sum of the layers' own.
    """

    g = net.at_batch(batch, training=training)
    prog = training_program(g, settings_from(net).optimizer) if training else lower_graph(g)
    offsets, ws = plan(prog)
    life = lifetimes(prog)
    kernel_of = {k.name: i for i, k in enumerate(prog.kernels)}
    sizes = {b.name: b.size * DTYPE_BYTES for b in prog.buffers}
    kinds = {b.name: b.kind for b in prog.buffers}
    rows_ = []
    for layer in g.layers:
        params = [p for p in layer.params if p in sizes]
        w = sum(sizes[p] for p in params)
        gr = sum(sizes.get(grad_name(p), 0) for p in params)
        st = sum(sizes[n] for n in sizes if kinds[n] == "state" and any(n.startswith(p + ".") for p in params))
        k = kernel_of.get(layer.name)
        # what this layer's forward leaves in the workspace for later kernels (saved for the backward)
        saved = sum(sizes[n] for n, (a, b) in life.items() if a == k and b > k) if k is not None else 0
        rows_.append((layer.name, w, gr, st, saved))
    io = sum(sizes[n] for n in sizes if kinds[n] in ("input", "label", "output", "hyper"))
    tw, tg, ts = (sum(r[i] for r in rows_) for i in (1, 2, 3))
    head = ("layer", "weights", "gradients", "optimizer", "activations out")
    table_ = [head] + [(n, human_bytes(w), human_bytes(gr) if training else "",
                        human_bytes(st) if training else "", human_bytes(sv)) for n, w, gr, st, sv in rows_]
    widths = [max(len(r[i]) for r in table_) for i in range(5)]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()
             for r in table_]
    lines.insert(1, "  ".join("-" * x for x in widths))
    peak = tw + tg + ts + ws * DTYPE_BYTES + io
    what = "training step" if training else "inference"
    lines.append("")
    lines.append(f"planned memory for {what} at batch {batch}: weights {human_bytes(tw)}"
                 + (f", gradients {human_bytes(tg)}, optimizer state {human_bytes(ts)}" if training else "")
                 + f", activations (one workspace shared by liveness) {human_bytes(ws * DTYPE_BYTES)}, "
                   f"inputs and outputs {human_bytes(io)}; total {human_bytes(peak)}")
    naive = sum(sizes[n] for n in sizes if kinds[n] == "temp")
    lines.append(f"(without sharing, the activations would take {human_bytes(naive)})")
    return "\n".join(lines)
