"""track: publish finished results to MLflow. The only part of gdpipe that imports mlflow.

    record.py        what one variant's run holds, gathered from the stage outputs (no MLflow)
    publish.py       the store, one run per variant and result, its metrics, artifacts, model and status
    registry.py      model versions, the challenger and champion aliases; `promote` and `serve`
    store.py         how the store's writers take turns, its failures in words, a half-built sqlite store
    where.py         where the store is, its name without secrets, whether it holds the current result (no MLflow)
    pyfunc_model.py  the trained line as an MLflow pyfunc model (logged as code, so MLflow imports it too)
    environment.py   the software a run was made with, as its tags gdpipe.env.* (no MLflow)
    reproduce.py     make reproduce: a registered version rebuilt from its lineage, from nothing, and compared

Importing this package first gives MLflow the settings it reads, before mlflow itself is imported:
no telemetry, no progress bars on stderr, and a tracking server that does not answer fails within
seconds instead of after minutes of retries (a user's own settings win); and MLflow and its
migrations log only warnings, not every table they create, so stderr keeps what matters.
"""

import logging
import os

for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "4",
}.items():
    os.environ.setdefault(_key, _value)

# Not a default but a rule: MLflow's "View run at <URL>" lines would print a password in the URI.
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
logging.getLogger("alembic").setLevel(logging.WARNING)
# MLflow logs a failing sqlite statement with its traceback, then raises: gdpipe says it in one line.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
