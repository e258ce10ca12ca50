"""A test hook, installed as sitecustomize in a child (support.sitecustomize): with GDPIPE_TEST_TRAINING_STARTED
set, it touches that file when training starts, so a signal can be sent while the process is certainly
inside training."""

import os
from pathlib import Path

if os.environ.get("GDPIPE_TEST_TRAINING_STARTED"):
    import gdpipe.train

    _train = gdpipe.train.train

    def _announcing_train(*args, **kwargs):
        Path(os.environ["GDPIPE_TEST_TRAINING_STARTED"]).touch()
        return _train(*args, **kwargs)

    gdpipe.train.train = _announcing_train
