"""Imported by a fork server before it forks workers: loads the compiled engine's code once
(from numba's disk cache, or compiling it), so that no worker pays for it. Does nothing when
the compiled engine cannot run here or $MLP_SWEEP_ENGINE says numpy (or is wrong: each
training run then reports that itself)."""

import numpy as np

from core.engine import kernels, resolve

try:
    ENGINE = resolve("auto", np.float32)
except ValueError:
    ENGINE = "numpy"
if ENGINE == "compiled":
    kernels().warm_up()
