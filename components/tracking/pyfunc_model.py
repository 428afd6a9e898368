"""The exported SavedModel as an MLflow pyfunc model (`ImageClassifier`), as it is registered."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from components.artifacts import CLASS_ID, IMAGE_INPUT, LABEL, PROBABILITIES, SCORE, SERVING_SIGNATURE

# The artifact of the pyfunc model that holds the exported SavedModel directory.
SAVED_MODEL_ARTIFACT = "saved_model"
PREDICT_BATCH_SIZE = 64


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The exported SavedModel as a pyfunc model: image bytes in, label, score, class id and
    probabilities out, through the SavedModel's `serving_default` signature."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Loads the SavedModel of the artifact `saved_model`."""
        self._model = tf.saved_model.load(context.artifacts[SAVED_MODEL_ARTIFACT])
        self._serve = self._model.signatures[SERVING_SIGNATURE]

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Classifies a DataFrame with a column `image_bytes` (JPEG or PNG bytes) or a list of bytes:
        one row per image with `label`, `score`, `class_id` and `probabilities`."""
        if isinstance(model_input, pd.DataFrame):
            if IMAGE_INPUT not in model_input.columns:
                raise ValueError(f"the input DataFrame needs a column {IMAGE_INPUT}, got {list(model_input.columns)}")
            images = model_input[IMAGE_INPUT].tolist()
        else:
            images = list(model_input)
        batches = [self._serve(**{IMAGE_INPUT: tf.constant(images[start:start + PREDICT_BATCH_SIZE], dtype=tf.string)})
                   for start in range(0, len(images), PREDICT_BATCH_SIZE)]
        if not batches:
            return pd.DataFrame({LABEL: [], SCORE: [], CLASS_ID: [], PROBABILITIES: []})
        probabilities = np.concatenate([b[PROBABILITIES].numpy() for b in batches]).astype(float)
        return pd.DataFrame({
            LABEL: [label.decode("utf-8") for b in batches for label in b[LABEL].numpy()],
            SCORE: np.concatenate([b[SCORE].numpy() for b in batches]).astype(float),
            CLASS_ID: np.concatenate([b[CLASS_ID].numpy() for b in batches]).astype(int),
            PROBABILITIES: [row.tolist() for row in probabilities],
        })
