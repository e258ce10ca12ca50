"""The trained line as an MLflow pyfunc model, logged as code so that loading it needs only mlflow.

    mlflow.pyfunc.load_model("models:/gdpipe-torch@champion").predict([5.0, 7.0])  ->  [9.99999821..., 13.9999974...]

The model's one artifact is the variant's models/<variant>.json, the same file DVC tracks. It has
no signature, so MLflow passes any input through and `as_inputs` says what it accepts: the server
answers a bad request with HTTP 400 and that line.
"""

import json

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

# More inputs than this in one call is a mistake (a 10 MB body), not a batch to score here:
# `mlflow models predict` scores a file.
MAX_INPUTS = 100_000
ACCEPTED = "a list of numbers, a 1-D or Nx1 array, a one-column DataFrame or a Series"


class LinearModel(PythonModel):
    """f(x) = w * x with the w of one trained variant (the float32 w, as metrics.json has it)."""

    def load_context(self, context):
        with open(context.artifacts["trained_model"]) as handle:
            self.w = float(json.load(handle)["w"])

    # pd.DataFrame is one of the hints MLflow infers no schema from (the signature is given when the
    # model is logged): every input comes through as sent, a list, an array or a DataFrame.
    def predict(self, model_input: pd.DataFrame, params=None):
        return (self.w * as_inputs(model_input)).tolist()


def as_inputs(model_input) -> np.ndarray:
    """The x values as a 1-D float64 array, or an MlflowException (HTTP 400) saying what is accepted."""
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] != 1:
            raise _bad(f"a DataFrame with {model_input.shape[1]} columns")
        model_input = model_input.iloc[:, 0]
    values = model_input.to_numpy() if isinstance(model_input, pd.Series) else np.asarray(model_input)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise _bad(f"an array of shape {values.shape}")
    if values.dtype.kind not in "iuf":
        raise _bad(f"values of type {values.dtype}")
    if not 0 < values.size <= MAX_INPUTS:
        raise _bad(f"{values.size} values (1 to {MAX_INPUTS:,} per request)")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise _bad("NaN or infinity")
    return values


def _bad(got: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(f"gdpipe's model takes x as {ACCEPTED} of finite numbers; got {got}")


mlflow.models.set_model(LinearModel())
