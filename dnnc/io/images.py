"""Pictures in and out of `dnnc run` (Pillow, the optional extra `dnnc[images]`).

A PNG becomes a float array [channels, height, width] in [0, 1]. An image-to-image network
(blur, sobel) is compiled for the picture's size; its declared input channels decide how a
picture is fed: a one-channel network filters each colour channel of an RGB picture as one
example of a batch. A classifier (LeNet-5) gets the picture resized to its input, in
grayscale, inverted when its background is light (the digits it learned are light on dark),
and normalized as the training data were.
"""
from __future__ import annotations

import io

import numpy as np

from ..base.errors import DnncError
from ..base.fileio import atomic_write

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DnncError("pictures need Pillow: pip install 'dnnc[images]'") from None
    return Image


def is_png(path: str) -> bool:
    return str(path).lower().endswith(".png")


def read_png(path) -> np.ndarray:
    """[C, H, W] floats in [0, 1]: 1 channel for grayscale, 3 for colour (alpha dropped)."""
    Image = _pil()
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise DnncError(f"cannot read: {e.strerror}", path=str(path)) from None
    if not data.startswith(PNG_MAGIC):
        raise DnncError("not a PNG image", path=str(path))
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # Pillow's errors for damaged files vary by format and version
        raise DnncError(f"damaged or truncated PNG ({e})", path=str(path)) from None
    gray = img.mode in ("1", "L", "LA", "I", "I;16", "F") or (img.mode == "P" and _palette_gray(img))
    arr = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0
    return arr[None] if gray else arr.transpose(2, 0, 1)


def _palette_gray(img) -> bool:
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def write_png(path, a: np.ndarray) -> None:
    """[C, H, W] or [H, W] floats in [0, 1] (clipped) as an 8-bit PNG, written atomically."""

    Image = _pil()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim == 3:
        a = a.transpose(1, 2, 0)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise DnncError(f"an output of shape {list(a.shape)} is not a picture (1 or 3 channels)", path=str(path))
    img = Image.fromarray((np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def for_classifier(pic: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A picture as one example for a classifier's input of `shape` [C, H, W]."""
    Image = _pil()
    c, h, w = shape
    gray = pic.mean(axis=0)
    img = Image.fromarray((gray * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    if np.median(x) > 0.5:  # a dark digit on light paper: the training digits are the reverse
        x = 1.0 - x
    return np.repeat(x[None], c, axis=0)
