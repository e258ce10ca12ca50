"""Run a script as `python SCRIPT ARGS...` would, and write the names of every module it imported, separated
by spaces, to the file MODULES_REPORT names, as the process exits.

    MODULES_REPORT=modules.txt python tests/programs/modules_report.py SCRIPT ARGS...
"""

import atexit
import os
import runpy
import sys
from pathlib import Path

atexit.register(lambda: Path(os.environ["MODULES_REPORT"]).write_text(" ".join(sys.modules)))
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path[0] = str(Path(script).resolve().parent)  # as `python SCRIPT` has it, not this folder
runpy.run_path(script, run_name="__main__")
