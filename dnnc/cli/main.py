"""The dnnc command: check, info, ir, run, train, eval, bench, compile, compress, export,
import, filters (their flags: cli_parser.py).

Every user error ends in one located line (FILE:LINE:COL: error: ...) and a non-zero exit:
2 for a bad command line, 1 for anything else. No traceback reaches the user.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from .parser import make_parser
from ..base.errors import DnncError, UsageError, did_you_mean
from ..base.fileio import no_such_file
from ..api import load
from ..base.units import human_seconds
from .common import compile_options, load_network
from .ir import cmd_ir
from ..base.fileio import atomic_write, load_npy, load_npz, save_npy, save_npz, writable_place
from ..compression import compress
from ..compression.compress import read
from ..io import images
from ..io.checkpoint import check_overwrite, compile_for, read_checkpoint
from ..io.onnx_io import OPSET, export, import_model, weights_for
from ..tools.aot import compile_object
from ..tools.bench import bench, compile_profile, render
from ..tools.drawing import svg
from ..tools.footprint import planned, table
from ..tools.plots import curves, filter_grid
from ..training import retrain
from ..training.train import evaluate, train


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = make_parser().parse_args(argv)
        if not args.command:
            make_parser().print_help()
            return 2
        if getattr(args, "checks", False):
            os.environ["DNNC_CHECKS"] = "1"  # every model this command builds, in every process
        return COMMANDS[args.command](args) or 0
    except DnncError as e:
        if e.loc is None and e.path is None and not isinstance(e, UsageError) and getattr(args, "net", None):
            e.path = args.net  # an error about the network as a whole: name its file
        print(e.render() if not isinstance(e, UsageError) else f"dnnc: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except MemoryError:  # an allocation the checks before it could not foresee
        print("dnnc: error: out of memory (try a smaller --batch)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dnnc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a fault in dnnc itself, not in the input: one line, unless asked
        if os.environ.get("DNNC_TRACEBACK", "0") not in ("", "0"):
            raise
        text = str(e).splitlines()[0] if str(e) else ""
        print(f"dnnc: internal error: {type(e).__name__}: {text} (this is a bug in dnnc; "
              f"DNNC_TRACEBACK=1 shows where)", file=sys.stderr)
        return 3


# ----------------------------------------------------------------------------- commands

def cmd_check(args) -> int:
    net = load_network(args.net)  # the train { } and schedule { } blocks are checked too
    g = net.graph
    params = sum(int(np.prod(s)) for s in net.params.values())
    print(f"{args.net}: network {g.name}: ok")
    for n, s in net.inputs.items():
        print(f"  input  {n}: {list(s)}")
    for n in g.labels:
        print(f"  label  {n}: {g.classes[n]} classes")
    print(f"  {len(g.layers)} layers, {len(g.params)} parameter tensors, {params:,} parameters")
    for n, s in net.outputs.items():
        print(f"  output {n}: {list(s)}")
    if g.loss is not None:
        print(f"  loss   {g.loss.op}({', '.join(g.loss.inputs)})")
    return 0


def cmd_info(args) -> int:
    if compress.is_dnnz(args.net):
        header, _ = compress.read(args.net)
        print(compression_table(header))
        return 0
    net = load_network(args.net)
    if args.graph:
        atomic_write(args.graph, svg(net).encode())
        print(f"drew {net.name} -> {args.graph}")
    print(f"network {net.name} (memory per example unless marked x{args.batch}; float32)")
    print(table(net.graph, args.batch))
    if args.training or args.plan:
        if args.training and net.graph.loss is None:
            raise DnncError(f"network '{net.name}' has no loss, so no training program", path=args.net)
        print()
        print(planned(net, args.batch, args.training))
    return 0


def compression_table(header: dict) -> str:
    """Deep Compression's per-layer table (Han et al., Tables 2-3) for a .dnnz header."""
    rows = compress.table(header)
    head = ["layer", "#weights", "weights% (P)", "weight bits (P+Q)", "weight bits (P+Q+H)", "index bits (P+Q)",
            "index bits (P+Q+H)", "compress rate (P+Q)", "compress rate (P+Q+H)"]
    lines = [[r["layer"], f"{r['weights']:,}", f"{100 * r['kept']:.1f}%", f"{r['weight_bits_pq']:.1f}",
              f"{r['weight_bits_pqh']:.1f}", f"{r['index_bits_pq']:.1f}", f"{r['index_bits_pqh']:.1f}",
              f"{100 / r['rate_pq']:.2f}%", f"{100 / r['rate_pqh']:.2f}%"] for r in rows]
    n = sum(r["weights"] for r in rows)
    kept = sum(r["kept"] * r["weights"] for r in rows)
    pq, pqh = sum(r["bits_pq"] for r in rows), sum(r["bits_pqh"] for r in rows)
    lines.append(["total", f"{n:,}", f"{100 * kept / n:.1f}%", "", "", "", "",
                  f"{100 * pq / (32 * n):.2f}% ({32 * n / pq:.0f}x)", f"{100 * pqh / (32 * n):.2f}% ({32 * n / pqh:.0f}x)"])
    w = [max(len(h), *(len(x[k]) for x in lines)) for k, h in enumerate(head)]
    out = [f"compressed {header['network']} (Deep Compression, format version {header['version']}); "
           f"compress rate: compressed size as % of 32-bit weights"]
    out.append("  ".join(h.rjust(w[k]) if k else h.ljust(w[k]) for k, h in enumerate(head)))
    for x in lines:
        out.append("  ".join(c.rjust(w[k]) if k else c.ljust(w[k]) for k, c in enumerate(x)))
    return "\n".join(out)


