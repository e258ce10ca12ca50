"""The trained line as an MLflow pyfunc model, in this process: it takes x in every usual form, and anything
else is a bad request (HTTP 400) saying what it accepts. In this tier, not the unit tier, because the model
imports MLflow (seconds per test worker). Served for real: test_promoted.py."""

from __future__ import annotations

import runpy

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from support import REPO

MODEL_CODE = REPO / "src" / "gdpipe" / "track" / "pyfunc_model.py"


@pytest.fixture(scope="module")
def model():
    """The model class as MLflow loads it from code, with the lesson's float32 w."""
    linear = runpy.run_path(str(MODEL_CODE))["LinearModel"]()
    linear.w = 1.9999996423721313
    return linear


@pytest.mark.parametrize(
    "given",
    [[5.0, 7.0], [5, 7], np.array([5.0, 7.0]), np.array([[5.0], [7.0]], dtype=np.float32), pd.Series([5.0, 7.0]),
     pd.DataFrame({"x": [5.0, 7.0]})],
    ids=["list", "ints", "1-D", "Nx1", "Series", "DataFrame"],
)  # fmt: skip
def test_the_model_takes_every_usual_form_of_x(model, given):
    assert model.predict(given) == [1.9999996423721313 * 5.0, 1.9999996423721313 * 7.0]


@pytest.mark.parametrize(
    ("given", "got"),
    [
        (pd.DataFrame({"x": [5.0], "y": [1.0]}), "a DataFrame with 2 columns"),
        (np.array([[5.0, 1.0]]), "an array of shape (1, 2)"),
        (["five"], "values of type <U4"),
        ([5.0, None], "values of type object"),
        ([], "0 values (1 to 100,000 per request)"),
        ([float("nan")], "NaN or infinity"),
        ([float("inf")], "NaN or infinity"),
        (np.ones(100_001), "100001 values (1 to 100,000 per request)"),
    ],
)
def test_anything_else_is_a_bad_request_saying_what_is_accepted(model, given, got):
    with pytest.raises(MlflowException) as err:
        model.predict(given)
    assert err.value.get_http_status_code() == 400
    assert err.value.message == (
        "gdpipe's model takes x as a list of numbers, a 1-D or Nx1 array, a one-column DataFrame or a Series "
        f"of finite numbers; got {got}"
    )
