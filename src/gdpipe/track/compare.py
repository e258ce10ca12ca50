"""make reproduce's comparison: the recorded model version against its rebuild, one row per thing compared.

Each DVC output's md5 with the commit's dvc.lock; the model as MLflow loads it (its file's bytes, w and f(x));
every logged step of every metric. Equal means equal to the bit: NaN equals NaN, nothing is "close enough".
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.models import Model

from gdpipe.core.files import file_sha256


@dataclass(frozen=True)
class Row:
    """One line of the table: what is compared, as recorded and as rebuilt, and whether they are the same."""

    what: str
    recorded: str
    rebuilt: str
    same: bool


@dataclass(frozen=True)
class Loaded:
    """A model as MLflow loads it: its file's SHA-256, its w, and f(x)."""

    sha256: str
    w: float
    fx: float


def load(model_uri: str, store: str, folder: Path, x: float) -> Loaded:
    """The model at `model_uri` in `store`, brought into `folder`, loaded through MLflow: its file's hash, w, f(x)."""
    # The process's store, for MLflow's calls below: models:/ and runs:/ are resolved in it (a client's own URI
    # is not used there, and MLflow's default would make a stray ./mlflow.db).
    mlflow.set_tracking_uri(store)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder)))
    model = mlflow.pyfunc.load_model(str(local))
    artifact = Model.load(str(local)).flavors["python_function"]["artifacts"]["trained_model"]["path"]
    return Loaded(file_sha256(local / artifact), float(model.unwrap_python_model().w), float(model.predict([x])[0]))


def metric_histories(client: MlflowClient, run: Run, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Every logged (step, value) of each metric of the run."""
    return {
        key: sorted((each.step, each.value) for each in client.get_metric_history(run.info.run_id, key)) for key in keys
    }


def output_rows(lock: dict, path: Path) -> list[Row]:
    """Each output in the commit's dvc.lock, its md5 there and the rebuilt file's."""
    rows = []
    for stage in lock["stages"].values():
        for out in stage.get("outs", ()):
            rebuilt = path / out["path"]
            md5 = _md5(rebuilt) if rebuilt.is_file() else "missing"
            rows.append(Row(out["path"], out["md5"][:12], md5[:12], md5 == out["md5"]))
    return rows


def model_rows(recorded: Loaded, rebuilt: Loaded, x: float) -> list[Row]:
    """The registered model against the rebuilt one: the bytes of its file, its w, its answer at x."""
    return [
        Row("model file sha256", recorded.sha256[:12], rebuilt.sha256[:12], recorded.sha256 == rebuilt.sha256),
        Row("model w", repr(recorded.w), repr(rebuilt.w), _equal(recorded.w, rebuilt.w)),
        Row(f"model f({x:g})", repr(recorded.fx), repr(rebuilt.fx), _equal(recorded.fx, rebuilt.fx)),
    ]


def metric_rows(recorded: dict[str, list], rebuilt: dict[str, list]) -> list[Row]:
    """One row for the metrics that are the same at every step, one for each that is not (its first difference)."""
    same = [key for key, points in recorded.items() if _same_points(points, rebuilt.get(key, []))]
    count = sum(len(recorded[key]) for key in same)
    rows = (
        [Row(f"metrics ({len(same)} of {len(recorded)})", f"{count} values", f"{count} values", True)] if same else []
    )
    for key, points in recorded.items():
        if key not in same:
            rows.append(_first_difference(key, points, rebuilt.get(key, [])))
    return rows


def _first_difference(key: str, points: list[tuple[int, float]], other: list[tuple[int, float]]) -> Row:
    for (step, value), (other_step, other_value) in zip(points, other, strict=False):
        if step != other_step or not _equal(value, other_value):
            shown = repr(other_value) if step == other_step else f"{other_value!r} (step {other_step})"
            return Row(f"metric {key}, step {step}", repr(value), shown, False)
    return Row(f"metric {key}", f"{len(points)} steps", f"{len(other)} steps", False)


def _same_points(points: list[tuple[int, float]], other: list[tuple[int, float]]) -> bool:
    return len(points) == len(other) and all(
        step == other_step and _equal(value, other_value)
        for (step, value), (other_step, other_value) in zip(points, other, strict=True)
    )


def _equal(a: float, b: float) -> bool:
    """Equal to the bit, as a float can be: NaN equals NaN (a diverged loss)."""
    return a == b or (math.isnan(a) and math.isnan(b))


def table(rows: list[Row]) -> str:
    """The rows under a header, within 80 columns for the usual names and numbers."""
    width = max(len(row.what) for row in rows)
    lines = [f"{'':<{width}}  {'recorded':<22} {'rebuilt':<22}"]
    lines += [f"{r.what:<{width}}  {r.recorded:<22} {r.rebuilt:<22} {'same' if r.same else 'DIFFERS'}" for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _md5(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()
