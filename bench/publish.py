"""publish: the track stage's metric logging, 10,000 epochs x 2 variants / a bare MlflowClient.log_batch of
the same values, into fresh runs of one sqlite store. team.py measures the same against make server."""

from __future__ import annotations

import os
import time
from pathlib import Path

from common import Row, say, summarize, write_params
from support import MAKE_ENV

GOALS = {"publish 10k epochs x 2": ("<=", 1.2)}


def run(quick: bool, work: Path) -> dict:
    """The sqlite store."""
    epochs, repeats = (2_000, 2) if quick else (10_000, 3)
    os.environ.update(MAKE_ENV)  # both sides run with the settings `make` exports
    trained = records(epochs, work)
    say(f"publish: {epochs} epochs x {len(trained)} variants, {repeats} repeats")
    (work / "publish").mkdir()
    return ratios(
        f"sqlite:///{work / 'publish' / 'mlflow.db'}", work / "publish" / "artifacts", trained, epochs, repeats
    )


def by_hand(history, epochs: int) -> list:
    """What a user would send by hand: the same values and steps as plain Metric objects, one timestamp."""
    from mlflow.entities import Metric

    metrics = []
    for epoch, w, loss in zip(history.epoch.tolist(), history.w.tolist(), history.loss.tolist(), strict=True):
        metrics += [Metric("w", w, 1, epoch), Metric("loss", loss, 1, epoch)]
    return [*metrics, Metric("prediction", 10.0, 2, epochs)]


def records(epochs: int, work: Path) -> list:
    """One RunRecord per variant with `epochs` trained epochs (no files: only metrics are logged)."""
    from gdpipe.core import config
    from gdpipe.data import generate
    from gdpipe.track.record import RunRecord, spread
    from gdpipe.train import train

    params = config.load(write_params(work / f"publish-params-{epochs}.yaml", **{"train.epochs": epochs}))
    dataset = generate(params.data)
    trained = []
    for variant in config.VARIANTS:
        history = train(variant, dataset, params.train)
        trained.append(
            RunRecord(
                variant=variant,
                name=variant,
                fingerprint="",
                params={},
                tags={},
                history=history,
                metric_rows=spread(history.epoch.size, epochs),  # every epoch
                final_metrics={"prediction": 10.0},
                model_path=Path(),
                has_model=False,
                started_ms=1,
                finished_ms=2,
                dataset_path=Path(),
                dataset_sha256="",
                artifacts=(),
            )
        )
    return trained


def ratios(uri: str, artifacts: Path | None, trained: list, epochs: int, repeats: int) -> dict:
    """gdpipe's metric logging vs a bare log_batch of the same Metric values, fresh runs of one store."""
    from mlflow import MlflowClient

    from gdpipe.track.publish import log_metrics

    client = MlflowClient(uri)
    experiment = client.create_experiment(
        f"bench-{time.time_ns()}", artifact_location=artifacts.as_uri() if artifacts else None
    )
    bare_metrics = {record.variant: by_hand(record.history, epochs) for record in trained}
    measured = []
    for repeat in range(repeats):
        spent = {"gdpipe": 0.0, "bare": 0.0}
        # Alternate which goes first: the store grows as it goes.
        for side in ("gdpipe", "bare") if repeat % 2 == 0 else ("bare", "gdpipe"):
            for record in trained:
                run_id = client.create_run(experiment).info.run_id
                start = time.perf_counter()
                if side == "gdpipe":
                    log_metrics(client, run_id, record)
                else:
                    client.log_batch(run_id, metrics=bare_metrics[record.variant])
                spent[side] += time.perf_counter() - start
        measured.append(spent["gdpipe"] / spent["bare"])
    return summarize(measured) | {"epochs": epochs, "metrics_per_variant": len(bare_metrics["numpy"])}


def rows(result: dict) -> list[Row]:
    """One row."""
    label = f"publish {result['epochs'] // 1000}k epochs x 2"
    return [(label, result, GOALS.get(label))]
