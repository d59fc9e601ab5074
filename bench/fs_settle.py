"""Wait until creating a file on the benchmark's filesystem costs what it normally does.

This machine's root filesystem is ext4 without a journal. Its inode allocator then skips
inodes freed in the last one to six minutes (``recently_deleted()``), one inode-table
lookup each. Right after thousands of files were deleted (the end of an earlier sitting,
a test run), creating a file took ~0.5-1.2 ms instead of ~50 us, for either server. The
state wears off within about six minutes. many-small figures taken during it measure the
filesystem, and when it ends halfway through a sitting it bills whichever server ran
first (seen: the baseline 545 then 1715 uploads/s in one sitting).

The state belongs to a block group, and a new directory may land in a fresh group or
in one full of recently freed inodes. So the benchmarks give both servers one directory
for their upload files (tusd-py's ``uploads`` is a symlink to it), and before a sitting
the cost of a create is probed in that very directory (files named ``fs-probe-*``, kept
until the sitting's data is removed: deleting them would renew the state) and, while it
is above ``threshold_us``, probed again every ``interval`` seconds, for up to
``max_wait``.

Usage: python -m bench.fs_settle DIR   (what bench/compare_shared.sh runs)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

#: Mean microseconds per create below which the filesystem counts as settled.
THRESHOLD_US = 150.0


def create_cost_us(directory: Path, count: int = 200) -> float:
    """Mean microseconds to create (and close) one new empty file in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = f"fs-probe-{time.time_ns()}-"
    t0 = time.perf_counter()
    for n in range(count):
        os.close(os.open(directory / f"{prefix}{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return (time.perf_counter() - t0) / count * 1e6


def settle(directory: Path, threshold_us: float = THRESHOLD_US, max_wait: float = 420.0,
           interval: float = 15.0) -> float:
    """Probe until a create costs less than ``threshold_us`` (or ``max_wait`` passed);
    returns the last cost measured."""
    deadline = time.monotonic() + max_wait
    while True:
        cost = create_cost_us(directory)
        if cost < threshold_us:
            return cost
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"# file creation still slow ({cost:.0f} us per file) after {max_wait:.0f}s;"
                  " many-small figures will be depressed", file=sys.stderr)
            return cost
        print(f"# file creation slow ({cost:.0f} us per file, recently deleted inodes);"
              f" waiting {interval:.0f}s (up to {left:.0f}s more)", file=sys.stderr)
        time.sleep(min(interval, left))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fs_settle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="the directory the servers will create files in")
    parser.add_argument("--max-wait", type=float, default=420.0)
    args = parser.parse_args()
    cost = settle(args.dir, max_wait=args.max_wait)
    print(f"# file creation: {cost:.0f} us per file", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