def cmd_compress(args) -> int:
    net = load_network(args.net)
    params, _, _ = read_checkpoint(args.weights, net)
    plan = retrain.defaults(net)
    if not plan:
        raise DnncError("has no weight tensors (conv or dense) to compress", path=args.net)
    _apply_prune(plan, args.prune)
    _apply_clusters(plan, args.clusters)
    w, m, labels, books, acc0, acc, norm = retrain.run(net, params, plan, args.data, epochs=args.retrain)
    retrain.write(args.out, net, w, m, labels, books, plan, norm=norm)

    header, _ = read(args.out)
    print(compression_table(header))
    print(f"accuracy {100 * acc:.2f}% (uncompressed {100 * acc0:.2f}%); wrote {args.out}")
    return 0


def _apply_prune(plan: dict, spec: str | None) -> None:
    if not spec:
        return
    for part in spec.split(","):
        name, _, frac = part.rpartition("=")
        try:
            f = float(frac)
        except ValueError:
            raise UsageError(f"--prune: expected a fraction or LAYER=FRACTION, got '{part}'") from None
        if not 0 <= f < 1:
            raise UsageError(f"--prune: the fraction removed must be in [0, 1), got {frac}")
        targets = [p for p in plan if not name or p == name or p.split(".")[0] == name]
        if not targets:
            raise UsageError(f"--prune: no weight tensor '{name}' (weights: {', '.join(plan)})")
        for p in targets:
            plan[p]["keep"] = 1 - f


def _apply_clusters(plan: dict, spec: str | None) -> None:
    if not spec:
        return
    for part in spec.split(","):
        kind, _, k = part.partition("=")
        if kind not in ("conv", "dense") or not k.isdigit() or not 2 <= int(k) <= 65536:
            raise UsageError(f"--clusters: expected conv=K or dense=K with 2 <= K <= 65536, got '{part}'")
        for cfg in plan.values():
            if cfg["kind"] == kind:
                cfg["clusters"] = int(k)


