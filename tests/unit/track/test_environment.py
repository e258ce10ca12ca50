"""The software a run records (gdpipe.env.* tags), and the words make reproduce uses when a rebuild's differs."""

from __future__ import annotations

import platform
from importlib.metadata import version

from gdpipe.track import environment


def test_the_environment_is_this_processs_versions_platform_and_blas_kernel():
    tags = environment.environment()
    assert list(tags) == [f"gdpipe.env.{key}" for key in environment.NAMES]
    assert tags["gdpipe.env.python"] == platform.python_version()
    for name in ("numpy", "torch", "dvc", "mlflow"):
        assert tags[f"gdpipe.env.{name}"] == version(name)
    assert tags["gdpipe.env.platform"] == platform.platform()
    assert tags["gdpipe.env.blas"].startswith("openblas ")  # NumPy's wheels carry OpenBLAS: library, version, kernel


def test_each_difference_is_one_phrase_in_the_order_of_the_names():
    trained = environment.environment()
    now = trained | {"gdpipe.env.python": "3.12.1", "gdpipe.env.blas": "openblas 0.3.31 Haswell"}
    assert environment.differences(trained, trained) == []
    assert environment.differences(trained, now) == [
        f"trained with Python {trained['gdpipe.env.python']}, rebuilt with 3.12.1",
        f"trained with BLAS {trained['gdpipe.env.blas']}, rebuilt with openblas 0.3.31 Haswell",
    ]
    older = {key: value for key, value in trained.items() if key != "gdpipe.env.blas"}
    assert (
        environment.differences(older, now)[-1] == "BLAS not recorded at training, rebuilt with openblas 0.3.31 Haswell"
    )
    assert environment.differences({}, now) == [
        "the environment at training was not recorded (its run was published before gdpipe recorded it)"
    ]
    assert environment.recorded({"variant": "torch", **trained}) == trained
