"""The element types programs compute in, by the names the IR uses."""
from __future__ import annotations

import numpy as np

NP_DTYPE = {"f32": np.float32, "f64": np.float64}
