"""The bare model `make bench` serves beside gdpipe's: a PythonModel that returns its input as it came,
logged and served exactly as gdpipe's model is, so the two servers differ only in the model."""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class Echo(PythonModel):
    def predict(self, model_input: pd.DataFrame, params=None):
        return model_input


mlflow.models.set_model(Echo())
