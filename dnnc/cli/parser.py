"""The dnnc command line: its subcommands and flags, each with a help text and its default.

No flag may be abbreviated (--epoch is not --epochs): a mistyped flag is refused in one line
that names the nearest real one.
"""
from __future__ import annotations

import argparse
import re

from ..base.version import __version__
from ..base.errors import UsageError, did_you_mean
from ..target import PRECISIONS
from ..target import names as target_names


class _Help(argparse.HelpFormatter):
    """Each flag's help ends with its default, unless the help already says it or there is
    none worth showing (a switch, a flag without a default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default == []
                or default is argparse.SUPPRESS or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --epoch must not be taken for --epochs
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:
            message += did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        raise UsageError(f"{message} (see 'dnnc {self.prog.split()[-1]} --help')"
                         if " " in self.prog else f"{message} (see 'dnnc --help')")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown flag is reported by its command, with the nearest flags."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = self.commands.get(getattr(ns, "command", None), self) if hasattr(self, "commands") else self
            flags = [o for a in sub._actions for o in a.option_strings]
            hints = "".join(did_you_mean(x.split("=")[0], flags) for x in extras if x.startswith("-"))
            sub.error(f"unrecognized arguments: {' '.join(extras)}{hints}")
        return ns


def _whole(least: int):
    """An argparse type: a whole number of at least `least`."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {v}")
        return v

    return parse


_positive = _whole(1)
_nonneg_int = _whole(0)


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v >= 0) or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return v


