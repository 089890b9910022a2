"""mlp-sweep's core: MNIST data, a fast NumPy MLP and its SGD trainer (NumPy + stdlib only),
with a compiled engine (numba, imported only when it trains: see ``core.engine``)."""

from core.config import TrainConfig
from core.history import CURVES, EpochRecord, LearningCheck, NonFiniteError, NotLearningError, TrainResult
from core.model import NetworkSpec, Params, evaluate, gradients, init_params, load_params, predict, save_params
from core.train import train

__all__ = [
    "CURVES",
    "EpochRecord",
    "LearningCheck",
    "NetworkSpec",
    "NonFiniteError",
    "NotLearningError",
    "Params",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "gradients",
    "init_params",
    "load_params",
    "predict",
    "save_params",
    "train",
]
