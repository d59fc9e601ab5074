"""Run the shared yardstick's load generator with a fuller server probe.

``python -m bench.tusbench_probe PATH/tusbench.py [tusbench args...]`` loads the shared
``tusbench.py`` from where it lies (it is not copied into the project), replaces its
``ProcProbe`` with one that reads the whole process tree (a pre-forked daemon's workers
too) and reports user and system CPU apart, and runs its ``main``. The load, the
scenarios and every other figure are tusbench's own; its JSON lines gain
``server_cpu_user_s``, ``server_cpu_sys_s``, ``server_rss_peak_process_mb`` and
``server_minflt`` (minor page faults of the server during the run).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .loadgen import ProcessProbe


def load_tusbench(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("tusbench", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TreeProbe:
    """tusbench's ``ProcProbe`` interface over ``bench.loadgen.ProcessProbe``."""

    def __init__(self, pid: int | None) -> None:
        self.probe = ProcessProbe(pid)

    async def start(self) -> None:
        await self.probe.start()

    async def stop(self) -> dict[str, Any]:
        if not self.probe.pid:
            return {}
        got = await self.probe.stop()
        return {"server_rss_start_mb": got["rss_start_mb"], "server_rss_peak_mb": got["rss_peak_mb"],
                "server_rss_peak_process_mb": got["rss_peak_process_mb"],
                "server_cpu_s": got["cpu_s"], "server_cpu_user_s": got["cpu_user_s"],
                "server_cpu_sys_s": got["cpu_sys_s"], "server_minflt": got["minflt"],
                "server_alive": got["server_alive"]}


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit("usage: python -m bench.tusbench_probe PATH/tusbench.py [args...]")
    tusbench = load_tusbench(Path(argv[0]))
    tusbench.ProcProbe = TreeProbe
    tusbench.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
