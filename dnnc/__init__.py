"""dnnc: a readable deep-learning compiler. .net source -> loop nests -> LLVM -> machine code."""
from .api import Model, Network, load
from .base.errors import DnncError
from .training.train import evaluate, train  # dnnc.train is this function; the module is sys.modules["dnnc.training.train"]

__all__ = ["load", "Network", "Model", "DnncError", "train", "evaluate"]
__version__ = "0.1.0"
