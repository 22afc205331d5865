"""What the benchmarks read about a process from /proc: RSS and CPU time."""

from __future__ import annotations

import os
from pathlib import Path


def rss_kib(pid: int) -> int:
    """Resident set size (``VmRSS``) of ``pid`` in KiB; 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


class PeakRss:
    """Samples a process's RSS every 50 ms while a flood runs (``run`` until cancelled)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kib = rss_kib(pid)

    async def run(self) -> None:
        import anyio

        while True:
            self.kib = max(self.kib, rss_kib(self.pid))
            await anyio.sleep(0.05)
