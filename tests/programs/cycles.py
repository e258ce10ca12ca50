"""A command that makes 300,000 reference cycles of about 1 KB, then prints its resident memory in bytes."""

from pathlib import Path

from gdpipe.core.command import run_command


class Node:
    def __init__(self):
        self.me, self.payload = self, bytearray(1000)  # a reference cycle of about 1 KB


def main(argv):
    for _ in range(300_000):  # 300 MB if no cycle were ever freed
        Node()
    # The current size (ru_maxrss would carry over the forking parent's peak).
    status = Path("/proc/self/status").read_text().splitlines()
    print(next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")))


run_command(main)
