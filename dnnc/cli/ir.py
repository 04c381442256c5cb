"""`dnnc ir`: any stage of the pipeline, as the driver's stage list names it."""
from __future__ import annotations

import re
from pathlib import Path

from ..api import checks_wanted
from ..base.errors import DnncError, UsageError, did_you_mean
from ..driver import stages as pipeline
from ..driver.compile import lower
from ..driver.unit import Job
from ..front.parse import parser, terminate_statements
from ..front.settings import settings_from
from ..ir import show_program
from ..schedule.primitives import show_composition
from ..schedule.steps import Tile
from ..target import get as get_target
from .common import compile_options, load_network, schedule_of


def list_stages() -> str:
    lines = ["ast               the syntax tree of the .net file (front/parse.py)",
             "graph             the checked layers, shapes and parameters (front/graph.py)"]
    for s in pipeline.STAGES:
        only = "" if set(s.kinds) >= {"forward", "train"} else \
            " [training]" if "forward" not in s.kinds else " [inference]"
        lines.append(f"{s.name:<17} {s.summary}{only}")
    lines += ["llvm-opt          the LLVM IR after the target's optimization pipeline",
              "asm               the target's assembly",
              "ptx               the same as asm: the cuda target's assembly is PTX"]
    return "\n".join(lines)


def cmd_ir(args) -> int:
    if args.list_stages:
        print(list_stages())
        return 0
    if args.net is None:
        raise UsageError("dnnc ir needs a network file (or --list-stages)")
    stage = args.stage
    valid = pipeline.names()
    if stage not in valid:
        raise UsageError(f"unknown stage '{stage}'{did_you_mean(stage, valid)} (stages: {', '.join(valid)})")
    net = load_network(args.net)  # reports errors with locations (and a missing, binary or directory path)
    if stage == "ast":
        text = Path(args.net).read_text(encoding="utf-8")
        print(parser().parse(terminate_statements(text)).pretty(), end="")
        return 0
    g = net.at_batch(args.batch, training=args.grad)
    layers = [l for l in g.layers if _match(l, args.layer)]
    if args.layer and not layers and not (args.grad and args.layer == "loss"):
        names = [l.name for l in g.layers]
        raise UsageError(f"no layer '{args.layer}'{did_you_mean(args.layer, names)} (layers: {', '.join(names)})")
    if stage == "graph":
        if args.grad:
            raise UsageError("--grad starts at the tensor-expression stage: use --stage te or later")
        for l in layers:
            shape = list(g.tensors[l.output].shape)
            ins = ", ".join(f"{t}{list(g.tensors[t].shape)}" for t in l.inputs)
            ps = "".join(f"\n    param {p}{list(g.tensors[p].shape)}" for p in l.params)
            print(f"{l.name} = {l.op}({ins}) -> {l.output}{shape}{ps}")
        return 0
    optimizer = settings_from(net).optimizer if args.grad else None
    if args.grad and args.prepare:
        raise UsageError("--prepare is the forward pass's weight program; it does not go with --grad")
    target = get_target(compile_options(args)["target"])
    job = Job(g, target, "train" if args.grad else "prepare" if args.prepare else "forward", optimizer,
              schedule=schedule_of(args), checks=checks_wanted())
    found = {s.name: s for s in pipeline.STAGES}
    upto = stage if stage in found else "llvm"
    if upto in found and job.kind not in found[upto].kinds:
        raise UsageError(f"stage '{stage}' belongs to training programs: add --grad")
    name, u = lower(job, upto=upto)[-1]
    wanted = _wanted(g, args.layer)
    level = found[upto].level
    if level == "te":
        ops = {l.name: l.op for l in g.layers}
        for gname, stmts in u.groups:
            if wanted(gname):
                print(f"# {gname}: {ops[gname]}" if gname in ops and not args.grad else f"# {gname}")
                for s in stmts:
                    print(s.show())
        return 0
    if level == "schedule":  # each Tile with the primitives it is made of, as a comment
        lines = [f"{s}  # = {show_composition(s)}" if isinstance(s, Tile) else str(s) for s in u.schedule]
        print("\n".join(lines) or "(no schedule: plain loop nests)")
        return 0
    if level == "loops":
        p = u.program.replace_kernels(k for k in u.program.kernels if wanted(k.name))
        print(show_program(p), end="")
        return 0
    if level == "plan":
        print(f"workspace: {u.workspace} elements")
        for b in u.program.buffers:
            if b.name in u.offsets:
                print(f"  {b.name:<32} at {u.offsets[b.name]}")
        return 0
    target = job.target
    stage = "asm" if stage == "ptx" else stage
    out = {"llvm": lambda t: t, "llvm-opt": target.optimized_ir, "asm": target.assembly}[stage](u.llvm_ir)
    if args.layer:
        out = "\n\n".join(_extract(out, target.kernel_symbol(u.program.name, k.name), stage)
                          for k in u.program.kernels if wanted(k.name))
    print(out)
    return 0


def _match(layer, name) -> bool:
    return name is None or layer.name == name or layer.binding == name


def _wanted(g, layer: str | None):
    """Which kernels and groups `--layer` selects: the layer's own and those named after it."""
    names = {l.name for l in g.layers if _match(l, layer)} | ({layer} if layer else set())

    def wanted(kname: str) -> bool:
        return layer is None or any(kname == n or kname.startswith(n + ".") for n in names)

    return wanted


def _extract(text: str, sym: str, stage: str) -> str:
    """One function's text from an LLVM module or an assembly listing."""
    if stage == "asm" and ".visible .entry" in text:  # PTX
        m = re.search(rf"^\.visible \.entry {re.escape(sym)}\(.*?^\}}", text, re.S | re.M)
    elif stage == "asm":
        m = re.search(rf"^{re.escape(sym)}:.*?(?=^\s*\.Lfunc_end|\Z)", text, re.S | re.M)
    else:
        m = re.search(rf'^define[^\n]*@"?{re.escape(sym)}"?\(.*?^\}}', text, re.S | re.M)
    return m.group(0) if m else f"; {sym} was inlined or removed"
