"""A command whose finalizer receives SIGINT or SIGTERM, where Python prints and drops the exception:
run_main must stop it all the same.

    python tests/programs/dropped_signal.py SIGINT|SIGTERM "then sleeps"|"then returns"
"""

import signal
import sys
import time
import weakref

from gdpipe.core.command import run_main


class Thing:
    pass


def main(argv):
    def finalizer():
        signal.raise_signal(signal.SIGINT if argv[0] == "SIGINT" else signal.SIGTERM)
        sum(range(1000))  # the handler runs here, inside the finalizer, where Python drops exceptions

    thing = Thing()
    weakref.finalize(thing, finalizer)
    del thing
    if argv[1] == "then sleeps":
        time.sleep(10)
        print("went on as if never interrupted")


sys.exit(run_main(main, sys.argv[1:], exiting=True))
