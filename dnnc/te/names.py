"""The names of the tensors the compiler makes, in one place: every module that makes one, or
looks for one, asks here instead of spelling a suffix."""
from __future__ import annotations

GRAD = ".grad"


def grad_name(tensor: str) -> str:
    """The gradient of the loss with respect to `tensor`."""
    return tensor + GRAD


def grad_of(name: str) -> str:
    """The tensor a gradient's name is of (`c1.weight.grad` -> `c1.weight`)."""
    return name[: -len(GRAD)]


def names_gradient(name: str) -> bool:
    """Whether a name (a tensor's, or a schedule step's) is of a gradient or made from one."""
    return GRAD in name


def argmax_name(tensor: str) -> str:
    """The companion of a max, `T.arg`: where the first maximum of each window is."""
    return tensor + ".arg"
