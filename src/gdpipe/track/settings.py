"""MLflow's settings in a gdpipe process: no telemetry, no progress bars on stderr, a tracking server that
does not answer fails within seconds instead of after minutes of retries, and MLflow and its migrations log
only warnings, not every table they create, so stderr keeps what matters. A user's own settings win.

Every program that imports mlflow calls `apply()` first (stages/track.py, `python -m gdpipe.track.registry`,
the tests' conftest.py, bench/run.py): MLflow reads some of them as it is imported.
"""

import logging
import os

DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "4",
}


def apply() -> None:
    """Give MLflow gdpipe's settings; call it before this process imports mlflow (calling it again changes nothing)."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Not a default but a rule: MLflow's "View run at <URL>" lines would print a password in the URI.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # MLflow logs a failing sqlite statement with its traceback, then raises: gdpipe says it in one line. By
    # the name of MLflow's module, which is internal: no public setting silences this one message, and
    # MLFLOW_LOGGING_LEVEL would silence every warning of MLflow's with it.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