NET_HELP = "the network's .net file"


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dnnc", description="A readable deep-learning compiler for CPUs.")
    p.add_argument("--version", action="version", version=f"dnnc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                           help="one of these (dnnc COMMAND --help for its arguments):")

    c = sub.add_parser("check", help="parse and check a network; print a summary")
    c.add_argument("net", help=NET_HELP)

    i = sub.add_parser("info", help="per-layer table: shapes, parameters, memory, FLOPs "
                                    "(of a compressed MODEL.dnnz: the Deep Compression table)")
    i.add_argument("net", metavar="NET|MODEL.dnnz", help="a .net file, or a compressed model for its table")
    i.add_argument("--batch", type=_positive, default=1, help="examples per batch, for the memory per batch")
    i.add_argument("--training", action="store_true",
                   help="also the planned memory of a training step: weights, gradients, optimizer state, activations")
    i.add_argument("--plan", action="store_true", help="also the planned memory of inference")
    i.add_argument("--graph", metavar="NET.svg", help="also draw the network: layers, shapes, fused kernels")

    z = sub.add_parser("compress", help="Deep Compression: prune, share weights, Huffman-code -> MODEL.dnnz")
    z.add_argument("net", help=NET_HELP)
    z.add_argument("--weights", required=True, metavar="CKPT.npz", help="the trained network to compress")
    z.add_argument("--prune", metavar="FRACTION|LAYER=FRACTION,...",
                   help="fraction of weights to remove, for all layers or per weight tensor "
                        "(default: the paper's per layer kind)")
    z.add_argument("--clusters", metavar="conv=256,dense=32",
                   help="shared weights per layer kind (default: conv=256,dense=32)")
    z.add_argument("--retrain", type=_nonneg_int, default=6, metavar="EPOCHS",
                   help="epochs of retraining after each pruning stage and of centroid fine-tuning")
    z.add_argument("--data", help="retraining data (default: the embedded digits, as dnnc train)")
    z.add_argument("-o", "--out", required=True, metavar="MODEL.dnnz", help="the compressed model to write")

    r = sub.add_parser("ir", help="print a stage of the pipeline")
    r.add_argument("net", nargs="?", help=NET_HELP)
    r.add_argument("--stage", default="loops",
                   help="a stage of the pipeline (dnnc ir --list-stages lists them; default: loops)")
    r.add_argument("--list-stages", action="store_true", help="print the pipeline's stages in order, and exit")
    r.add_argument("--layer", help="only this layer (or binding)")
    r.add_argument("--batch", type=_positive, default=1, help="examples per batch")
    r.add_argument("--grad", action="store_true",
                   help="the training program: forward, loss, backward (derived by autodiff) and update")
    r.add_argument("--prepare", action="store_true",
                   help="the forward pass's prepare program: what it computes from the weights alone (folded "
                        "batchnorm, Winograd's filter transform, packed weights), run when they change")

    u = sub.add_parser("run", help="run the forward pass on inputs from .npy files or PNG pictures")
    u.add_argument("net", help=NET_HELP)
    u.add_argument("--weights", metavar="CKPT.npz|MODEL.dnnz",
                   help="parameters, and the training data's normalization (default: the declared "
                        "initializers, seed 0)")
    u.add_argument("--input", action="append", required=True, metavar="[NAME=]X.npy",
                   help="an input array of shape [N, ...] or one example, or a .png; NAME= for networks with several")
    u.add_argument("-o", "--out", metavar="[NAME=]Y.npy", action="append",
                   help="write an output to .npy or .png (repeatable; NAME= for networks with several)")
    u.add_argument("--batch", type=_positive, default=64, help="examples per native call")

    t = sub.add_parser("train", help="train a network (default data: the embedded MNIST digits)")
    t.add_argument("net", help=NET_HELP)
    t.add_argument("--data", help="a directory of IDX files or an .npz (x_train, y_train, x_test, y_test) "
                                  "(default: the train { } block's, else the embedded digits)")
    t.add_argument("--epochs", type=_positive, help="epochs to train (default: the train { } block's, else 10)")
    t.add_argument("--batch", type=_positive, help="examples per step (default: the train { } block's, else 64)")
    t.add_argument("--lr", type=_nonneg_float,
                   help="learning rate (default: the train { } block's, else 0.01 for sgd, 0.001 for adam)")
    t.add_argument("--optimizer", choices=["sgd", "adam"],
                   help="sgd with momentum 0.9, or adam (default: the train { } block's, else sgd)")
    t.add_argument("--seed", type=_nonneg_int, default=0, help="seeds the initial weights, shuffling and dropout")
    t.add_argument("-o", "--out", metavar="CKPT.npz",
                   help="checkpoint to write after every epoch; refused if it holds another network's "
                        "(default: the --resume file, else NETWORK.npz)")
    t.add_argument("--resume", metavar="CKPT.npz", help="continue the run saved in this checkpoint, bit for bit")
    how = t.add_mutually_exclusive_group()
    how.add_argument("--data-parallel", dest="mode", action="store_const", const="data",
                     help="split each batch across --threads replicas and average their gradients "
                          "(synchronous; the same bits for a given thread count)")
    how.add_argument("--async", dest="mode", action="store_const", const="async",
                     help="Hogwild: --threads threads each train their own batches, updating the "
                          "shared weights without locks")
    how.add_argument("--distributed", nargs="?", const="sync", choices=("sync", "ps"), metavar="sync|ps",
                     help="across MPI ranks (mpiexec -n N dnnc train NET --distributed): synchronous data "
                          "parallelism, or =ps for asynchronous parameter servers")
    t.add_argument("--servers", type=_positive, default=1, help="parameter-server ranks, with --distributed=ps")
    t.add_argument("--staleness", type=_nonneg_int, default=4,
                   help="updates a worker may run ahead of the slowest, with --distributed=ps")
    t.add_argument("--plot", metavar="CURVES.png", help="draw loss and accuracy per epoch (needs dnnc[plot])")
    t.add_argument("--on-nan", choices=("stop", "skip"), default="stop",
                   help="a step whose loss or a gradient is not finite: stop, naming the layer, "
                        "or undo and skip it")

    x = sub.add_parser("export", help="write the network and its weights as an ONNX model (dnnc[onnx])")
    x.add_argument("net", help=NET_HELP)
    x.add_argument("--weights", metavar="CKPT.npz|MODEL.dnnz", help="the weights (default: the seeded initial ones)")
    x.add_argument("-o", "--out", required=True, metavar="MODEL.onnx", help="the ONNX file to write")

    m = sub.add_parser("import", help="read an ONNX model into a .net file and its weights (dnnc[onnx])")
    m.add_argument("model", metavar="MODEL.onnx", help="the ONNX model to read")
    m.add_argument("-o", "--out", required=True, metavar="NET.net", help="the .net file to write")
    m.add_argument("--weights-out", required=True, metavar="W.npz", help="the weights file to write")

    f = sub.add_parser("filters", help="draw a conv layer's learned filters as a grid (PNG)")
    f.add_argument("weights", metavar="CKPT.npz|MODEL.dnnz", help="the trained weights")
    f.add_argument("--layer", required=True, help="the layer (c1) or its weight (c1.weight)")
    f.add_argument("-o", "--out", required=True, metavar="FILTERS.png", help="the picture to write")
    f.add_argument("--scale", type=_positive, default=8, help="pixels per weight")

    e = sub.add_parser("eval", help="accuracy, loss, per-class accuracy and confusion matrix")
    e.add_argument("net", help=NET_HELP)
    e.add_argument("--weights", required=True, metavar="CKPT.npz|MODEL.dnnz", help="the trained weights")
    e.add_argument("--data", help="the data set, as for dnnc train (default: the embedded digits' test part)")
    e.add_argument("--batch", type=_positive, default=256, help="examples per native call")

    bn = sub.add_parser("bench", help="time the forward pass or the training step, whole and per kernel")
    bn.add_argument("net", help=NET_HELP)
    bn.add_argument("--batch", type=_positive, default=64, help="examples per step")
    bn.add_argument("--training", action="store_true", help="the training step: forward, backward, update")
    bn.add_argument("--per-layer", action="store_true", help="also time every kernel on its own")
    bn.add_argument("--compile-profile", action="store_true",
                    help="instead, the seconds of each compiler stage, cold (no disk cache)")
    bn.add_argument("--repeat", type=_positive, default=20, help="runs per measurement; medians are shown")

    o = sub.add_parser("compile", help="ahead-of-time object file and C header")
    o.add_argument("net", help=NET_HELP)
    o.add_argument("-o", "--out", required=True, metavar="NAME.o", help="the object file to write (and NAME.h)")
    o.add_argument("--batch", type=_positive, default=1, help="examples per call")
    for sp in (r, u, t, e, o, bn):
        sp.add_argument("--schedule", action="append", default=[], metavar="STEP",
                        help="a schedule step replacing the default for its tensor, as `dnnc ir --stage "
                             "schedule` prints it: 'tile(c1.conv, vector=j:16, unroll=f:4)' or 'naive(c1.conv)' "
                             "(repeatable)")
        sp.add_argument("--no-schedule", action="store_true", help="plain loop nests: no tiling or vectors")
        sp.add_argument("--target", default="cpu", choices=target_names(),
                        help="the machine to compile for (default: cpu, this host)")
        sp.add_argument("--device", type=_nonneg_int, default=0, metavar="N",
                        help="with --target cuda: the GPU to run on (default: 0)")
        sp.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="with --target cuda: the operands of convolutions and dense layers (and their "
                             "gradients) on the tensor cores, rounded to tf32 or bf16 with fp32 sums "
                             "(default: fp32, no rounding)")
    for sp in (u, t, e, bn):
        sp.add_argument("--threads", type=_positive, help="threads for parallel loops (default: every core)")
    for sp in (u, t, e, o, bn):
        sp.add_argument("--checks", action="store_true",
                        help="debug build: test every index at run time and abort naming the buffer "
                             "(as DNNC_CHECKS=1)")
    p.commands = sub.choices
    return p
