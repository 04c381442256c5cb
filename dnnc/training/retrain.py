"""The Deep Compression pipeline: prune and retrain, share weights and fine-tune, then store.

1. Iterative magnitude pruning: the kept fraction of every weight tensor shrinks to its target
   in `stages` steps; after each, the network retrains with the pruned connections' gradients
   masked in the generated update code, so they stay exactly zero.
2. Weight sharing: per tensor, k-means (linear initialization) over the kept weights; index 0
   of each codebook is the exact zero. Then the centroids are fine-tuned: each centroid moves
   by the sum of its members' gradients (the compiled gradient program computes them).
3. Storage: compress.encode_layer per tensor (relative indices, Huffman coding), biases raw.
"""
from __future__ import annotations

import numpy as np

from ..compression import compress
from ..io import data as datamod
from ..api import Network
from ..base.errors import DnncError
from ..te.optim import HYPER, Optimizer
from .train import Evaluator, data_path, settings_from
from ..te.names import grad_name


def defaults(net: Network) -> dict[str, dict]:
    """The paper's settings by layer kind: conv layers keep 66% (the first) or 12% and use
    256 clusters with 8-bit relative indices; dense layers keep 8% (the output layer 20%) and
    use 32 clusters with 5-bit indices (Han et al., Tables 2 and 3)."""
    weights = [p for p, s in net.params.items() if len(s) >= 2]
    out, convs = {}, 0
    for p in weights:
        conv = len(net.params[p]) == 4
        keep = (0.66 if convs == 0 else 0.12) if conv else (0.2 if p == weights[-1] else 0.08)
        convs += conv
        out[p] = {"kind": "conv" if conv else "dense", "keep": keep, "clusters": 256 if conv else 32,
                  "index_bits": 8 if conv else 5}
    return out


def run(net: Network, params: dict[str, np.ndarray], plan: dict[str, dict], data=None, epochs: int = 4,
        stages: int = 3, seed: int = 0, log=print, lr_scale: float = 1.0):
    """Prune, retrain, quantize and fine-tune; returns (weights, masks, labels, codebooks,
    accuracy before, accuracy after, the data's normalization)."""

    s = settings_from(net)
    g = net.graph

    ds = datamod.fit(datamod.load(data_path(net, data)), net.inputs[g.inputs[0]], g.classes[g.labels[0]])
    mean, std = datamod.normalization(ds.x_train)
    xt, xs = (ds.x_train - mean) / std, (ds.x_test - mean) / std
    yt = ds.y_train.astype(np.float32)
    model = net.compile(batch=s.batch, seed=seed, threads=None)
    for n, a in params.items():
        (model.params if n in model.params else model.states)[n] = a
    evaluate = Evaluator(model)
    classes = g.classes[g.labels[0]]
    inp, lab = g.inputs[0], g.labels[0]
    steps = len(xt) // s.batch
    lr = s.optimizer.lr * lr_scale  # the network's own rate, constant
    acc0 = evaluate.run(xs, ds.y_test, classes).accuracy
    log(f"uncompressed: accuracy {100 * acc0:.2f}%")

    opt = Optimizer("sgd", lr, s.optimizer.momentum or 0.9, masked=tuple(plan))
    masks = {p: np.ones(g.tensors[p].shape, np.float32) for p in plan}
    for stage in range(1, stages + 1):
        for p, cfg in plan.items():
            keep = cfg["keep"] ** (stage / stages)
            masks[p] = compress.prune_mask(model.params[p] * masks[p], keep)
            model.buffers[p] *= masks[p]
        train = model.executable("train", opt)
        for p in plan:
            model.buffers[p + ".mask"][...] = masks[p]
        model.weights_changed()
        for epoch in range(epochs):
            _epoch(model, train, xt, yt, inp, lab, steps, s.batch, opt, lr, seed, stage * 100 + epoch)
        acc = evaluate.run(xs, ds.y_test, classes).accuracy
        kept = sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())
        log(f"pruning stage {stage}/{stages}: {100 * kept:.1f}% of weights kept, accuracy {100 * acc:.2f}%")

    books, labels = {}, {}
    for p, cfg in plan.items():
        w, m = model.params[p], masks[p].astype(bool)
        # a codebook larger than a quarter of the kept weights costs more than it saves
        k = min(cfg["clusters"], max(4, 1 << int(np.log2(max(m.sum() // 4, 1)))))
        c, lab_ = compress.kmeans(w[m], k - 1)
        books[p] = np.concatenate([[0.0], c]).astype(np.float64)
        labels[p] = np.zeros(w.shape, np.int64)
        labels[p][m] = lab_ + 1
    _share(model, plan, books, labels, masks)
    acc = evaluate.run(xs, ds.y_test, classes).accuracy
    log(f"weight sharing: accuracy {100 * acc:.2f}% before fine-tuning the centroids")
    grad = model.executable("grad")
    others = [p for p in g.params if p not in plan and p not in g.fixed]
    for epoch in range(epochs):
        order = np.random.default_rng([seed, 1000 + epoch]).permutation(len(xt))
        for k in range(steps):
            idx = order[k * s.batch:(k + 1) * s.batch]
            model.buffers[inp][...] = xt[idx]
            model.buffers[lab][...] = yt[idx]
            grad.run()
            for p in plan:  # a centroid's gradient: the sum of its members' gradients
                cg = np.bincount(labels[p].reshape(-1), weights=model.buffers[grad_name(p)].reshape(-1),
                                 minlength=len(books[p]))
                cg[0] = 0.0  # the zero stays zero
                books[p] -= lr * cg
            for p in others:
                model.buffers[p] -= lr * model.buffers[grad_name(p)]
            _share(model, plan, books, labels, masks)
    acc = evaluate.run(xs, ds.y_test, classes).accuracy
    log(f"centroids fine-tuned: accuracy {100 * acc:.2f}%")
    weights = {p: model.params[p].copy() for p in g.params}
    return weights, masks, labels, books, acc0, acc, (mean, std)


def _share(model, plan, books, labels, masks) -> None:
    for p in plan:
        model.params[p] = (books[p][labels[p]] * masks[p]).astype(np.float32)


def _epoch(model, train, xt, yt, inp, lab, steps, batch, opt, lr, seed, tag) -> None:
    order = np.random.default_rng([seed, tag]).permutation(len(xt))
    for k in range(steps):
        idx = order[k * batch:(k + 1) * batch]
        model.buffers[inp][...] = xt[idx]
        model.buffers[lab][...] = yt[idx]
        model.buffers[HYPER][...] = opt.hyper(k + 1, lr)
        train.run()
        if not np.isfinite(model.buffers["loss"]):
            raise DnncError("the loss diverged while retraining; the network may be pruned too far")


def write(path, net: Network, weights, masks, labels, books, plan, huffman: bool = True, norm=None) -> None:
    layers = []
    for p, cfg in plan.items():
        vbits = int(np.ceil(np.log2(len(books[p]))))
        layers.append(compress.encode_layer(p, weights[p], masks[p], labels[p], np.asarray(books[p]), cfg["kind"],
                                            vbits, cfg["index_bits"], huffman))
    raw = {p: weights[p] for p in weights if p not in plan}
    compress.write(path, net.name, layers, raw, {"normalization": list(norm) if norm else None})
