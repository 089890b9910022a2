"""The best network of a study as an MLflow pyfunc model: rows of 784 pixels in, digits out.

Logged from code (MLflow's "models from code", ``registry.register_run``): this file is the
model, copied into it with ``core`` and ``sweep/schema.py`` beside it, so loading runs no pickle
and needs only NumPy (and MLflow). The weights are the model's one artifact, the .npz that
``core.model.save_params`` wrote. Nothing imports this module: MLflow runs it when it loads
the model (``set_model`` below).
"""

from __future__ import annotations

import mlflow
import numpy as np

from core.model import load_params, predict
from sweep.schema import MODEL_WEIGHTS_KEY, N_PIXELS


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """Predicts the digit of each row: ``model_input`` a DataFrame or array (n, 784) of pixels."""

    def load_context(self, context) -> None:
        self.network, self.params = load_params(context.artifacts[MODEL_WEIGHTS_KEY])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        """(The hint, one MLflow infers no schema from, keeps it from checking the rows itself:
        the signature does, and a DataFrame of the rows arrives as the array.)"""
        X = np.asarray(model_input, dtype=np.float32)  # (n, 784)
        if X.ndim != 2 or X.shape[1] != N_PIXELS:
            raise ValueError(f"expected rows of {N_PIXELS} pixels, got an array of shape {X.shape}")
        return predict(self.network, self.params, X)  # (n,) digits


mlflow.models.set_model(DigitClassifier())
