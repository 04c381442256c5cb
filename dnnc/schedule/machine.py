"""The machine model a target gives its default schedule: what the heuristics may assume."""
from __future__ import annotations

from dataclasses import dataclass

DTYPE_BITS = {"f32": 32, "f64": 64}


@dataclass(frozen=True)
class Machine:
    """A target's vector width, cache and cores, as the default schedule sees them.

    The lowering masks ragged edges, so any extent works with any vector width; these
    numbers only decide what pays."""

    name: str
    vector_bits: int  # SIMD register width: lanes per vector are vector_bits / element bits
    l2_bytes: int  # cache per core; an operand larger than it is read in panels
    cores: int  # threads that a parallel loop can use
    parallel_flops: int  # below this a statement is not worth starting threads for

    def lanes(self, dtype: str = "f32") -> int:
        return self.vector_bits // DTYPE_BITS[dtype]
