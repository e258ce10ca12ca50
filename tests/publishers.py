"""Many publishers at the same moment, for the price of one start: this child imports the track stage
once (MLflow: 2 to 3 s of CPU each time), then forks one process per workspace, each of which runs the
stage as `python stages/track.py` does. support.publish_forked starts it.

    python tests/publishers.py OUTPUTS WORKSPACE...   # OUTPUTS/<n>.out and <n>.err; prints the exit codes

Tests of what many publishers make together use it; what one publisher prints on stderr, start-up
included, is tested on a child of its own (support.run_track, start_track).
"""

import gc
import json
import os
import sys
import threading
from pathlib import Path

from gdpipe.core.command import run_command
from gdpipe.track import settings
from support import TRACK_ARGS, stage

track = stage("track")


def main(outputs: Path, folders: list[str]) -> list[int]:
    settings.apply()
    import gdpipe.track.publish  # noqa: F401  what main imports late, imported before the fork

    # A lock that another thread held at the fork would stay held forever in the child.
    assert threading.active_count() == 1, threading.enumerate()
    gc.freeze()  # the children's collections then leave the shared pages of these imports alone
    children = {}
    for index, folder in enumerate(folders):
        pid = os.fork()
        if pid == 0:
            os.chdir(folder)
            for fd, suffix in ((1, "out"), (2, "err")):
                os.dup2(os.open(outputs / f"{index}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = [track.__file__, *TRACK_ARGS]
            run_command(track.main)  # exits
        children[pid] = index
    codes = {}
    while children:
        pid, status = os.wait()
        codes[children.pop(pid)] = os.waitstatus_to_exitcode(status)
    return [codes[index] for index in range(len(folders))]


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2:])))
