"""A second process that holds a sqlite file, as `make ui` reading a big run does: it runs the statements,
says "held", and keeps its transaction open until its stdin is closed.

    python tests/programs/hold_store.py DB "STATEMENT; STATEMENT"
"""

import sqlite3
import sys

connection = sqlite3.connect(sys.argv[1], isolation_level=None)
for statement in sys.argv[2].split(";"):
    connection.execute(statement).fetchall()
print("held", flush=True)
sys.stdin.read()
