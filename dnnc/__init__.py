"""dnnc: a readable deep-learning compiler. .net source -> loop nests -> LLVM -> machine code."""
from .api import Model, Network, load
from .base.errors import DnncError
from .base.version import __version__
from .training.train import evaluate, train

__all__ = ["load", "Network", "Model", "DnncError", "train", "evaluate"]
