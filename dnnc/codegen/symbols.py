"""The C identifiers of generated functions and their arguments."""
from __future__ import annotations


def symbol(name: str) -> str:
    """A C identifier for a dnnc name (c1.weight -> c1_weight)."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out if not out[:1].isdigit() else "_" + out


def kernel_symbol(program: str, kernel: str) -> str:
    return symbol(f"{program}__k_{kernel}")
