"""Units as people read them: durations (850 us, 12.5 ms, 3.2 s, 4.5 min, 2.1 h) and sizes in
binary units (512 B, 12.25 MiB)."""
from __future__ import annotations

import math

_UNITS = ((3600.0, "h"), (60.0, "min"), (1.0, "s"), (1e-3, "ms"), (1e-6, "us"))


def human_seconds(t: float) -> str:
    """A duration in the largest unit it reaches, to three significant figures (whole numbers
    from 100 up), so 12.4658242 s prints as `12.5 s`, not `12465824.2 us`."""
    if not math.isfinite(t):
        return f"{t} s"
    if t <= 0:
        return "0 s"
    t = float(f"{t:.3g}")  # rounded first, so 0.99996 s reads 1 s, not 1000 ms
    scale, unit = next((s, u) for s, u in _UNITS if t >= s or u == "us")
    v = t / scale
    text = f"{v:.0f}" if v >= 100 else f"{v:.3g}"
    return f"{text} {unit}"


def human_bytes(n: float) -> str:
    """Binary units, three significant figures unless two decimals are exact (12.25 MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    if unit == "B":
        return f"{int(n)} B"
    if abs(n * 100 - round(n * 100)) < 1e-9:
        text = f"{n:.2f}".rstrip("0").rstrip(".")
    else:
        text = f"{n:.3g}"
    return f"{text} {unit}"
