"""The software a result was made with, as tags of its run: what `make reproduce` names when a rebuild differs.

    environment()                  -> {"gdpipe.env.python": "3.11.7", "gdpipe.env.numpy": "2.4.6", ...}
    differences(recorded, now)     -> ["trained with Python 3.11.7, rebuilt with 3.12.1", ...]

No MLflow here: the track stage gathers it before importing mlflow. Versions are read from the installed
distributions' metadata, not by importing torch, DVC or MLflow. The BLAS kernel is the one OpenBLAS (or
another BLAS) picked for this CPU at run time, as threadpoolctl reports it: the same NumPy build runs other
code on another processor.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import numpy as np  # noqa: F401  (loads NumPy's BLAS, which threadpoolctl then finds)
import threadpoolctl

TAG_PREFIX = "gdpipe.env."
# What each tag is called in a sentence, in the order sentences list them.
NAMES = {
    "python": "Python",
    "numpy": "NumPy",
    "torch": "PyTorch",
    "dvc": "DVC",
    "mlflow": "MLflow",
    "platform": "platform",
    "blas": "BLAS",
}
DISTRIBUTIONS = ("numpy", "torch", "dvc", "mlflow")


def environment() -> dict[str, str]:
    """This process's Python, NumPy, PyTorch, DVC and MLflow versions, platform and BLAS kernel, as run tags."""
    found = {"python": platform.python_version()}
    found |= {name: _version(name) for name in DISTRIBUTIONS}
    found |= {"platform": platform.platform(), "blas": _blas()}
    return {TAG_PREFIX + key: found[key] for key in NAMES}


def recorded(tags: dict[str, str]) -> dict[str, str]:
    """The environment tags among a run's tags."""
    return {key: value for key, value in tags.items() if key.startswith(TAG_PREFIX)}


def differences(trained: dict[str, str], rebuilt: dict[str, str]) -> list[str]:
    """One phrase per tag that differs between the environment recorded at training and the rebuild's."""
    if not trained:
        return ["the environment at training was not recorded (its run was published before gdpipe recorded it)"]
    phrases = []
    for key, name in NAMES.items():
        before, now = trained.get(TAG_PREFIX + key), rebuilt.get(TAG_PREFIX + key, "none")
        if before is None:
            phrases.append(f"{name} not recorded at training, rebuilt with {now}")
        elif before != now:
            phrases.append(f"trained with {name} {before}, rebuilt with {now}")
    return phrases


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _blas() -> str:
    """Each loaded BLAS: its library, version and the kernel it chose for this CPU (OpenBLAS's core type)."""
    pools = [pool for pool in threadpoolctl.threadpool_info() if pool.get("user_api") == "blas"]
    kernels = [f"{pool['internal_api']} {pool['version']} {pool.get('architecture') or ''}".strip() for pool in pools]
    return "; ".join(kernels) or "none loaded"
