"""venv.refuse_experiments_dvc_cannot_run for DVC's arguments, as the venv's start runs it in FOLDER: it exits
2 with one line, or the program prints "went on".

    python tests/programs/refuse_experiments.py FOLDER DVC_ARG...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from gdpipe import venv  # this checkout's, found on the path set above

venv.refuse_experiments_dvc_cannot_run(sys.argv[2:], sys.argv[1])
print("went on")