def _parse_named(items: list[str], names: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" in item and item.split("=", 1)[0] in names:
            n, path = item.split("=", 1)
            if not path:
                raise UsageError(f"no file name after '{n}='")
        elif "=" in item and re.fullmatch(r"[A-Za-z_][\w.]*", item.split("=", 1)[0]):
            raise UsageError(f"no {what} named '{item.split('=', 1)[0]}' (names: {', '.join(names)})")
        elif len(items) == 1 and len(names) >= 1:
            n, path = names[0], item
        else:
            raise UsageError(f"name each {what} as NAME=FILE (names: {', '.join(names)})")
        out[n] = path
    return out


def cmd_run(args) -> int:
    net = load_network(args.net)
    paths = _parse_named(args.input, net.graph.inputs, "input")
    missing = [n for n in net.graph.inputs if n not in paths]
    if missing:
        raise UsageError(f"missing --input for '{missing[0]}'")
    outs = _parse_named(args.out, net.graph.outputs, "output") if args.out else {}
    if any(images.is_png(p) for p in list(paths.values()) + list(outs.values())):
        return _run_pictures(args, net, paths, outs)
    arrays = {n: load_npy(p) for n, p in paths.items()}
    for n, a in arrays.items():
        ex = net.inputs[n]
        if tuple(a.shape) != ex and tuple(a.shape[1:]) != ex:
            raise DnncError(f"input '{n}' must have shape [N, {', '.join(map(str, ex))}] or "
                            f"[{', '.join(map(str, ex))}], got {list(a.shape)}", path=paths[n])
        if a.size == 0:
            raise DnncError(f"input '{n}' holds no examples (shape {list(a.shape)})", path=paths[n])
    count = max(1 if tuple(a.shape) == net.inputs[n] else a.shape[0] for n, a in arrays.items())
    model = _model(args, net, min(args.batch, count))
    t0 = time.perf_counter()
    result = model.forward(**arrays)
    dt = time.perf_counter() - t0
    for n, y in result.items():
        if n in outs:
            save_npy(outs[n], y)
            print(f"{n}: {list(y.shape)} -> {outs[n]}")
        else:
            print(f"{n}: {list(y.shape)}")
            with np.printoptions(precision=4, suppress=True, threshold=60, edgeitems=3):
                print(y)
            if net.graph.classes and y.ndim == 2 and y.shape[1] == next(iter(net.graph.classes.values())):
                _print_top(y)
    print(f"{count} example(s) in {human_seconds(dt)}", file=sys.stderr)
    return 0


def _model(args, net, batch: int):
    """The network compiled for `batch`, with the weights of --weights (and the training data's
    normalization, which its forward() applies to the inputs), else its initial weights."""
    if not args.weights:
        return net.compile(batch=batch, **compile_options(args))

    return compile_for(net, args.weights, batch=batch, **compile_options(args))


def _print_top(logits: np.ndarray, k: int = 3) -> None:
    """The most probable classes of each example (softmax of the logits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    for i, row in enumerate(p[:20]):
        top = np.argsort(-row)[:k]
        print(f"  example {i}: " + "  ".join(f"{c} ({100 * row[c]:.1f}%)" for c in top))
    if len(p) > 20:
        print(f"  ... {len(p) - 20} more")


def cmd_bench(args) -> int:
    net = load_network(args.net)
    opts = compile_options(args)
    if args.compile_profile:
        print(compile_profile(net, args.batch, args.training, **opts))
        return 0
    report = bench(net, args.batch, args.training, opts.pop("threads", None), args.repeat, args.per_layer, **opts)
    print(render(report))
    return 0


def cmd_compile(args) -> int:
    net = load_network(args.net)
    obj, header = compile_object(net, args.out, args.batch, **compile_options(args))
    print(f"wrote {obj} and {header}")
    return 0


def cmd_train(args) -> int:
    net = load_network(args.net)
    for f in (args.data, args.resume):
        if f and not Path(f).exists():
            raise no_such_file(f, "no such file or directory")
    try:
        r = train(net, args.data, epochs=args.epochs, batch=args.batch, lr=args.lr, optimizer=args.optimizer,
                  seed=args.seed, out=args.out, resume=args.resume, mode=_train_mode(args),
                  servers=args.servers, staleness=args.staleness, on_nan=args.on_nan, **compile_options(args))
    except KeyboardInterrupt:
        return 130
    if r.rank != 0:
        return 0
    if args.plot:
        curves(r.history, args.plot, f"{net.name}: {len(r.history)} epochs")
        print(f"curves -> {args.plot}")
    print(f"final test accuracy {100 * r.evaluation.accuracy:.2f}% ({r.evaluation.count:,} examples), "
          f"test loss {r.evaluation.loss:.4f}, {human_seconds(r.seconds)} in all; checkpoint {r.checkpoint}")
    return 0


def _train_mode(args) -> str:
    if args.distributed:
        return "distributed" if args.distributed == "sync" else "ps"
    if (args.servers != 1 or args.staleness != 4) and not args.distributed:
        raise UsageError("--servers and --staleness go with --distributed=ps")
    return args.mode or "single"


def _run_pictures(args, net, paths: dict, outs: dict) -> int:
    """`dnnc run` on PNG pictures: a filter compiled for the picture's size, or a classifier."""

    if len(paths) != 1 or not all(images.is_png(p) for p in paths.values()):
        raise UsageError("pictures go with a network of one input: --input PICTURE.png")
    (name, path), = paths.items()
    pic = images.read_png(path)
    want = net.inputs[name]
    if net.graph.classes:  # a classifier: the picture as one example, as the training data were
        x = images.for_classifier(pic, want)[None]
        y = _model(args, net, 1).forward(**{name: x})[net.graph.outputs[0]][0]
        p = np.exp(y - y.max())
        p /= p.sum()
        top = np.argsort(-p)[:3]
        print(f"{path}: " + ", ".join(f"class {k} {100 * p[k]:.1f}%" for k in top))
        return 0
    if len(want) != 3:
        raise DnncError(f"input '{name}' is not a picture (shape {list(want)}; pictures are [channels, height, "
                        f"width])", path=args.net)
    c = want[0]
    if c == pic.shape[0]:
        x = pic[None]
    elif c == 1:  # each colour channel filtered as one example
        x = pic[:, None]
    elif pic.shape[0] == 1:
        x = np.repeat(pic, c, axis=0)[None]
    else:
        raise DnncError(f"the network takes {c} channels; the picture has {pic.shape[0]}", path=path)
    sized = net.with_inputs({name: (c,) + pic.shape[1:]})
    model = sized.compile(batch=x.shape[0], **compile_options(args))
    if args.weights:
        model.load(args.weights)
    result = model.forward(**{name: x})
    for n, y in result.items():
        pic_out = y[:, 0] if c == 1 and x.shape[0] > 1 else y[0]
        if n in outs:
            if images.is_png(outs[n]):
                top = float(np.abs(pic_out).max())
                images.write_png(outs[n], np.abs(pic_out) / top if top > 1 else pic_out)
            else:
                save_npy(outs[n], pic_out)
            print(f"{n}: {list(pic_out.shape)} -> {outs[n]}")
        else:
            print(f"{n}: {list(pic_out.shape)}")
    return 0


def cmd_export(args) -> int:
    net = load_network(args.net)
    model = net.compile(batch=1, threads=1)
    if args.weights:
        model.load(args.weights)
    params = {**{k: model.params[k] for k in model.params}, **{k: model.states[k] for k in model.states}}
    export(net, params, args.out, model.normalization)  # the model takes raw pixels, as dnnc run does
    print(f"wrote {args.out} (ONNX opset {OPSET}, {len(net.graph.layers)} layers"
          + (", inputs normalized as in training)" if model.normalization else ")"))
    return 0


def cmd_import(args) -> int:
    text, layer_params = import_model(args.model)
    net = load(text)
    weights = weights_for(net, layer_params)  # everything is checked before either file is written
    for path in (args.out, args.weights_out):
        writable_place(path)
    check_overwrite(args.weights_out, net, "--weights-out")  # never another network's checkpoint
    save_npz(args.weights_out, weights)
    atomic_write(args.out, text.encode())
    print(f"wrote {args.out} ({len(net.graph.layers)} layers) and {args.weights_out}")
    return 0


def cmd_filters(args) -> int:
    arrays = compress.read(args.weights)[1] if compress.is_dnnz(args.weights) else load_npz(args.weights)
    convs = [k for k, v in arrays.items() if getattr(v, "ndim", 0) == 4 and not k.startswith("state:")]
    name = args.layer if args.layer in arrays else f"{args.layer}.weight"
    if name not in convs:
        what = "is not a conv layer" if name in arrays else "no such layer"
        raise DnncError(f"'{args.layer}': {what} (conv weights: {', '.join(convs) or 'none'})", path=args.weights)
    rows, cols = filter_grid(np.asarray(arrays[name], np.float64), args.out, args.scale)
    print(f"{name}: {list(arrays[name].shape)} as a {rows}x{cols} grid -> {args.out}")
    return 0


def cmd_eval(args) -> int:
    net = load_network(args.net)
    ev = evaluate(net, args.weights, args.data, args.batch, **compile_options(args))
    k = len(ev.per_class)
    print(f"accuracy {100 * ev.accuracy:.2f}% on {ev.count} examples, mean loss {ev.loss:.4f}")
    print("per class: " + "  ".join(f"{c}:{100 * a:.1f}%" for c, a in enumerate(ev.per_class) if a == a))
    print("confusion (rows: true class, columns: predicted)")
    w = max(len(str(int(ev.confusion.max()))), len(str(k - 1))) + 1
    print(" " * 4 + "".join(str(c).rjust(w) for c in range(k)))
    for c in range(k):
        print(str(c).rjust(3) + " " + "".join(str(int(v)).rjust(w) for v in ev.confusion[c]))
    return 0


COMMANDS = {"bench": cmd_bench, "train": cmd_train, "eval": cmd_eval, "check": cmd_check, "info": cmd_info, "ir": cmd_ir, "run": cmd_run, "compile": cmd_compile, "compress": cmd_compress, "filters": cmd_filters, "export": cmd_export, "import": cmd_import}

if __name__ == "__main__":
    sys.exit(main())
