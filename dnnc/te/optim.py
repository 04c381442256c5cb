"""Optimizers as tensor-expression statements: the update is generated code like the rest.

Each optimizer gives, per parameter W, statements over W's indices that update its state and
W in place, reading W.grad. Constants (momentum, betas, weight decay) are baked into the code;
what changes per step (the learning rate, Adam's bias corrections) is read from the small
buffer `opt.hyper`, which the training loop sets before each call. The formulas are
PyTorch's (torch.optim.SGD and torch.optim.Adam), so training runs can be compared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .expr import Binary, Const, Expr, Load, Unary, Var
from .stmt import TStmt
from . import affine
from .names import grad_name

HYPER = "opt.hyper"
HYPER_SIZE = 4


@dataclass(frozen=True)
class Optimizer:
    kind: str = "sgd"  # sgd | adam
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    # parameters whose gradient is multiplied by a 0/1 mask `param.mask` (pruned connections
    # stay exactly zero through training)
    masked: tuple[str, ...] = ()

    def __post_init__(self):  # from a checkpoint's JSON the names come as a list
        object.__setattr__(self, "masked", tuple(self.masked))

    def state(self, param: str) -> list[str]:
        mask = [f"{param}.mask"] if param in self.masked else []
        if self.kind == "adam":
            return [f"{param}.m", f"{param}.v"] + mask
        return ([f"{param}.v"] if self.momentum else []) + mask

    def hyper(self, step: int, lr: float) -> np.ndarray:
        """The per-step values for step number `step` (1-based) at learning rate lr."""
        h = np.zeros(HYPER_SIZE)
        if self.kind == "adam":
            h[0] = lr / (1 - self.beta1 ** step)
            h[1] = 1 / math.sqrt(1 - self.beta2 ** step)
        else:
            h[0] = lr
        return h

    def stmts(self, param: str, shape: tuple[int, ...]) -> list[TStmt]:
        # one flat axis over every element (row-major), so a 3x3 kernel's last axis does not
        # leave most vector lanes masked; the indices fold back to a unit stride
        axes = (("a", math.prod(shape)),)
        idx = flat_index(Var("a"), shape)
        w = Load(param, idx)
        g: Expr = Load(grad_name(param), idx)
        if param in self.masked:
            g = Binary("*", g, Load(f"{param}.mask", idx))
        if self.weight_decay:
            g = Binary("+", g, Binary("*", Const(self.weight_decay), w))
        lr = Load(HYPER, (Const(0),))
        out = []
        if self.kind == "adam":
            m, v = Load(f"{param}.m", idx), Load(f"{param}.v", idx)
            out.append(TStmt(m.tensor, axes, Binary("+", Binary("*", Const(self.beta1), m),
                                                      Binary("*", Const(1 - self.beta1), g)), index=idx))
            out.append(TStmt(v.tensor, axes, Binary("+", Binary("*", Const(self.beta2), v),
                                                      Binary("*", Const(1 - self.beta2), Binary("*", g, g))),
                             index=idx))
            denom = Binary("+", Binary("*", Unary("sqrt", v), Load(HYPER, (Const(1),))), Const(self.eps))
            step: Expr = Binary("/", m, denom)
        elif self.momentum:
            v = Load(f"{param}.v", idx)
            out.append(TStmt(v.tensor, axes, Binary("+", Binary("*", Const(self.momentum), v), g), index=idx))
            step = Binary("+", g, Binary("*", Const(self.momentum), v)) if self.nesterov else v
        else:
            step = g
        out.append(TStmt(param, axes, Binary("-", w, Binary("*", lr, step)), index=idx))
        return out


def flat_index(a: Expr, shape: tuple[int, ...]) -> tuple[Expr, ...]:
    """The row-major index of element number a of a tensor of this shape."""

    out = []
    inner = math.prod(shape)
    for k, x in enumerate(shape):
        inner //= x
        e: Expr = Binary("/", a, Const(inner)) if inner > 1 else a
        if k > 0:
            e = Binary("%", e, Const(x))
        out.append(affine.simplify(e))
    return tuple(out)


def lr_at(lr_decay: str, base: float, epoch: int, epochs: int, step_in_epoch: int, steps_per_epoch: int,
          step_size: int = 0, gamma: float = 0.1) -> float:
    """Learning rate for a step under `lr_decay`: constant, step (x gamma every step_size epochs)
    or cosine."""
    if lr_decay == "constant":
        return base
    if lr_decay == "step":
        size = step_size or max(epochs // 3, 1)
        return base * gamma ** (epoch // size)
    if lr_decay == "cosine":  # annealed per step to 0 at the end of the last epoch
        total = max(epochs * steps_per_epoch, 1)
        t = epoch * steps_per_epoch + step_in_epoch
        return 0.5 * base * (1 + math.cos(math.pi * t / total))
    raise ValueError(lr_decay)
