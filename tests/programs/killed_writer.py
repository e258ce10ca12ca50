"""A writer that prints "writing" half-way through an atomic write of the file named, then sleeps: to be killed.

python tests/programs/killed_writer.py FILE
"""

import sys
import time

from gdpipe.core.files import atomic_write

with atomic_write(sys.argv[1]) as handle:
    handle.write("new, half of it")
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
