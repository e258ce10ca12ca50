"""The generate stage (stages/generate.py) run with the arguments given, then the process's peak resident
memory in bytes.

    python tests/programs/generate_peak.py --params PARAMS --out DATASET
"""

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "stages"))
import generate  # the stage script, found on the path set above

generate.main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
