"""The trained line as an MLflow pyfunc model, logged as code so that loading it needs only mlflow.

    mlflow.pyfunc.load_model("runs:/<run id>/model").predict([5.0])  ->  [10.0]

The model's one artifact is the variant's models/<variant>.json, the same file DVC tracks.
"""

import json

import mlflow
from mlflow.pyfunc import PythonModel


class LinearModel(PythonModel):
    """f(x) = w * x with the w of one trained variant."""

    def load_context(self, context):
        with open(context.artifacts["trained_model"]) as handle:
            self.w = float(json.load(handle)["w"])

    def predict(self, model_input: list[float], params=None) -> list[float]:
        return [self.w * x for x in model_input]


mlflow.models.set_model(LinearModel())
