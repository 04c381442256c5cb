"""Fingerprints of the generated code: the final loop IR (with its schedule) and the LLVM IR of
every example's forward and training programs, written to a folder, so that two trees can be
compared file by file (`cmp`) after a change meant to keep the generated code identical.

Usage: python benchmarks/ir_fingerprint.py OUT_DIR [--batch 2]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["DNNC_CACHE"] = "0"
import dnnc  # noqa: E402
from dnnc.api import Model  # noqa: E402
from dnnc.front.settings import settings_from  # noqa: E402
from dnnc.ir import show_program  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LARGE = {"resnet18", "vgg11_bn", "mobilenetv2", "vgg16"}  # their training programs take minutes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "examples").glob("*.net")):
        net = dnnc.load(path)
        model = Model(net, args.batch, threads=1)
        kinds = [("forward", model.executable("forward"))]
        if path.stem not in LARGE and net.graph.loss is not None:
            kinds.append(("train", model.executable("train", settings_from(net).optimizer)))
        for kind, ex in kinds:
            text = show_program(ex.program) + "\n".join(map(str, ex.program.schedule))
            (out / f"{path.stem}.{kind}.loops.txt").write_text(text)
            (out / f"{path.stem}.{kind}.ll").write_text(ex.llvm_ir)
        print(path.stem, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
