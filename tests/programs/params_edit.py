"""A test hook, installed as sitecustomize (stage commands run with PYTHONPATH=src), in the numpy training only.
GDPIPE_TEST_PAUSE=<folder>: once training has started, touch <folder>/started and wait for <folder>/resume, so
the test edits params.yaml while the stage certainly runs. GDPIPE_TEST_EDIT_AT_EXIT=<old>|<new>: replace that text
of params.yaml as the process exits, after the stage's last check and before DVC reads the file for dvc.lock."""

import atexit
import os
import sys
import time
from pathlib import Path

if sys.argv[0].endswith("train.py") and "numpy" in sys.argv:
    if os.environ.get("GDPIPE_TEST_PAUSE"):
        import gdpipe.train

        _train = gdpipe.train.train

        def _paused_train(*args, **kwargs):
            folder = Path(os.environ["GDPIPE_TEST_PAUSE"])
            (folder / "started").touch()
            while not (folder / "resume").exists():
                time.sleep(0.02)
            return _train(*args, **kwargs)

        gdpipe.train.train = _paused_train
    if os.environ.get("GDPIPE_TEST_EDIT_AT_EXIT"):

        def _edit():
            path = Path("params.yaml")
            path.write_text(path.read_text().replace(*os.environ["GDPIPE_TEST_EDIT_AT_EXIT"].split("|")))

        atexit.register(_edit)
