"""Which engine trains: the NumPy reference or the compiled one (``core.compiled``, needs numba).

This is the one module that imports the compiled kernels (``kernels``): the trainers reach
them through it, and the kernels import nothing of the trainers.

``TrainConfig.engine`` is "auto" unless a study says otherwise: the compiled engine when
numba imports and the parameters are float32 (the only dtype it compiles for), else NumPy.
``$MLP_SWEEP_ENGINE`` ("numpy" or "compiled") says what "auto" means on a machine, e.g.
to fall back to NumPy everywhere without editing studies. Both engines give the same
weights and history up to float32 rounding, so "auto" never changes what a study means.
numba is only imported when the compiled engine is first used.
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

from core.config import ENGINES, OPTIONS

ENV_VAR = "MLP_SWEEP_ENGINE"  # what "auto" resolves to: "numpy" or "compiled"

_unavailable: str | None = None  # why core.compiled did not import, once it was tried


class EngineUnavailable(ImportError):
    """The compiled engine was asked for but cannot run here; the message says why."""


def kernels() -> ModuleType:
    """The compiled engine's module, ``core.compiled`` (imported, with numba, on first use)."""
    import core.compiled

    return core.compiled


def compiled_unavailable() -> str | None:
    """Why the compiled engine cannot run in this process (importing it if not yet tried), or None."""
    global _unavailable
    if _unavailable is None:
        try:
            kernels()
        except ImportError as exc:  # numba missing, or built for another NumPy
            _unavailable = f"numba cannot be imported ({exc})"
            return _unavailable
        return None
    return _unavailable


def resolve(requested: str, dtype: np.dtype) -> str:
    """The engine ("numpy" or "compiled") that trains parameters of ``dtype`` for ``requested``.

    "auto" is read from $MLP_SWEEP_ENGINE when set; unset, it falls back to NumPy when
    numba is missing or the dtype is not float32. An explicit "compiled" that cannot run
    raises EngineUnavailable naming the reason; a bad $MLP_SWEEP_ENGINE raises ValueError.
    """
    OPTIONS["engine"].check("engine", requested)
    explicit = requested != "auto"
    if not explicit and os.environ.get(ENV_VAR):
        requested = os.environ[ENV_VAR]
        if requested not in ENGINES[1:]:
            raise ValueError(f"${ENV_VAR} must be numpy or compiled, got {requested!r}")
        explicit = True
    if requested == "numpy":
        return "numpy"
    if np.dtype(dtype) != np.float32:
        if explicit:
            raise EngineUnavailable(f"the compiled engine trains float32 parameters only, got {np.dtype(dtype)}")
        return "numpy"
    reason = compiled_unavailable()
    if reason is not None and explicit:
        raise EngineUnavailable(f'the compiled engine cannot run: {reason}; use engine = "numpy"')
    return "numpy" if reason else "compiled"
