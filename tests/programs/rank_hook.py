"""A test hook, installed as sitecustomize in the processes torchrun starts (support.sitecustomize; each
has RANK): rank r writes <GDPIPE_TEST_RANKS>/started-r (its pid) when its training starts, and rank-r.json
as it exits: its pid, its resident memory just before it opened the data set, and its peak (VmHWM), in bytes."""

import atexit
import json
import os
from pathlib import Path

if os.environ.get("GDPIPE_TEST_RANKS") and "RANK" in os.environ:
    import gdpipe.train.loop
    from gdpipe.core.artifacts import Dataset

    folder, rank = Path(os.environ["GDPIPE_TEST_RANKS"]), os.environ["RANK"]
    facts = {"pid": os.getpid()}

    def _status(name):
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(name))
        return int(line.split()[1]) * 1024

    _open, _fit = Dataset.open, gdpipe.train.loop.fit

    def _measured_open(*args, **kwargs):
        facts["rss_before_data"] = _status("VmRSS:")
        return _open(*args, **kwargs)

    def _announcing_fit(*args, **kwargs):
        (folder / f"started-{rank}").write_text(str(os.getpid()))
        return _fit(*args, **kwargs)

    Dataset.open = _measured_open
    gdpipe.train.loop.fit = _announcing_fit
    atexit.register(lambda: (folder / f"rank-{rank}.json").write_text(json.dumps(facts | {"peak": _status("VmHWM:")})))
