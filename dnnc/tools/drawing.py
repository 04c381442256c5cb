"""`dnnc info NET --graph net.svg`: the network as a picture, written as SVG by hand.

One box per layer, top to bottom in source order, with its op, output name and shape; an
arrow from each input. Layers that run in one fused kernel (conv+ReLU+pool, a ReLU in its
conv's epilogue) share a shaded band labelled with the kernel's name.
"""
from __future__ import annotations

from html import escape
from ..driver.programs import lower_graph

BOX_W, BOX_H, GAP, MARGIN = 300, 44, 22, 30
COLORS = ["#dbeafe", "#dcfce7", "#fef3c7", "#fce7f3", "#e0e7ff", "#ccfbf1"]


def svg(net) -> str:
    g = net.graph
    kernels = [k.name for k in lower_graph(g).kernels]
    kernel_of = {}
    for k in kernels:  # "c1.conv+maxpool+relu": the layers c1.conv, c1.maxpool, c1.relu
        base, *rest = k.split("+")
        prefix = base.rsplit(".", 1)[0] if "." in base else base
        for name in [base] + [f"{prefix}.{r}" for r in rest]:
            kernel_of[name] = k
    rows = [(n, "input", n, list(g.tensors[n].shape[1:])) for n in g.inputs]
    rows += [(layer.name, layer.op, layer.output, list(g.tensors[layer.output].shape[1:])) for layer in g.layers]
    y_of, parts = {}, []
    height = MARGIN * 2 + len(rows) * (BOX_H + GAP)
    width = BOX_W + 2 * MARGIN + 220
    x = MARGIN
    # fused kernels: a band behind their layers
    color = {}
    for k, (name, *_rest) in enumerate(rows):
        y_of[name] = MARGIN + k * (BOX_H + GAP)
    for kname in kernels:
        members = [r for r in rows if kernel_of.get(r[0]) == kname]
        if len(members) > 1:
            color[kname] = COLORS[len(color) % len(COLORS)]
            top = y_of[members[0][0]] - 6
            bottom = y_of[members[-1][0]] + BOX_H + 6
            parts.append(f'<rect x="{x - 8}" y="{top}" width="{BOX_W + 16}" height="{bottom - top}" rx="10" '
                         f'fill="{color[kname]}" stroke="none"/>')
            parts.append(f'<text x="{x + BOX_W + 16}" y="{(top + bottom) / 2 + 4}" font-size="12" '
                         f'fill="#444">kernel {escape(kname)}</text>')
    produced = {n: name for name, _, n, _ in rows}
    for layer in g.layers:  # arrows from each input's box
        for src in layer.inputs:
            if src in produced:
                y0 = y_of[produced[src]] + BOX_H
                y1 = y_of[layer.name]
                if y1 - y0 <= GAP:
                    parts.append(f'<line x1="{x + BOX_W / 2}" y1="{y0}" x2="{x + BOX_W / 2}" y2="{y1}" '
                                 f'stroke="#555" marker-end="url(#a)"/>')
                else:  # a skip connection: around the left side
                    parts.append(f'<path d="M {x} {y0 - BOX_H / 2} C {x - 40} {y0}, {x - 40} {y1}, {x} '
                                 f'{y1 + BOX_H / 2}" fill="none" stroke="#555" marker-end="url(#a)"/>')
    for name, op, out, shape in rows:
        y = y_of[name]
        parts.append(f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="white" stroke="#333"/>')
        parts.append(f'<text x="{x + 10}" y="{y + 18}" font-size="13" font-weight="bold">{escape(op)}'
                     f'<tspan font-weight="normal"> {escape(name)}</tspan></text>')
        parts.append(f'<text x="{x + 10}" y="{y + 35}" font-size="12" fill="#333">{escape(out)}: '
                     f'[{", ".join(map(str, shape))}] per example</text>')
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif"><defs><marker id="a" markerWidth="8" markerHeight="8" refX="7" refY="4" '
            f'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>'
            f'<rect width="100%" height="100%" fill="white"/>')
    return head + "".join(parts) + "</svg>\n"
