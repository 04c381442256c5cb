"""dnnc: a readable deep-learning compiler. .net source -> loop nests -> LLVM -> machine code."""
from .api import Model, Network, load
from .errors import DnncError

__all__ = ["load", "Network", "Model", "DnncError"]
__version__ = "0.1.0"
