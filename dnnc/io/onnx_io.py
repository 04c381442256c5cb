"""ONNX in and out (the optional extra `dnnc[onnx]`): `dnnc export` is onnx_export, `dnnc import`
is onnx_import (with the ops it writes in index notation in onnx_ops). The names here stay
importable for the code that used this module."""
from __future__ import annotations

from .onnx_export import OPSET, export  # noqa: F401
from .onnx_import import MAX_BYTES, MAX_ELEMENTS, import_model, read_model, weights_for  # noqa: F401
